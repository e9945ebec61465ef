"""A heavy logprobs request: `echo` + `logprobs` + `n` choices on a long prompt (--stream: streamed), while /health is
polled every 10 ms. Reports each request's time and response size, /health's slowest answer during it, and the
server's prefix-cache hits (the choices after the first can prefill from the cache). The server runs as a real
subprocess on the benchmark model, a fresh one per run.

    python -m benchmarks.echo_logprobs [--model-dir models/default] [--requests 3] [--n 16] [--words 750] [--stream]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp

from loadtest.local_server import ServerExitedError, free_port, wait_healthy

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


async def probe_health(session: aiohttp.ClientSession, url: str, done: asyncio.Event,
                       latencies: list[float]) -> None:
    """GET url every 10 ms until `done`, recording each answer's latency."""
    while not done.is_set():
        t0 = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
        latencies.append(time.perf_counter() - t0)
        await asyncio.sleep(0.01)


async def measure(base_url: str, body: dict[str, object], requests: int) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(requests):
            latencies: list[float] = []
            done = asyncio.Event()
            prober = asyncio.create_task(probe_health(session, base_url + "/health", done, latencies))
            t0 = time.perf_counter()
            async with session.post(base_url + "/v1/completions", json=body) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"request failed: {resp.status} {raw[:300]!r}")
            elapsed = time.perf_counter() - t0
            done.set()
            await prober
            print(f"request {i + 1}: {elapsed:.2f} s, {len(raw) / 1e6:.1f} MB; /health slowest "
                  f"{max(latencies) * 1e3:.0f} ms of {len(latencies)} answers")
        async with session.get(base_url + "/metrics") as resp:
            metrics = await resp.text()
    for line in metrics.splitlines():
        if line.startswith(("hfserve:prefix_cache_hits_total", "hfserve:prefix_cache_queries_total")):
            print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="models/default")
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--words", type=int, default=750, help="Prompt length in words (~2.5 tokens each).")
    parser.add_argument("--logprobs", type=int, default=5)
    parser.add_argument("--stream", action="store_true", help="Stream the response (read whole all the same).")
    args = parser.parse_args()
    prompt = " ".join(WORDS[i % len(WORDS)] for i in range(args.words))
    body = {"prompt": prompt, "max_tokens": 4, "temperature": 0, "logprobs": args.logprobs, "echo": True,
            "n": args.n, "stream": args.stream}
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "service", "--model", args.model_dir, "--port", str(port), "--embedding-model",
         "none", "--log-level", "warning"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(wait_healthy(base_url, server.poll, 300, interval_s=0.2))
        except (ServerExitedError, TimeoutError) as exc:
            raise SystemExit(f"the server did not start: {exc}") from exc
        print(f"{args.requests} requests: echo, logprobs={args.logprobs}, n={args.n}, a {args.words}-word prompt"
              + (", streamed" if args.stream else ""))
        asyncio.run(measure(base_url, body, args.requests))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
