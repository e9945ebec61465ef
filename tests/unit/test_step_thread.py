import asyncio
import threading

import pytest

from service.engine.step_thread import StepThread


async def test_runs_on_its_own_thread_and_resolves_the_future() -> None:
    worker = StepThread("step-test")
    try:
        name = await worker.submit(lambda x: (threading.current_thread().name, x * 2), 21)
        assert name == ("step-test", 42)
    finally:
        worker.shutdown(wait=True)


async def test_an_exception_reaches_the_awaiting_future() -> None:
    def boom(_: object) -> None:
        raise ValueError("bad step")

    worker = StepThread()
    try:
        with pytest.raises(ValueError, match="bad step"):
            await worker.submit(boom, None)
        assert await worker.submit(lambda x: x + 1, 1) == 2  # the thread survives a failed step
    finally:
        worker.shutdown(wait=True)


async def test_a_future_cancelled_while_its_step_runs_stays_cancelled() -> None:
    release = threading.Event()
    worker = StepThread()
    try:
        fut = worker.submit(lambda _: release.wait(5), None)
        fut.cancel()
        release.set()
        assert await worker.submit(lambda x: x, "next") == "next"  # the late result was dropped quietly
        assert fut.cancelled()
    finally:
        worker.shutdown(wait=True)


async def test_steps_run_in_order_and_shutdown_finishes_what_was_handed_over() -> None:
    order: list[int] = []
    worker = StepThread()
    futures = [worker.submit(order.append, i) for i in range(5)]
    worker.shutdown(wait=True)
    assert order == [0, 1, 2, 3, 4]
    await asyncio.gather(*futures)
    with pytest.raises(RuntimeError):
        worker.submit(order.append, 5)
    assert not worker._thread.is_alive()
