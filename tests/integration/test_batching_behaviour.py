"""Per-request behaviour inside a shared batch, the loop staying free during long steps, and failures that
fail only the affected requests."""

from __future__ import annotations

import asyncio
import time

from service.api.context import CONTEXT
from service.engine.async_engine import AsyncEngine
from service.engine.tokenizer import Tokenizer
from tests.factories import FakeRunner, engine_config


async def complete(client, **body) -> dict:
    resp = await client.post("/v1/completions", json={"prompt": "def main():", **body})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_seeded_request_is_the_same_alone_and_in_a_busy_batch(make_client):
    client = await make_client()
    seeded = {"max_tokens": 24, "temperature": 1.0, "top_k": 50, "seed": 99}
    alone = (await complete(client, **seeded))["choices"][0]["text"]

    steps = []
    client.app[CONTEXT].engine.on_step.append(lambda s, o, dt: steps.append(len(s.chunks)))
    noise = [complete(client, prompt=f"x{i} = {i}", max_tokens=30, temperature=1.3, top_p=0.8) for i in range(6)]
    results = await asyncio.gather(*noise, complete(client, **seeded))
    assert results[-1]["choices"][0]["text"] == alone
    assert max(steps) >= 5  # it really shared steps with the noise


async def test_mixed_sampling_parameters_in_one_step_each_apply(make_client):
    client = await make_client()
    engine = client.app[CONTEXT].engine
    greedy_alone = (await complete(client, max_tokens=10, temperature=0))["choices"][0]
    forced = await client.post("/tokenize", json={"prompt": "Z", "add_special_tokens": False})
    z = (await forced.json())["tokens"][0]

    shared: list[set[str]] = []
    engine.on_step.append(lambda s, o, dt: shared.append({c.request_id for c in s.chunks}))
    greedy, biased, short, with_lp, stopped = await asyncio.gather(
        complete(client, max_tokens=10, temperature=0),
        complete(client, max_tokens=10, temperature=0, logit_bias={str(z): 100}),
        complete(client, max_tokens=3, temperature=1.0, seed=5),
        complete(client, max_tokens=10, temperature=0, logprobs=2),
        complete(client, max_tokens=10, temperature=0, stop=[greedy_alone["text"][3:5]]),
    )
    assert max(len(ids) for ids in shared) == 5, "the five requests never shared a step"
    assert greedy["choices"][0]["text"] == greedy_alone["text"]  # untouched by its batch mates' settings
    assert biased["choices"][0]["text"] == "Z" * 10  # its own logit_bias, nobody else's
    assert short["usage"]["completion_tokens"] == 3
    assert len(with_lp["choices"][0]["logprobs"]["tokens"]) == 10
    assert greedy["choices"][0]["logprobs"] is None
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["text"] == greedy_alone["text"][:3]


async def fake_engine(tiny_model_dir, runner: FakeRunner) -> tuple[AsyncEngine, Tokenizer]:
    tokenizer = Tokenizer(str(tiny_model_dir))
    runner.vocab_size = tokenizer.vocab_size
    return AsyncEngine(engine_config(), runner, tokenizer), tokenizer


async def test_health_answers_promptly_while_a_long_step_runs(make_client, tiny_model_dir):
    runner = FakeRunner(step_delay_s=0.5)
    engine, tokenizer = await fake_engine(tiny_model_dir, runner)
    client = await make_client(engine=engine, tokenizer=tokenizer)
    generation = asyncio.ensure_future(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4}))
    while engine.step_in_flight_since is None:
        await asyncio.sleep(0.01)
    latencies = []
    for _ in range(10):
        t0 = time.perf_counter()
        resp = await client.get("/health")
        latencies.append(time.perf_counter() - t0)
        assert resp.status == 200
        await asyncio.sleep(0.02)
    assert engine.step_in_flight_since is not None, "the step should still be running"
    assert max(latencies) < 0.1
    assert (await generation).status == 200


async def test_step_exception_fails_its_requests_and_later_ones_succeed(make_client, tiny_model_dir):
    runner = FakeRunner(fail_steps={0})
    engine, tokenizer = await fake_engine(tiny_model_dir, runner)
    client = await make_client(engine=engine, tokenizer=tokenizer)
    resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4})
    assert resp.status == 500
    err = (await resp.json())["error"]
    assert "injected failure" in err["message"]
    stream = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, "stream": True})
    assert stream.status == 200  # step 1 succeeds: the engine kept serving
    ok = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4})
    assert ok.status == 200
    assert (await ok.json())["usage"]["completion_tokens"] == 4
    assert (await client.get("/health")).status == 200


async def test_mid_stream_failure_sends_an_error_event_then_done(make_client, tiny_model_dir):
    runner = FakeRunner(fail_steps={2})
    engine, tokenizer = await fake_engine(tiny_model_dir, runner)
    client = await make_client(engine=engine, tokenizer=tokenizer)
    resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 10, "stream": True})
    frames = [line async for line in resp.content if line.strip()]
    assert frames[-1] == b"data: [DONE]\n"
    assert b'"error"' in frames[-2]
    assert b"injected failure" in frames[-2]


async def test_bfloat16_serves_whatever_the_cpu_supports(make_client):
    """bf16 must run everywhere: packed linear layers are skipped where oneDNN's bf16 path is unavailable."""
    client = await make_client(dtype="bfloat16")
    body = await complete(client, max_tokens=4, temperature=0, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 4
