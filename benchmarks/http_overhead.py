"""The null-model benchmark: the whole service over HTTP with a NullRunner (benchmarks/null_model.py) against a
bare aiohttp + uvloop server streaming the same events (benchmarks/bare_sse.py), in one run.

    python -m benchmarks.http_overhead [--rounds 5] [--duration 5] [--concurrency 64] [--json out.json]
                                       [--profile DIR] [--against CHECKOUT] [--pin]

Both servers run for the whole benchmark, each in its own process. Every round runs the load client
(benchmarks/sse_load.py, its own process) once against each, in alternating order, so that load from other
processes on a shared machine hits both alike. Requests: stream=true, max_tokens=16, ignore_eos=true, a short
prompt. Reported per server: completed streamed requests/s; the server process's CPU time per request
(user + system, from /proc; it leaves out time spent waiting for a CPU, though it still grows with the machine's
load); and the event-loop thread's share of it (per request, and in cores: near 1.0, that thread is the
bottleneck). The headline is the median over rounds of (service req/s) / (bare req/s) of the same round.

--against CHECKOUT: also run the service of another checkout of this repository (say, a `git worktree` of an
earlier commit) as a third server, "baseline", in the same alternating rounds: a code change's effect is then
the paired ratio (service req/s) / (baseline req/s) of each round, free of the drift between runs.

--pin: each server process on the first CPU and the load client on the others, so the client never competes with
the server under test for a CPU. The servers then have one CPU each, as in a deployment that gives the HTTP
front one core; a real model needs every core for its own threads, so this is a measurement setting only.

--profile DIR: after the rounds, one more round against the service under `py-spy record -f raw`; the
folded stacks go to DIR/service.folded and a summary of where the CPU goes is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from benchmarks.sse_load import request_body
from loadtest.compare import proc_cpu_seconds

HOST = "127.0.0.1"
PROMPT = "Hello, my name is"


def _pinned_to(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that restricts the child (and the threads it starts) to `cpus`; None for no restriction."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


class Server:
    """A benchmark server in a child process, up once it printed `READY <port>`."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path | None = None,
                 cwd: Path | None = None, cpus: set[int] | None = None) -> None:
        self.name = name
        self.port = port
        self.url = f"http://{HOST}:{port}/v1/completions"
        stderr = log.open("wb") if log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", *argv, "--host", HOST, "--port", str(port)],
                                     stdout=subprocess.PIPE, stderr=stderr, cwd=cwd,
                                     preexec_fn=_pinned_to(cpus))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"{name} did not start (exit {self.proc.poll()}): {line!r}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        return proc_cpu_seconds(Path(f"/proc/{self.pid}/stat"))

    def loop_thread_cpu_seconds(self) -> float:
        """The same for the main thread alone: the one that runs the event loop (the process's first thread)."""
        return proc_cpu_seconds(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def sample_stream(url: str, max_tokens: int) -> list[dict[str, Any]]:
    """One streamed request, its events parsed: the shape the bare server copies."""
    async with aiohttp.ClientSession() as session, session.post(
            url, data=request_body(max_tokens, PROMPT), headers={"Content-Type": "application/json"}) as resp:
        raw = await resp.read()
    if resp.status != 200:
        raise RuntimeError(f"sample request failed: {resp.status} {raw[:300]!r}")
    frames = [f.removeprefix(b"data: ") for f in raw.split(b"\n\n") if f]
    if frames[-1] != b"[DONE]":
        raise RuntimeError(f"sample stream did not end in [DONE]: {raw[-200:]!r}")
    return [orjson.loads(f) for f in frames[:-1]]


# Engine counters scraped from the service's /metrics around a round (absent from the bare server).
ENGINE_METRICS = {
    "steps": "hfserve:batch_size_count",
    "batched_requests": "hfserve:batch_size_sum",
    "step_seconds": "hfserve:model_step_duration_seconds_sum",  # submit -> result: the executor hop, here
    "idle_gap_seconds": "hfserve:step_idle_gap_seconds_total",  # result -> next submit: the loop's own work
}


async def _engine_counters(base_url: str) -> dict[str, float]:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
            text = await resp.text() if resp.status == 200 else ""
    except aiohttp.ClientError:
        return {}
    values = dict(line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: float(values[name]) for key, name in ENGINE_METRICS.items() if name in values}


def engine_step_stats(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Per-step cadence of the engine over a round, from two scrapes of its counters."""
    d = {k: after[k] - before[k] for k in after if k in before}
    steps = d.get("steps", 0.0)
    if not steps:
        return {}
    out = {"steps_per_s": steps / seconds, "mean_batch": d.get("batched_requests", 0.0) / steps}
    if "step_seconds" in d:
        out["mean_step_ms"] = d["step_seconds"] / steps * 1e3
    if "idle_gap_seconds" in d:
        out["mean_idle_gap_ms"] = d["idle_gap_seconds"] / steps * 1e3
    return out


def load_round(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    base_url = server.url.removesuffix("/v1/completions")
    counters0 = asyncio.run(_engine_counters(base_url)) if server.name == "service" else {}
    cpu0, loop_cpu0 = server.cpu_seconds(), server.loop_thread_cpu_seconds()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.sse_load", "--url", server.url, "--concurrency", str(args.concurrency),
         "--warmup", str(args.warmup), "--duration", str(args.duration), "--max-tokens", str(args.max_tokens),
         "--prompt", PROMPT],
        capture_output=True, check=True, preexec_fn=_pinned_to(args.client_cpus),
    )
    cpu = server.cpu_seconds() - cpu0
    loop_cpu = server.loop_thread_cpu_seconds() - loop_cpu0
    result: dict[str, Any] = json.loads(out.stdout)
    if counters0:
        counters1 = asyncio.run(_engine_counters(base_url))
        result["engine"] = engine_step_stats(counters0, counters1, result["elapsed_s"])
    if result["errors"]:
        raise RuntimeError(f"{server.name}: {result['errors']} failed requests, first: {result['first_error']}")
    result["server_cpu_s"] = cpu
    result["server_cpu_us_per_req"] = cpu / max(result["total_completed"], 1) * 1e6
    # The event-loop thread's share: near 1 core when it is the bottleneck; the rest is other threads (the
    # service's model-step executor, uvloop's workers).
    result["loop_thread_cpu_us_per_req"] = loop_cpu / max(result["total_completed"], 1) * 1e6
    result["loop_thread_cores"] = loop_cpu / result["elapsed_s"]
    result["loadavg_1m"] = os.getloadavg()[0]
    return result


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    log_dir = args.profile
    service = Server("service", ["benchmarks.null_model", "--model-dir", str(args.model_dir)], args.port,
                     log=log_dir / "service.log" if log_dir else None, cpus=args.server_cpus)
    servers = [service]
    try:
        events = asyncio.run(sample_stream(service.url, args.max_tokens))
        texts = [e["choices"][0]["text"] for e in events]
        servers.append(Server("bare", ["benchmarks.bare_sse", "--texts", json.dumps(texts), "--model",
                                       events[0]["model"]], args.port + 1, cpus=args.server_cpus))
        if args.against is not None:
            model_dir = args.model_dir.resolve()
            servers.append(Server("baseline", ["benchmarks.null_model", "--model-dir", str(model_dir)],
                                  args.port + 2, cwd=args.against, cpus=args.server_cpus))
        rounds = []
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]
            rounds.append({s.name: load_round(s, args) for s in order})
            row = rounds[-1]
            line = (f"round {r + 1}/{args.rounds}: service {row['service']['req_per_s']:.0f} req/s, "
                    f"bare {row['bare']['req_per_s']:.0f} req/s, "
                    f"ratio {row['service']['req_per_s'] / row['bare']['req_per_s']:.3f}")
            if "baseline" in row:
                line += (f"; baseline {row['baseline']['req_per_s']:.0f} req/s, "
                         f"service/baseline {row['service']['req_per_s'] / row['baseline']['req_per_s']:.3f}")
            print(line, file=sys.stderr)
        profile = profile_round(service, args) if log_dir else None
    finally:
        for server in servers:
            server.stop()
    summary: dict[str, Any] = {
        name: {
            "req_per_s": spread([r[name]["req_per_s"] for r in rounds]),
            "server_cpu_us_per_req": spread([r[name]["server_cpu_us_per_req"] for r in rounds]),
            "loop_thread_cpu_us_per_req": spread([r[name]["loop_thread_cpu_us_per_req"] for r in rounds]),
            "loop_thread_cores": spread([r[name]["loop_thread_cores"] for r in rounds]),
            "mean_events": statistics.fmean(r[name]["mean_events"] for r in rounds),
            "mean_bytes": statistics.fmean(r[name]["mean_bytes"] for r in rounds),
            "median_latency_ms": spread([r[name]["median_latency_ms"] for r in rounds]),
        }
        for name in rounds[0]
    }
    engine_rounds = [r["service"]["engine"] for r in rounds if r["service"].get("engine")]
    if engine_rounds:
        summary["service"]["engine"] = {k: statistics.median(e[k] for e in engine_rounds)
                                        for k in engine_rounds[0] if all(k in e for e in engine_rounds)}
    summary["ratio"] = spread([r["service"]["req_per_s"] / r["bare"]["req_per_s"] for r in rounds])
    summary["cpu_ratio"] = spread([r["service"]["server_cpu_us_per_req"] / r["bare"]["server_cpu_us_per_req"]
                                   for r in rounds])
    if args.against is not None:
        summary["vs_baseline"] = spread([r["service"]["req_per_s"] / r["baseline"]["req_per_s"] for r in rounds])
    settings = {k: str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v
                for k, v in vars(args).items() if k != "json"}
    return {"settings": settings, "summary": summary, "rounds": rounds, "profile": profile,
            "sample_texts": texts}


def profile_round(service: Server, args: argparse.Namespace) -> dict[str, Any] | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = args.profile / "service.folded"
    duration = int(args.warmup + args.duration)
    spy = subprocess.Popen([py_spy, "record", "--pid", str(service.pid), "--rate", "250", "--duration",
                            str(duration), "--format", "raw", "--output", str(out)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # let py-spy attach before the load starts
    result = load_round(service, args)
    _, err = spy.communicate(timeout=duration + 30)
    if spy.returncode != 0 or not out.exists():
        print(f"py-spy failed: {err.decode()[-500:]}", file=sys.stderr)
        return None
    from benchmarks.profile_summary import summarize

    summary = summarize(out)
    summary["load"] = result
    return summary


def print_table(results: dict[str, Any]) -> None:
    s, st = results["summary"], results["settings"]
    print(f"null-model HTTP benchmark: {st['rounds']} rounds x {st['duration']} s, {st['concurrency']} connections, "
          f"stream=true max_tokens={st['max_tokens']}")
    print(f"{'server':<10}{'req/s median':>14}{'min':>8}{'max':>8}{'CPU us/req':>12}{'loop thread':>13}"
          f"{'loop cores':>12}{'events/req':>12}{'bytes/req':>11}")
    for name in ("service", "bare", "baseline"):
        if name not in s:
            continue
        row = s[name]
        rps, cpu = row["req_per_s"], row["server_cpu_us_per_req"]
        print(f"{name:<10}{rps['median']:>14.0f}{rps['min']:>8.0f}{rps['max']:>8.0f}{cpu['median']:>12.0f}"
              f"{row['loop_thread_cpu_us_per_req']['median']:>13.0f}{row['loop_thread_cores']['median']:>12.2f}"
              f"{row['mean_events']:>12.1f}{row['mean_bytes']:>11.0f}")
    engine = s["service"].get("engine")
    if engine:
        print(f"service engine (medians): {engine['steps_per_s']:.0f} steps/s, {engine['mean_batch']:.1f} requests a "
              f"step, {engine.get('mean_step_ms', float('nan')):.2f} ms submit->result (the NullRunner's executor "
              f"hop), {engine.get('mean_idle_gap_ms', float('nan')):.2f} ms result->next submit")
    r, c = s["ratio"], s["cpu_ratio"]
    print(f"service/bare req/s ratio: median {r['median']:.3f} (min {r['min']:.3f}, max {r['max']:.3f}); "
          f"server CPU per request: service/bare {c['median']:.2f}x")
    if "vs_baseline" in s:
        b = s["vs_baseline"]
        print(f"service/baseline ({st['against']}) req/s, paired by round: median {b['median']:.3f} "
              f"(min {b['min']:.3f}, max {b['max']:.3f})")
    if results.get("profile"):
        from benchmarks.profile_summary import print_summary

        print_summary(results["profile"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per server per round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--port", type=int, default=8101,
                        help="the service's port; the bare server's is +1, the baseline's +2")
    parser.add_argument("--profile", type=Path, help="directory for a py-spy profile of the service")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--pin", action="store_true",
                        help="servers on the first CPU, the load client on the others (needs 2 or more CPUs)")
    parser.add_argument("--against", type=Path, help="a checkout whose service runs as a third server, 'baseline'")
    args = parser.parse_args(argv)
    if not (args.model_dir / "tokenizer.json").exists():
        print(f"http_overhead: no tokenizer in {args.model_dir}; run `make model` first", file=sys.stderr)
        return 2
    args.server_cpus = args.client_cpus = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            print("http_overhead: --pin needs at least 2 CPUs", file=sys.stderr)
            return 2
        args.server_cpus, args.client_cpus = {cpus[0]}, set(cpus[1:])
    if args.against is not None and not (args.against / "benchmarks" / "null_model.py").exists():
        print(f"http_overhead: {args.against} is not a checkout of this repository", file=sys.stderr)
        return 2
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    results = run(args)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
