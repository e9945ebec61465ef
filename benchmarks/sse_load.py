"""Closed-loop load of streamed completions: `--concurrency` connections, each sending the next request as soon
as the last stream ended, for --warmup + --duration seconds. Prints one JSON object on stdout.

    python -m benchmarks.sse_load --url http://127.0.0.1:8101/v1/completions --concurrency 64 --duration 5

Built to cost the client little: a response is read whole (`resp.read()`), checked to end in `data: [DONE]`,
and its events counted, never parsed. Only requests that complete inside the measured window are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field

import aiohttp
import orjson
import uvloop

DONE = b"data: [DONE]\n\n"


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    total_completed: int = 0  # in or out of the window
    bytes: int = 0
    events: int = 0
    latencies: list[float] = field(default_factory=list)
    first_error: str | None = None


def request_body(max_tokens: int, prompt: str) -> bytes:
    return orjson.dumps({"model": "null", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                         "ignore_eos": True, "temperature": 0})


async def run(url: str, body: bytes, concurrency: int, warmup: float, duration: float) -> dict[str, object]:
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    t0 = time.perf_counter()
    start, end = t0 + warmup, t0 + warmup + duration
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     headers={"Content-Type": "application/json"}) as session:

        async def worker() -> None:
            while (sent := time.perf_counter()) < end:
                error = None
                try:
                    async with session.post(url, data=body) as resp:
                        data = await resp.read()
                        if resp.status != 200 or not data.endswith(DONE):
                            error = f"status {resp.status}: {data[-200:]!r}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    error, data = repr(exc), b""
                now = time.perf_counter()
                tally.total_completed += 1
                if not start <= now < end:
                    continue
                if error is not None:
                    tally.errors += 1
                    tally.first_error = tally.first_error or error
                    continue
                tally.ok += 1
                tally.bytes += len(data)
                tally.events += data.count(b"data: ") - 1
                tally.latencies.append(now - sent)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    lat = sorted(tally.latencies) or [float("nan")]
    return {
        "requests": tally.ok,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "req_per_s": tally.ok / duration,
        "total_completed": tally.total_completed,
        "elapsed_s": time.perf_counter() - t0,
        "mean_bytes": tally.bytes / tally.ok if tally.ok else 0.0,
        "mean_events": tally.events / tally.ok if tally.ok else 0.0,
        "median_latency_ms": statistics.median(lat) * 1000,
        "p99_latency_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000,
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompt", default="Hello, my name is")
    args = parser.parse_args(argv)
    body = request_body(args.max_tokens, args.prompt)
    result = uvloop.run(run(args.url, body, args.concurrency, args.warmup, args.duration))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
