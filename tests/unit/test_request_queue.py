from __future__ import annotations

from service.engine.request_queue import FCFSQueue, PriorityQueue
from tests.factories import make_request


def test_fcfs_push_front_and_remove():
    q = FCFSQueue()
    a, b, c = make_request(), make_request(), make_request()
    q.push(a)
    q.push(b)
    q.push_front(c)
    assert [r.request_id for r in q] == [c.request_id, a.request_id, b.request_id]
    assert q.remove(a)
    assert not q.remove(a)
    assert q.pop() is c
    assert len(q) == 1


def test_priority_queue_orders_by_aged_key_and_removes():
    q = PriorityQueue(aging_s=10.0)
    urgent_late = make_request(priority=0, arrival=100.0)
    lazy_early = make_request(priority=1, arrival=0.0)  # waited 100 s = 10 levels: goes first
    mid = make_request(priority=0, arrival=50.0)
    for r in (urgent_late, lazy_early, mid):
        q.push(r)
    assert q.peek() is lazy_early
    assert q.remove(mid)
    assert [q.pop(), q.pop()] == [lazy_early, urgent_late]
    assert len(q) == 0
