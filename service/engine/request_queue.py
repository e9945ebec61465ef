"""The waiting queue, under two policies.

FCFS: arrival order; a preempted request goes back to the head.
Priority: lower `priority` runs first, with linear aging so that nothing starves. A request that has waited
`aging_s` seconds gains one priority level. Because every waiting request ages at the same rate, the order
between two of them never changes while they wait, so the effective key is static:

    key = priority + arrival_time / aging_s      (smaller runs first)
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from service.engine.request import Request


class RequestQueue(Protocol):
    def push(self, request: Request) -> None: ...
    def push_front(self, request: Request) -> None: ...
    def peek(self) -> Request: ...
    def pop(self) -> Request: ...
    def remove(self, request: Request) -> bool: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Request]: ...


class FCFSQueue:
    def __init__(self) -> None:
        self._q: deque[Request] = deque()

    def push(self, request: Request) -> None:
        self._q.append(request)

    def push_front(self, request: Request) -> None:
        self._q.appendleft(request)

    def peek(self) -> Request:
        return self._q[0]

    def pop(self) -> Request:
        return self._q.popleft()

    def remove(self, request: Request) -> bool:
        try:
            self._q.remove(request)
        except ValueError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._q)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._q)


class PriorityQueue:
    def __init__(self, aging_s: float) -> None:
        if aging_s <= 0:
            raise ValueError(f"aging_s={aging_s} must be positive")
        self.aging_s = aging_s
        self._heap: list[tuple[float, int, Request]] = []
        self._tiebreak = itertools.count()

    def key(self, request: Request) -> float:
        return request.priority + request.arrival_time / self.aging_s

    def push(self, request: Request) -> None:
        heapq.heappush(self._heap, (self.key(request), next(self._tiebreak), request))

    # A preempted request keeps its original key, which already puts it ahead of later arrivals.
    push_front = push

    def peek(self) -> Request:
        return self._heap[0][2]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[2]

    def remove(self, request: Request) -> bool:
        for i, entry in enumerate(self._heap):
            if entry[2] is request:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return True
        return False

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (e[2] for e in sorted(self._heap))


def make_queue(policy: str, aging_s: float) -> RequestQueue:
    if policy == "fcfs":
        return FCFSQueue()
    if policy == "priority":
        return PriorityQueue(aging_s)
    raise ValueError(f"unknown scheduling policy {policy!r}; expected 'fcfs' or 'priority'")
