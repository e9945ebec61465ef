"""A/B two sets of server flags on one workload: rounds alternate A and B, each against a fresh server process,
so drift in the machine's speed hits both alike. Prints, per side, the harness's headline figures and the
chosen Prometheus metrics scraped from the server after its run.

    # prefix caching: TTFT on a shared-prefix workload
    python -m benchmarks.flag_ab --a="--enable-prefix-caching" --b="--no-enable-prefix-caching" \\
        --harness="--random-prefix-len 512 --random-input-len 32 --random-output-len 16 --num-prompts 64 \\
                   --max-concurrency 8" --metrics prefix_cache_hits_total,prefix_cache_queries_total

    # overlapped output processing: the model's idle gap between steps on the standard workload
    python -m benchmarks.flag_ab --a="--overlap-output-processing" --b="--no-overlap-output-processing" \\
        --metrics step_idle_gap_seconds_total,step_idle_gaps_total

    # environment variables instead of (or with) flags: OpenMP's waiting policy
    python -m benchmarks.flag_ab --a="" --b="" --b-env="OMP_WAIT_POLICY=PASSIVE"

    # another commit's server (a `git worktree` of it) against this one, on the standard workload
    python -m benchmarks.flag_ab --a="" --b="" --a-env="PYTHONSAFEPATH=1 PYTHONPATH=/path/to/worktree"
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from loadtest.cli import async_main
from loadtest.compare import READY_TIMEOUT_S, Peer, start_server, stop
from loadtest.local_server import HOST, free_port, wait_healthy

STANDARD_HARNESS = ("--random-input-len 60 --random-output-len 64 --num-prompts 128 --max-concurrency 32 "
                    "--num-warmups 4")


async def scrape(base_url: str, names: list[str]) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(base_url + "/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            short = sample.name.removeprefix("hfserve:")
            if short in names and not sample.labels:
                values[short] = sample.value
    return values


def parse_env(text: str) -> dict[str, str]:
    """`KEY=VALUE KEY2=VALUE2` (shell-quoted) -> a dict."""
    env = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"environment entries are KEY=VALUE, got {item!r}")
        env[key] = value
    return env


async def run_side(label: str, flags: list[str], env: dict[str, str], args: argparse.Namespace,
                   round_no: int) -> dict[str, Any]:
    port = free_port()
    command = [sys.executable, "-m", "service", "--model", args.model_dir, "--served-model-name", "ab",
               "--host", HOST, "--port", str(port), "--embedding-model", "none", *flags]
    proc = start_server(Peer(f"{label}-{round_no}", label, command, [], env), Path(args.log_dir))
    base_url = f"http://{HOST}:{port}"
    try:
        await wait_healthy(base_url, proc.poll, READY_TIMEOUT_S, interval_s=0.5)
        argv = ["--base-url", base_url, "--model", "ab", "--dataset-name", "random", "--random-range-ratio", "0",
                "--temperature", "0", "--tokenizer", args.model_dir, "--disable-tqdm", "--seed", "0",
                *shlex.split(args.harness)]
        (result,) = await async_main(argv)
        result["metrics"] = await scrape(base_url, args.metrics.split(",") if args.metrics else [])
    finally:
        stop(proc)
    return result


def summarize(label: str, flags: str, results: list[dict[str, Any]], metric_names: list[str]) -> str:
    def med(key: str) -> str:
        vals = [r[key] for r in results if r.get(key) is not None]
        return f"{statistics.median(vals):,.1f}" if vals else "-"

    parts = [f"{label} [{flags}]: output tok/s {med('output_throughput')}, TTFT p50 {med('p50_ttft_ms')} ms, "
             f"p99 {med('p99_ttft_ms')} ms, ITL p50 {med('p50_itl_ms')} ms"]
    for name in metric_names:
        vals = [r["metrics"].get(name) for r in results]
        parts.append(f"{name} {', '.join('-' if v is None else f'{v:g}' for v in vals)}")
    if "step_idle_gap_seconds_total" in metric_names and "step_idle_gaps_total" in metric_names:
        gaps = [r["metrics"]["step_idle_gap_seconds_total"] / r["metrics"]["step_idle_gaps_total"] * 1000
                for r in results if r["metrics"].get("step_idle_gaps_total")]
        if gaps:
            parts.append(f"mean idle gap per step {', '.join(f'{g:.3f}' for g in gaps)} ms "
                         f"(median {statistics.median(gaps):.3f})")
    return "\n  ".join(parts)


async def main_async(args: argparse.Namespace) -> None:
    sides = {"A": shlex.split(args.a), "B": shlex.split(args.b)}
    envs = {"A": parse_env(args.a_env), "B": parse_env(args.b_env)}
    results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for round_no in range(1, args.rounds + 1):
        order = ("A", "B") if round_no % 2 else ("B", "A")
        for label in order:
            results[label].append(await run_side(label, sides[label], envs[label], args, round_no))
    metric_names = args.metrics.split(",") if args.metrics else []
    print()
    for label in ("A", "B"):
        shown = " ".join(f"{k}={shlex.quote(v)}" for k, v in envs[label].items())
        print(summarize(label, " ".join(filter(None, [shown, shlex.join(sides[label])])), results[label],
                        metric_names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="Server flags of side A.")
    parser.add_argument("--b", required=True, help="Server flags of side B.")
    parser.add_argument("--a-env", default="", help="Environment variables of side A's server: KEY=VALUE ...")
    parser.add_argument("--b-env", default="", help="Environment variables of side B's server: KEY=VALUE ...")
    parser.add_argument("--harness", default=STANDARD_HARNESS, help="Load-test flags (random dataset).")
    parser.add_argument("--metrics", default="", help="Comma-separated hfserve: metric names to scrape.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model-dir", default="models/default")
    parser.add_argument("--log-dir", default="bench-results/flag_ab")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
