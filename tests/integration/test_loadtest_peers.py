"""The harness against servers other than ours: a bare OpenAI-style fake (no usage, no /tokenize, some 503s),
the plain-HF static-batching baseline, and (slow, outside CI) `transformers serve`."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from loadtest.cli import async_main
from loadtest.compare import make_peers, start_server, stop
from loadtest.local_server import free_port, wait_healthy
from loadtest.static_baseline_server import BATCHER, create_app

PEER_VENV = Path(__file__).resolve().parents[2] / ".venv-peer"


def fake_openai_app() -> web.Application:
    """Streams three chunks, sends no usage and no [DONE]; every fourth request gets 503."""
    state = {"n": 0}

    async def completions(request: web.Request) -> web.StreamResponse:
        state["n"] += 1
        if state["n"] % 4 == 0:
            return web.json_response({"error": {"message": "overloaded", "type": "overloaded", "code": 503}},
                                     status=503)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for text in ("def", " foo", "(self):"):
            await asyncio.sleep(0.01)
            await resp.write(b"data: " + json.dumps({"choices": [{"index": 0, "text": text}]}).encode() + b"\n\n")
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
    return app


async def test_server_without_usage_or_tokenize(aiohttp_client, tiny_model_dir: Path) -> None:
    client = await aiohttp_client(fake_openai_app())
    (r,) = await async_main(["--base-url", str(client.make_url("")).rstrip("/"), "--disable-tqdm",
                             "--num-prompts", "12", "--max-concurrency", "2", "--random-input-len", "20",
                             "--random-output-len", "3", "--tokenizer", str(tiny_model_dir)])
    assert r["model_id"] == "fake-model"
    # The test request was the 1st call; the 4th, 8th and 12th of the 12 timed ones failed.
    assert r["failed"] == 3 and r["completed"] == 9 and r["error_codes"] == {"HTTP 503": 3}
    assert r["error_rate"] == pytest.approx(3 / 12)
    assert r["output_token_source"] == {"tokenizer": 9}  # counted, and said so
    assert any("usage" in note for note in r["notes"])
    assert r["prompt_len_source"].startswith("local tokenizer")
    assert r["total_output_tokens"] > 0 and r["median_itl_ms"] >= 5


@pytest.fixture
async def static_client(aiohttp_client, tiny_model_dir: Path) -> Any:
    return await aiohttp_client(create_app(str(tiny_model_dir), "tiny", "float32", 4, 0.0))


async def test_static_baseline_end_to_end_with_aborts(static_client) -> None:
    (r,) = await async_main(["--base-url", str(static_client.make_url("")).rstrip("/"), "--disable-tqdm",
                             "--num-prompts", "8", "--max-concurrency", "4", "--random-input-len", "12",
                             "--random-output-len", "8", "--temperature", "0", "--abort-fraction", "0.25",
                             "--tokenizer", str(static_client.app[BATCHER].tokenizer.name_or_path)])
    assert r["completed"] == 6 and r["aborted"] == 2 and r["failed"] == 0
    assert r["total_output_tokens"] == 48 and r["output_token_source"] == {"usage": 6}
    assert r["fault_check"]["passed"] and r["fault_check"]["drained_after_s"] is None  # no running counts
    assert r["max_concurrent_requests"] <= 4


async def test_static_baseline_stops_rows_at_eos_unless_ignored(static_client) -> None:
    body = {"prompt": "def foo", "max_tokens": 6, "temperature": 0}
    first = await (await static_client.post("/v1/completions", json={**body, "return_token_ids": True})).json()
    assert first["usage"]["completion_tokens"] == 6 == len(first["choices"][0]["token_ids"])
    # Make the first greedy token an EOS, in the model's config too: only the baseline's streamer may stop rows.
    batcher = static_client.app[BATCHER]
    eos = first["choices"][0]["token_ids"][0]
    batcher.eos_ids = {eos}
    batcher.model.config.eos_token_id = eos
    stopped = await (await static_client.post("/v1/completions", json=body)).json()
    assert stopped["choices"][0]["finish_reason"] == "stop" and stopped["usage"]["completion_tokens"] == 1
    ignored = await (await static_client.post("/v1/completions", json={**body, "ignore_eos": True})).json()
    assert ignored["choices"][0]["finish_reason"] == "length" and ignored["usage"]["completion_tokens"] == 6


@pytest.mark.slow
@pytest.mark.skipif(not (PEER_VENV / "bin" / "transformers").exists(),
                    reason="needs .venv-peer (make bench-compare creates it)")
async def test_against_transformers_serve(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The smoke test outside CI: the peer exactly as `make bench-compare` starts and drives it."""
    port = free_port()
    peer = make_peers(tiny_model_dir, port, sys.executable, PEER_VENV, "float32", 4, tmp_path)["transformers"]
    proc = start_server(peer, tmp_path / "logs")
    try:
        await wait_healthy(f"http://127.0.0.1:{port}", proc.poll, 300, interval_s=0.5)
        (r,) = await async_main([
            "--base-url", f"http://127.0.0.1:{port}", "--disable-tqdm", "--num-prompts", "8",
            "--max-concurrency", "4", "--random-input-len", "12", "--random-output-len", "8", "--temperature", "0",
            "--tokenizer", str(tiny_model_dir), *peer.harness_args])
    finally:
        stop(proc)
    assert r["completed"] == 8 and r["failed"] == 0, r["error_codes"]
    assert r["total_output_tokens"] == 64 and r["output_token_source"] == {"usage": 8}  # EOS off, usage sent
