"""The one thread that runs model steps, handed work by the event loop and answering with asyncio futures.

A ThreadPoolExecutor with `run_in_executor` does the same job with more machinery per call: a
concurrent.futures.Future with its condition variable, a wrapping asyncio future chained to it, and the pool's
thread accounting, all of it Python run under the GIL on one thread or the other. The engine hands over a step
hundreds of times a second, so here a hand-over is one `SimpleQueue.put` on the loop thread and, when the step
is done, one `call_soon_threadsafe` from this thread that resolves the loop's future directly
(`benchmarks/thread_hop.py` measures both).

The thread is not a daemon, so a step in progress finishes before the interpreter exits. It leaves on
`shutdown()`, or by itself once the main thread has ended (the interpreter is exiting and nobody will call
`shutdown()`): it polls for that while idle.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_IDLE_POLL_S = 0.5  # how often an idle thread checks whether the interpreter is exiting
_STOP = object()


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled on the loop while the step ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class StepThread:
    def __init__(self, name: str = "model-step") -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=False)
        self._thread.start()

    def submit(self, fn: Callable[[Any], T], arg: Any) -> asyncio.Future[T]:
        """Run `fn(arg)` on the thread; the returned future (of the running loop) resolves with its result.

        Raises RuntimeError after shutdown, as an executor does."""
        if self._closed:
            raise RuntimeError("cannot submit a step after shutdown")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put((loop, future, fn, arg))
        return future

    def shutdown(self, wait: bool = False) -> None:
        """Refuse new work; the thread leaves once the steps already handed over are done."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
        if wait and self._thread is not threading.current_thread():
            self._thread.join()

    def _work(self) -> None:
        main = threading.main_thread()
        while True:
            try:
                item = self._queue.get(timeout=_IDLE_POLL_S)
            except queue.Empty:
                if not main.is_alive():
                    return
                continue
            if item is _STOP:
                return
            loop, future, fn, arg = item
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(arg)
            except BaseException as exc:  # noqa: BLE001 -- every failure goes back to the awaiting future
                error = exc
            try:
                loop.call_soon_threadsafe(_resolve, future, result, error)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass
            del item, future, result, error  # drop references to the step's tensors while idle
