"""SIGTERM under load, with the server as a real subprocess: new requests get 503, in-flight ones finish
within --drain-timeout, the rest are aborted with an error event, and the process exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

import aiohttp
import pytest

from loadtest.local_server import ServerExitedError, free_port, wait_healthy


async def start_server(model_dir, *extra: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "--model", str(model_dir), "--port", str(port),
        "--embedding-model", "none", "--log-format", "json", *extra,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(base, lambda: proc.returncode, 60)
    except ServerExitedError as exc:
        raise RuntimeError((await proc.stderr.read()).decode()[-3000:]) from exc  # type: ignore[union-attr]
    except TimeoutError:
        proc.kill()
        raise
    return proc, base


async def stream_events(session: aiohttp.ClientSession, url: str, max_tokens: int) -> list[bytes]:
    body = {"prompt": "drain", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    async with session.post(url, json=body) as resp:
        return [line async for line in resp.content if line.strip()]


@pytest.mark.parametrize("drain_timeout", [30.0, 1.0])
async def test_sigterm_drains_then_exits_zero(tiny_model_dir, drain_timeout):
    proc, base = await start_server(tiny_model_dir, "--drain-timeout", str(drain_timeout), "--max-num-seqs", "4",
                                    "--dtype", "float32")
    url = base + "/v1/completions"
    try:
        async with aiohttp.ClientSession() as session:
            # Short requests finish within any drain; long ones (400 tokens, slowed by 12 in a batch of 4)
            # outlast a 1 s drain and must be aborted with an error event.
            short = [asyncio.ensure_future(stream_events(session, url, 20)) for _ in range(4)]
            long = [asyncio.ensure_future(stream_events(session, url, 480)) for _ in range(8)]
            await asyncio.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with session.post(url, json={"prompt": "late", "max_tokens": 2}) as late:
                assert late.status == 503
                assert (await late.json())["error"]["type"] == "service_unavailable"
            async with session.get(base + "/health") as health:
                assert health.status == 503
            results = await asyncio.gather(*short, *long)
        t0 = time.monotonic()
        code = await asyncio.wait_for(proc.wait(), timeout=drain_timeout + 20)
        log = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
        assert code == 0, log[-3000:]
        assert time.monotonic() - t0 < drain_timeout + 20
    finally:
        if proc.returncode is None:
            proc.kill()
    for frames in results:
        assert frames[-1] == b"data: [DONE]\n"  # nobody is cut off silently
    finished = [f for f in results if b'"finish_reason":"length"' in f[-2]]
    aborted = [f for f in results if b'"error"' in f[-2]]
    assert len(finished) + len(aborted) == len(results)
    assert len(finished) >= 4  # the short ones always make it
    if drain_timeout >= 30:
        assert aborted == []
    else:
        assert aborted, "a 1 s drain cannot finish 480-token requests"
        assert all(b"shutting down" in f[-2] for f in aborted)
    # The streams' access-log lines: status 200, as sent with the headers; an aborted one names its error's type.
    streams = [e for e in (json.loads(line) for line in log.splitlines() if line.startswith("{"))
               if e.get("event") == "request" and e["path"] == "/v1/completions" and e["status"] == 200]
    assert len(streams) == len(results)
    assert sorted(e["error_type"] or "" for e in streams) == \
        [""] * len(finished) + ["service_unavailable"] * len(aborted)
