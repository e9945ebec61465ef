"""A scrape after known traffic shows the right counts; every request gets one access-log line."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from service.api.context import CONTEXT
from service.errors import ShuttingDownError


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_count_known_traffic(make_client):
    client = await make_client(embeddings=True)
    engine = client.app[CONTEXT].engine
    for _ in range(3):
        resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4, "ignore_eos": True})
        assert resp.status == 200
    assert (await client.post("/v1/completions", json={"prompt": "x", "temperature": 9})).status == 400
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url("/v1/completions"),
                                  json={"prompt": "x", "max_tokens": 400, "ignore_eos": True, "stream": True})
        await resp.content.readline()
        resp.close()
    while engine.num_live:
        await asyncio.sleep(0.01)
    assert (await client.post("/v1/embeddings", json={"input": ["a", "b"]})).status == 200

    m = scrape(await (await client.get("/metrics")).text())
    assert m[("hfserve:request_success_total", (("finished_reason", "length"),))] == 3
    assert m[("hfserve:request_success_total", (("finished_reason", "abort"),))] == 1
    assert m[("hfserve:num_requests_rejected_total", (("reason", "invalid"),))] == 1
    assert m[("hfserve:num_client_disconnects_total", ())] == 1
    assert m[("hfserve:num_requests_running", ())] == 0
    assert m[("hfserve:num_requests_waiting", ())] == 0
    assert m[("hfserve:kv_cache_usage_perc", ())] == 0
    assert m[("hfserve:e2e_request_latency_seconds_count", ())] == 4
    assert m[("hfserve:time_to_first_token_seconds_count", ())] == 4
    assert m[("hfserve:time_per_output_token_seconds_count", ())] >= 3
    assert m[("hfserve:generation_tokens_total", ())] >= 13
    assert m[("hfserve:prompt_tokens_total", ())] > 0
    assert m[("hfserve:iteration_tokens_total_count", ())] == engine.stats.steps
    assert m[("hfserve:embedding_inputs_total", ())] == 2
    assert m[("hfserve:embedding_batch_size_sum", ())] == 2
    assert m[("hfserve:engine_healthy", ())] == 1


async def test_every_reason_is_exported_from_the_first_scrape(make_client):
    """At 0 before it first happens, as in vLLM: a rate() or an alert on a reason needs the series to exist."""
    client = await make_client()
    m = scrape(await (await client.get("/metrics")).text())
    for reason in ("stop", "length", "abort", "error"):
        assert m[("hfserve:request_success_total", (("finished_reason", reason),))] == 0
    for reason in ("invalid", "overloaded", "timeout"):
        assert m[("hfserve:num_requests_rejected_total", (("reason", reason),))] == 0
    assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})).status == 200
    m = scrape(await (await client.get("/metrics")).text())
    assert m[("hfserve:request_success_total", (("finished_reason", "length"),))] == 1
    assert m[("hfserve:request_success_total", (("finished_reason", "stop"),))] == 0


async def test_requests_that_end_in_an_error_are_finished_requests_in_the_metrics(make_client):
    """A timed-out request counts as finished ("error"): in the latency histograms and the prompt token total,
    as docs/operations.md defines them (they left it out, so error-heavy periods looked faster)."""
    client = await make_client()
    engine = client.app[CONTEXT].engine
    slow = {"max_tokens": 400, "ignore_eos": True, "request_timeout": 0.05}
    resp = await client.post("/v1/completions", json={"prompt": [5] * 7, **slow})
    assert resp.status == 408
    resp = await client.post("/v1/completions", json={"prompt": [6] * 9, "stream": True, **slow})
    first = await resp.content.readline()
    assert first.startswith(b"data: {")  # a token came before the timeout
    assert b'"error"' in await resp.read()
    while engine.num_live:
        await asyncio.sleep(0.01)

    m = scrape(await (await client.get("/metrics")).text())
    assert m[("hfserve:request_success_total", (("finished_reason", "error"),))] == 2
    assert m[("hfserve:e2e_request_latency_seconds_count", ())] == 2
    assert m[("hfserve:request_queue_time_seconds_count", ())] == 2
    assert m[("hfserve:time_to_first_token_seconds_count", ())] >= 1
    assert m[("hfserve:prompt_tokens_total", ())] == 7 + 9


async def test_access_lines_of_requests_that_end_in_an_error_carry_their_token_counts(make_client):
    client = await make_client()
    slow = {"max_tokens": 400, "ignore_eos": True, "request_timeout": 0.05}
    with structlog.testing.capture_logs() as logs:
        assert (await client.post("/v1/completions", json={"prompt": [5] * 7, **slow})).status == 408
        resp = await client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "x"}], "stream": True, **slow})
        frames = (await resp.read()).split(b"\n\n")
        assert any(b'"error"' in f for f in frames)
    full, stream = [e for e in logs if e["event"] == "request"]
    assert full["status"] == 408 and full["prompt_tokens"] == 7 and isinstance(full["completion_tokens"], int)
    assert stream["error_type"] is not None and stream["prompt_tokens"] > 0
    content_frames = [f for f in frames if b'"content":"' in f and b'"content":""' not in f]
    assert stream["completion_tokens"] >= len(content_frames)  # at least the tokens streamed before the timeout


async def test_prefix_cache_counters(make_client):
    client = await make_client(block_size=4)
    prompt = list(range(10, 50))
    for _ in range(2):
        assert (await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 2})).status == 200
    m = scrape(await (await client.get("/metrics")).text())
    assert m[("hfserve:prefix_cache_queries_total", ())] == 80
    assert m[("hfserve:prefix_cache_hits_total", ())] == 36  # 9 full blocks of the second prompt


async def test_one_access_log_line_per_request(make_client):
    client = await make_client()
    with structlog.testing.capture_logs() as logs:
        await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3},
                          headers={"X-Request-Id": "mine-123"})
        await client.get("/health")
    lines = [e for e in logs if e["event"] == "request"]
    assert len(lines) == 2
    gen = next(e for e in lines if e["path"] == "/v1/completions")
    assert gen["status"] == 200
    assert gen["request_id"].startswith("cmpl-")
    assert gen["client_request_id"] == "mine-123"
    assert gen["completion_tokens"] == 3
    assert gen["prompt_tokens"] >= 1
    assert gen["duration_ms"] > 0


async def test_a_long_client_request_id_is_logged_cut_short(make_client):
    client = await make_client()
    with structlog.testing.capture_logs() as logs:
        await client.get("/health", headers={"X-Request-Id": "z" * 5000})
    (line,) = [e for e in logs if e["event"] == "request"]
    assert line["client_request_id"] == "z" * 128


STREAMS = {
    "completion": ("/v1/completions", {"prompt": "x"}),  # its tokens written by the engine's output step
    "completion with logprobs": ("/v1/completions", {"prompt": "x", "logprobs": 1, "echo": True}),
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
    "chat, n=2": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 2}),
}


@pytest.mark.parametrize("kind", STREAMS)
async def test_access_log_records_a_stream_cut_off_midway(make_client, kind):
    """A stream ended by an error frame (here, the engine ending every request, as a drain past its timeout
    does) keeps the 200 it sent with its headers, but its access-log line carries the error's type."""
    client = await make_client()
    path, body = STREAMS[kind]
    frames: list[bytes] = []
    with structlog.testing.capture_logs() as logs:
        resp = await client.post(path, json={**body, "max_tokens": 400, "ignore_eos": True, "stream": True})
        async for line in resp.content:
            if line.strip():
                frames.append(line)
                if len(frames) == 3:
                    client.app[CONTEXT].engine.fail_all(ShuttingDownError("The server is shutting down."))
    assert frames[-1] == b"data: [DONE]\n"
    assert json.loads(frames[-2][6:])["error"]["type"] == "service_unavailable"
    line = next(e for e in logs if e["event"] == "request")
    assert (line["status"], line["error_type"]) == (200, "service_unavailable")


@pytest.mark.parametrize("kind", STREAMS)
async def test_access_log_of_a_complete_stream_has_no_error_type(make_client, kind):
    client = await make_client()
    path, body = STREAMS[kind]
    with structlog.testing.capture_logs() as logs:
        resp = await client.post(path, json={**body, "max_tokens": 4, "stream": True})
        assert (await resp.read()).endswith(b"data: [DONE]\n\n")
    line = next(e for e in logs if e["event"] == "request")
    assert (line["status"], line["error_type"]) == (200, None)
