"""The engine's asyncio side with a fake runner: futures, streams, threads, failures, aborts, deadlines."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.engine.async_engine import AsyncEngine, RequestHandle
from service.engine.sampling_params import SamplingParams
from service.errors import EngineDeadError, EngineStepError, RequestTimeoutError
from tests.factories import CharTokenizer, FakeRunner, engine_config


async def make_engine(runner: FakeRunner | None = None, **cfg) -> AsyncEngine:
    engine = AsyncEngine(engine_config(**cfg), runner or FakeRunner(), CharTokenizer())
    await engine.start()
    return engine


def params(n: int = 3, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, **kw)


async def streamed(handle: RequestHandle) -> tuple[list[str], str]:
    """A streamed request's delta texts, up to and including the final delta, and its finish reason."""
    assert handle.stream is not None
    texts: list[str] = []
    while True:
        delta = await handle.stream.get()
        texts.append(delta.text)
        if delta.finish_reason is not None:
            return texts, delta.finish_reason


async def test_requests_share_steps_and_every_future_resolves():
    runner = FakeRunner()
    engine = await make_engine(runner)
    handles = [engine.add_request([65 + i], params(3)) for i in range(5)]
    results = await asyncio.gather(*(h.result() for h in handles))
    for i, r in enumerate(results):
        assert r.token_ids == [66 + i, 67 + i, 68 + i]
        assert r.text == "".join(chr(t) for t in r.token_ids)
        assert r.finish_reason == "length"
    assert runner.calls == 3  # all five in each of the three steps
    assert runner.thread_names == {"model-step"}
    assert engine.num_live == 0
    await engine.stop()


async def test_stream_yields_deltas_then_a_final_one():
    engine = await make_engine()
    handle = engine.add_request([65], params(3), stream=True)
    texts, finish = await streamed(handle)
    assert "".join(texts) == "BCD" and finish == "length"
    assert (await handle.result()).text == "BCD"
    await engine.stop()


async def test_stop_string_ends_the_request_and_is_cut():
    engine = await make_engine()
    handle = engine.add_request([65], params(10, stop=("DE",)))
    result = await handle.result()
    assert (result.text, result.finish_reason, result.stop_reason) == ("BC", "stop", "DE")
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    await engine.stop()


async def test_included_stop_string_ends_the_request_and_is_kept_in_stream_and_result():
    engine = await make_engine()
    handle = engine.add_request([65], params(10, stop=("DE",), include_stop_str_in_output=True), stream=True)
    texts, finish = await streamed(handle)
    result = await handle.result()
    assert (result.text, result.finish_reason, result.stop_reason) == ("BCDE", "stop", "DE")
    assert finish == "stop"
    assert "".join(texts) == result.text
    assert result.token_ids == [66, 67, 68, 69]
    await engine.stop()


@pytest.mark.parametrize("include", [False, True])
@pytest.mark.parametrize(("stop", "min_tokens", "text", "stop_reason"), [
    ("B", 2, "BCDE", None),  # complete at the 1st token, before min_tokens: ordinary text
    ("BC", 2, "", "BC"),  # complete at the 2nd token: counts
    ("CD", 3, "B", "CD"),  # starts before min_tokens and ends at it: counts
])
async def test_min_tokens_holds_stop_strings_off_as_in_vllm(include, stop, min_tokens, text, stop_reason):
    engine = await make_engine()
    p = params(4, stop=(stop,), min_tokens=min_tokens, include_stop_str_in_output=include)
    for handle in (engine.add_request([65], p), engine.add_request([65], p, stream=True)):
        result = await handle.result()
        want = text + stop if include and stop_reason else text
        assert (result.text, result.stop_reason) == (want, stop_reason)
        if handle.stream is not None:
            assert "".join((await streamed(handle))[0]) == want
    await engine.stop()


@pytest.mark.parametrize(("kw", "eos", "stop_reason"), [
    ({"stop_token_ids": (68,)}, frozenset(), 68),  # a stop_token_ids entry
    ({}, frozenset({68}), None),  # the model's end-of-sequence token
])
async def test_stop_token_text_is_left_out_unless_asked_for(kw, eos, stop_reason):
    # As in vLLM: the stop token stays in token_ids (and logprobs) but not in the text, streamed or not.
    for include, text in ((False, "BC"), (True, "BCD")):
        engine = AsyncEngine(engine_config(), FakeRunner(), CharTokenizer(), eos)
        await engine.start()
        handle = engine.add_request([65], params(10, include_stop_str_in_output=include, **kw), stream=True)
        texts, finish = await streamed(handle)
        result = await handle.result()
        assert (result.text, result.finish_reason, result.stop_reason) == (text, "stop", stop_reason)
        assert finish == "stop"
        assert "".join(texts) == text
        assert result.token_ids == [66, 67, 68]
        await engine.stop()


async def test_step_exception_fails_that_step_and_the_engine_keeps_serving():
    runner = FakeRunner(fail_steps={0})
    engine = await make_engine(runner)
    doomed = engine.add_request([65], params(3))
    with pytest.raises(EngineStepError, match="injected failure"):
        await doomed.result()
    later = engine.add_request([70], params(2))
    assert (await later.result()).token_ids == [71, 72]
    assert engine.is_alive
    assert engine.stats.step_failures == 1
    await engine.stop()


async def test_stream_of_a_failed_step_ends_with_an_error_delta():
    engine = await make_engine(FakeRunner(fail_steps={0}))
    handle = engine.add_request([65], params(3), stream=True)
    assert handle.stream is not None
    delta = await handle.stream.get()
    assert isinstance(delta.error, EngineStepError)
    await engine.stop()


async def test_repeated_failures_mark_the_engine_dead_and_refuse_new_work():
    engine = await make_engine(FakeRunner(fail_steps={0, 1, 2}))
    for _ in range(3):
        with pytest.raises(EngineStepError):
            await engine.add_request([65], params(1)).result()
    assert not engine.is_alive
    with pytest.raises(EngineDeadError):
        engine.add_request([65], params(1))
    await engine.stop()


async def test_dead_executor_is_detected():
    engine = await make_engine(FakeRunner())
    engine._executor.shutdown(wait=True)
    with pytest.raises(EngineDeadError):
        await engine.add_request([65], params(1)).result()
    assert not engine.is_alive
    await engine.stop()


async def test_abort_of_a_waiting_request_means_it_is_never_scheduled():
    runner = FakeRunner(step_delay_s=0.05)
    engine = await make_engine(runner, max_num_seqs=1)
    first = engine.add_request([65], params(3))
    queued = engine.add_request([80], params(3))
    await asyncio.sleep(0.01)
    assert engine.abort(queued.request_id)
    result = await queued.result()
    assert result.finish_reason == "abort"
    await first.result()
    scheduled = {c.request_id for s in runner.seen for c in s.chunks}
    assert queued.request_id not in scheduled
    await engine.stop()


async def test_abort_of_a_running_request_frees_its_blocks():
    runner = FakeRunner(step_delay_s=0.02)
    engine = await make_engine(runner)
    h = engine.add_request([65] * 10, params(50))
    await asyncio.sleep(0.1)
    assert engine.block_manager.num_free_blocks < engine.block_manager.num_blocks
    engine.abort(h.request_id)
    assert (await h.result()).finish_reason == "abort"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert engine.scheduler.num_running == 0
    await engine.stop()


async def test_deadline_aborts_with_timeout_error():
    engine = await make_engine(FakeRunner(step_delay_s=0.02))
    h = engine.add_request([65], params(400), timeout_s=0.1)
    with pytest.raises(RequestTimeoutError):
        await h.result()
    assert engine.scheduler.num_running == 0
    await engine.stop()


async def test_each_deadline_fires_in_turn_and_none_early():
    engine = await make_engine(FakeRunner(step_delay_s=0.01))
    later = engine.add_request([65], params(400), timeout_s=0.4)
    sooner = engine.add_request([66], params(400), timeout_s=0.1)
    none = engine.add_request([67], params(400))
    t0 = time.monotonic()
    with pytest.raises(RequestTimeoutError):
        await sooner.result()
    assert not later.future.done() and not none.future.done()
    with pytest.raises(RequestTimeoutError):
        await later.result()
    assert 0.35 <= time.monotonic() - t0 < 2.0
    assert not none.future.done()
    engine.abort(none.request_id)
    await engine.stop()


async def test_batch_wait_timeout_gathers_a_batch_when_idle():
    runner = FakeRunner()
    engine = await make_engine(runner, batch_wait_timeout_s=0.3, batch_wait_min_requests=3)
    handles = []
    for i in range(3):
        handles.append(engine.add_request([65 + i], params(1)))
        await asyncio.sleep(0.02)
    await asyncio.gather(*(h.result() for h in handles))
    assert len(runner.seen[0].chunks) == 3  # one step served all three
    await engine.stop()


async def test_idle_engine_sleeps_on_an_event_not_a_poll():
    runner = FakeRunner()
    engine = await make_engine(runner)
    await asyncio.sleep(0.2)
    assert runner.calls == 0
    await engine.add_request([65], params(1)).result()
    assert runner.calls == 1
    await engine.stop()


async def test_stop_resolves_every_live_future():
    engine = await make_engine(FakeRunner(step_delay_s=0.05))
    handles = [engine.add_request([65], params(100)) for _ in range(3)]
    await asyncio.sleep(0.06)
    await engine.stop()
    for h in handles:
        assert h.future.done()


async def test_aging_keeps_a_low_priority_request_from_starving():
    """A steady stream of urgent requests must not hold a low-priority one back forever."""
    runner = FakeRunner(step_delay_s=0.01)
    engine = await make_engine(runner, max_num_seqs=1, policy="priority", priority_aging_s=0.1)
    low = engine.add_request([65], params(1), priority=10)
    stop = asyncio.Event()

    async def urgent_stream() -> int:
        sent = 0
        while not stop.is_set():
            await engine.add_request([66], params(1), priority=0).result()
            sent += 1
        return sent

    feeders = [asyncio.ensure_future(urgent_stream()) for _ in range(3)]
    result = await asyncio.wait_for(low.result(), timeout=5.0)
    stop.set()
    urgent_served = sum(await asyncio.gather(*feeders))
    assert result.finish_reason == "length"
    assert urgent_served >= 3  # urgent work ran first, and the old request still got its turn
    await engine.stop()


async def test_without_aging_priority_holds_while_urgent_work_waits():
    runner = FakeRunner(step_delay_s=0.01)
    engine = await make_engine(runner, max_num_seqs=1, policy="priority", priority_aging_s=1e6)
    low = engine.add_request([65], params(1), priority=10)
    urgent = [engine.add_request([66], params(1), priority=0) for _ in range(3)]
    await asyncio.gather(*(h.result() for h in urgent), low.result())
    order = [s.chunks[0].request_id for s in runner.seen]
    assert order[-1] == low.request_id  # served last: priority respected
    await engine.stop()
