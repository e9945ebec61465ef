"""Backpressure, deadlines, disconnect = abort, limits, and load that leaves no residue."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import aiohttp
import pytest

from service.api.context import CONTEXT
from service.engine.async_engine import AsyncEngine
from service.engine.tokenizer import Tokenizer
from tests.factories import FakeRunner, engine_config


async def fake_client(make_client, tiny_model_dir, runner: FakeRunner, server=None, **cfg):
    tokenizer = Tokenizer(str(tiny_model_dir))
    runner.vocab_size = tokenizer.vocab_size
    engine = AsyncEngine(engine_config(**cfg), runner, tokenizer)
    return await make_client(engine=engine, tokenizer=tokenizer, server=server)


def assert_idle(engine) -> None:
    """Nothing left behind: no live request, empty queues, every KV block free."""
    assert engine.num_live == 0
    assert engine.scheduler.num_running == 0
    assert engine.scheduler.num_waiting == 0
    assert engine.scheduler.num_waiting_tokens == 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    engine.block_manager.check_invariants()


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_full_queue_answers_429_with_retry_after_and_leaves_no_residue(make_client, tiny_model_dir):
    client = await fake_client(make_client, tiny_model_dir, FakeRunner(step_delay_s=0.05),
                               max_num_seqs=1, max_queued_requests=2)
    engine = client.app[CONTEXT].engine
    bodies = [client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3}) for _ in range(8)]
    responses = await asyncio.gather(*bodies)
    statuses = sorted(r.status for r in responses)
    assert statuses.count(200) >= 2  # one running and two waiting fit; the rest arrive to a full queue
    assert 429 in statuses
    rejected = next(r for r in responses if r.status == 429)
    assert rejected.headers["Retry-After"].isdigit()
    assert (await rejected.json())["error"]["type"] == "overloaded"
    assert engine.stats.requests_rejected["overloaded"] == statuses.count(429)
    assert_idle(engine)


async def test_queued_token_budget_also_sheds_load(make_client, tiny_model_dir):
    client = await fake_client(make_client, tiny_model_dir, FakeRunner(step_delay_s=0.05),
                               max_num_seqs=1, max_queued_tokens=40)
    prompt = list(range(10, 40))  # 30 tokens: one may wait, a second would pass 40
    responses = await asyncio.gather(*(client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2})
                                       for _ in range(4)))
    assert 429 in [r.status for r in responses]
    assert_idle(client.app[CONTEXT].engine)


@pytest.mark.parametrize("body", [{"prompt": "x", "n": 4}, {"prompt": ["a", "b", "c", "d"]},
                                  {"prompt": ["a", "b"], "n": 2}])
async def test_a_request_with_more_choices_than_the_queue_limit_runs_on_an_idle_queue(make_client, tiny_model_dir,
                                                                                     body):
    """Its own prompts and choices never count as "already waiting": an idle server admits it, whatever its size;
    a busy one refuses it while the queue cannot take all of it."""
    client = await fake_client(make_client, tiny_model_dir, FakeRunner(step_delay_s=0.02),
                               max_num_seqs=1, max_queued_requests=3)
    engine = client.app[CONTEXT].engine
    resp = await client.post("/v1/completions", json={**body, "max_tokens": 2})
    assert resp.status == 200, await resp.text()
    assert len((await resp.json())["choices"]) == 4
    # Busy: one running and one waiting; 4 more would make 5 waiting, over the limit of 3.
    first = [asyncio.ensure_future(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 20}))
             for _ in range(2)]
    await wait_until(lambda: engine.scheduler.num_waiting == 1)
    refused = await client.post("/v1/completions", json={**body, "max_tokens": 2})
    assert refused.status == 429
    assert "this request adds 4" in (await refused.json())["error"]["message"]
    assert engine.scheduler.num_waiting == 1  # none of its choices was left queued
    assert [r.status for r in await asyncio.gather(*first)] == [200, 200]
    assert_idle(engine)


async def test_a_multi_prompt_request_over_the_token_budget_runs_on_an_idle_queue(make_client, tiny_model_dir):
    client = await fake_client(make_client, tiny_model_dir, FakeRunner(step_delay_s=0.02),
                               max_num_seqs=1, max_queued_tokens=40)
    prompt = list(range(10, 40))  # 30 tokens; two of them pass 40
    resp = await client.post("/v1/completions", json={"prompt": [prompt, prompt], "max_tokens": 2})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/v1/completions", json={"prompt": prompt, "n": 2, "max_tokens": 2})
    assert resp.status == 200, await resp.text()
    assert_idle(client.app[CONTEXT].engine)


async def test_deadline_gives_408_and_frees_the_request(make_client, tiny_model_dir):
    client = await fake_client(make_client, tiny_model_dir, FakeRunner(step_delay_s=0.02))
    resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 400, "request_timeout": 0.2})
    assert resp.status == 408
    assert (await resp.json())["error"]["type"] == "timeout"
    assert_idle(client.app[CONTEXT].engine)


async def test_deadline_while_streaming_sends_an_error_event_then_done(make_client, tiny_model_dir):
    client = await fake_client(make_client, tiny_model_dir, FakeRunner(step_delay_s=0.02))
    resp = await client.post("/v1/completions",
                             json={"prompt": "x", "max_tokens": 400, "request_timeout": 0.2, "stream": True})
    frames = [line async for line in resp.content if line.strip()]
    assert frames[-1] == b"data: [DONE]\n"
    assert b'"type":"timeout"' in frames[-2]


async def test_server_timeout_caps_the_per_request_one(make_client, tiny_model_dir):
    client = await fake_client(make_client, tiny_model_dir, FakeRunner(step_delay_s=0.02),
                               server={"request_timeout_s": 0.1, "max_request_timeout_s": 0.3})
    t0 = time.monotonic()
    resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 400, "request_timeout": 100})
    assert resp.status == 408
    assert time.monotonic() - t0 < 2.0


async def test_stream_disconnect_aborts_and_frees_blocks(make_client, tiny_model_dir):
    runner = FakeRunner(step_delay_s=0.01)
    client = await fake_client(make_client, tiny_model_dir, runner)
    engine = client.app[CONTEXT].engine
    resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 400, "stream": True})
    await resp.content.readline()
    resp.close()  # the client goes away mid-stream
    await wait_until(lambda: engine.num_live == 0)
    assert engine.stats.requests_finished.get("abort") == 1
    assert engine.stats.client_disconnects == 1
    steps_after = runner.calls
    await asyncio.sleep(0.1)
    assert runner.calls == steps_after  # generation stopped
    assert_idle(engine)


async def test_disconnect_while_queued_means_never_scheduled(make_client, tiny_model_dir):
    runner = FakeRunner(step_delay_s=0.05)
    client = await fake_client(make_client, tiny_model_dir, runner, max_num_seqs=1)
    engine = client.app[CONTEXT].engine
    url = client.make_url("/v1/completions")
    async with aiohttp.ClientSession() as session:
        busy = asyncio.ensure_future(session.post(url, json={"prompt": "x", "max_tokens": 20}))
        await wait_until(lambda: engine.scheduler.num_running == 1)
        queued = asyncio.ensure_future(session.post(url, json={"prompt": "y", "max_tokens": 6}))
        await wait_until(lambda: engine.scheduler.num_waiting == 1)
        queued_id = next(iter(r.request_id for r in engine.scheduler.waiting))
        queued.cancel()  # a non-streaming client hangs up while its request waits
        await wait_until(lambda: engine.scheduler.num_waiting == 0)
        assert engine.scheduler.num_running == 1  # the queue emptied by abort, not by scheduling
        assert (await busy).status == 200
    scheduled = {c.request_id for s in runner.seen for c in s.chunks}
    assert queued_id not in scheduled
    assert engine.stats.client_disconnects == 1
    assert_idle(engine)


async def test_cancellation_storm_leaves_the_server_serving(make_client):
    """200 streaming clients that hang up at random moments once their request is queued (some still waiting,
    some generating), then a fresh request that must complete promptly."""
    client = await make_client(max_num_seqs=16, dtype="float32")
    engine = client.app[CONTEXT].engine
    url = client.make_url("/v1/completions")
    rng = random.Random(0)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def impatient(i: int) -> None:
            # The response headers come once the request is in the engine's queue; the client then reads for a
            # moment and leaves, long before 450 tokens.
            async with session.post(url, json={"prompt": f"storm {i}", "max_tokens": 450, "ignore_eos": True,
                                               "stream": True}) as resp:
                assert resp.status == 200
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(rng.uniform(0.0, 0.3)):
                        async for _ in resp.content:
                            pass

        await asyncio.wait_for(asyncio.gather(*(impatient(i) for i in range(200))), timeout=60)
        await wait_until(lambda: engine.num_live == 0, timeout=10)
        t0 = time.monotonic()
        async with session.post(url, json={"prompt": "fresh", "max_tokens": 8}) as resp:
            assert resp.status == 200
            assert (await resp.json())["usage"]["completion_tokens"] > 0
        assert time.monotonic() - t0 < 3.0
    # Every storm request was aborted, and only those.
    assert engine.stats.requests_finished["abort"] == 200
    assert sum(engine.stats.requests_finished.values()) == 201
    assert_idle(engine)


async def test_oversized_body_is_413_before_parsing(make_client):
    client = await make_client(server={"max_body_bytes": 4096})
    resp = await client.post("/v1/completions", data=b'{"prompt": "' + b"a" * 10_000 + b'"}',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_huge_headers_are_refused_and_the_server_keeps_serving(make_client):
    client = await make_client()
    resp = await client.get("/health", headers={"X-Huge": "h" * 100_000})
    assert 400 <= resp.status < 500
    assert len(await resp.read()) < 1000
    assert (await client.get("/health")).status == 200


@pytest.mark.parametrize("n", [1, 3])
async def test_every_response_carries_a_server_request_id(make_client, n):
    client = await make_client()
    resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 1, "n": n},
                             headers={"X-Request-Id": "client-chosen"})
    assert resp.headers["X-Request-Id"].startswith("cmpl-")
    assert resp.headers["X-Request-Id"] != "client-chosen"
    bad = await client.post("/v1/completions", json={"max_tokens": 1})
    assert bad.headers["X-Request-Id"].startswith("req-")


async def test_dead_engine_turns_health_and_new_requests_into_503(make_client, tiny_model_dir):
    client = await fake_client(make_client, tiny_model_dir, FakeRunner())
    engine = client.app[CONTEXT].engine
    assert (await client.get("/health")).status == 200
    engine._executor.shutdown(wait=True)  # the model thread is gone
    first = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert first.status == 503  # the request in hand fails at once rather than hanging
    health = await client.get("/health")
    assert health.status == 503
    assert any("engine stopped" in p for p in (await health.json())["problems"])
    later = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
    assert later.status == 503
    assert (await later.json())["error"]["type"] == "service_unavailable"


async def test_repeated_step_failures_turn_health_503(make_client, tiny_model_dir):
    client = await fake_client(make_client, tiny_model_dir, FakeRunner(fail_steps={0, 1, 2}))
    for _ in range(3):
        assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})).status == 500
    assert (await client.get("/health")).status == 503
    assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})).status == 503
