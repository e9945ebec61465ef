"""/health latency while a burst of long prompts arrives: is the event loop still free?

A burst of 64 prompts of ~8k tokens each is sent at once (streamed, 16 output tokens each). Meanwhile a
separate process polls GET /health every 10 ms and records each answer's latency. The server runs as a real
subprocess on the benchmark model rebuilt with a 16k context (so the prompts are admitted and prefilled, not
just rejected). The window covers reading the bodies, tokenizing them (off the loop), admission, and the
first minute of prefill; then every client disconnects.

    python -m benchmarks.health_under_burst [--prompts 64] [--tokens 8192] [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from loadtest.local_server import ServerExitedError, free_port, wait_healthy
from service.model_builder import build, corpus_files

MODEL_DIR = Path("models/long-context")


def poll_health(port: int, stop_at: float, out: multiprocessing.Queue) -> None:
    """Runs in its own process: GET /health every 10 ms on a fresh connection; latencies in seconds."""
    latencies, failures = [], 0
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                failures += 1
        except OSError:
            failures += 1
        time.sleep(0.01)
    out.put((latencies, failures))


def long_prompts(n: int, approx_tokens: int) -> list[str]:
    text = "".join(f.read_text(encoding="utf-8", errors="ignore") for f in corpus_files()[:80])
    chars = int(approx_tokens * 3.75)  # this tokenizer averages ~3.8 characters per token on Python source
    return [text[i * 997 : i * 997 + chars] for i in range(n)]


async def burst(port: int, prompts: list[str], window_s: float) -> dict[str, int]:
    counts = {"first_token": 0, "rejected": 0, "errors": 0}

    async def one(session: aiohttp.ClientSession, prompt: str) -> None:
        body = {"prompt": prompt, "max_tokens": 16, "stream": True, "ignore_eos": True}
        try:
            async with session.post(f"http://127.0.0.1:{port}/v1/completions", json=body) as resp:
                if resp.status != 200:
                    counts["rejected"] += 1
                    return
                async for line in resp.content:
                    if line.startswith(b"data: {"):
                        counts["first_token"] += 1
                        return
        except aiohttp.ClientError:
            counts["errors"] += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.ensure_future(one(session, p)) for p in prompts]
        await asyncio.wait(tasks, timeout=window_s)
        for t in tasks:
            t.cancel()  # the rest disconnect: the server aborts them
        await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--window", type=float, default=60.0, help="Seconds to measure for.")
    args = parser.parse_args()
    if not (MODEL_DIR / "config.json").exists():
        build("default", MODEL_DIR, max_position_embeddings=16384)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "--model", str(MODEL_DIR), "--port", str(port), "--embedding-model",
         "none", "--log-level", "warning", "--max-queued-requests", "1024"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        try:
            asyncio.run(wait_healthy(f"http://127.0.0.1:{port}", server.poll, 300, interval_s=0.2))
        except (ServerExitedError, TimeoutError) as exc:
            raise SystemExit(f"the server did not start: {exc}") from exc
        prompts = long_prompts(args.prompts, args.tokens)
        queue: multiprocessing.Queue = multiprocessing.Queue()
        poller = multiprocessing.Process(target=poll_health, args=(port, time.monotonic() + args.window, queue))
        poller.start()
        time.sleep(0.5)  # a few idle polls first
        counts = asyncio.run(burst(port, prompts, args.window - 0.5))
        latencies, failures = queue.get(timeout=args.window + 30)
        poller.join()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
    print(f"burst: {args.prompts} prompts of ~{args.tokens} tokens; window {args.window:.0f} s; {counts}")
    print(f"/health: {len(ms)} answers, {failures} failures; p50 {statistics.median(ms):.1f} ms, "
          f"p99 {p99:.1f} ms, max {ms[-1]:.1f} ms")


if __name__ == "__main__":
    main()
