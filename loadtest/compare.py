"""`make bench` and `make bench-compare`: start each server on the benchmark model, run the same workload
against it with the harness, stop it, and print (and optionally write to docs/benchmarks.md) one table.

Peers:
  hfserve       this project (`python -m service`)
  hfserve-auto  the same with `--dtype auto`
  transformers  `transformers serve --continuous-batching`, from its own venv (.venv-peer)
  static        loadtest/static_baseline_server.py: plain `model.generate` on static batches

    python -m loadtest.compare --servers hfserve,transformers,static --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from loadtest.cli import async_main
from loadtest.local_server import HOST, free_port, wait_healthy
from loadtest.report import git_commit, machine_info

# The core issue's comparison: 128 streamed requests of ~60 prompt tokens, 64 output tokens, 32 clients.
STANDARD = {"num_prompts": 128, "max_concurrency": 32, "input_len": 60, "output_len": 64}
READY_TIMEOUT_S = 600.0
# transformers serve rejects unknown body fields (ignore_eos gives 422); an EOS id of -1 disables EOS in its
# continuous-batching manager, which is what ignore_eos asks for.
SECTION_START = "<!-- bench-compare:start -->"
SECTION_END = "<!-- bench-compare:end -->"
TRANSFORMERS_NO_EOS = orjson.dumps({"generation_config": orjson.dumps({"eos_token_id": -1}).decode()}).decode()


@dataclass(frozen=True)
class Peer:
    name: str
    description: str
    command: list[str]
    harness_args: list[str]
    env: dict[str, str]


def _short(path: str) -> str:
    """A path relative to the working directory when it lies under it: commands in the report stay readable."""
    absolute = os.path.abspath(path)  # not resolve(): a venv's python is a symlink that must stay one
    return os.path.relpath(absolute) if absolute.startswith(os.getcwd() + os.sep) else absolute


def make_peers(model_dir: Path, port: int, python: str, peer_venv: Path, dtype: str, batch: int,
               hf_cache: Path) -> dict[str, Peer]:
    model = _short(str(model_dir))
    python = _short(python)
    return {
        "hfserve": Peer(
            "hfserve", "this project: continuous batching, paged KV cache",
            [python, "-m", "service", "--model", model, "--served-model-name", model_dir.name, "--host", HOST,
             "--port", str(port), "--dtype", dtype],
            ["--model", model_dir.name], {}),
        "hfserve-auto": Peer(
            "hfserve-auto", "this project with `--dtype auto` (on the CPU: bf16 only where it measures faster)",
            [python, "-m", "service", "--model", model, "--served-model-name", model_dir.name, "--host", HOST,
             "--port", str(port), "--dtype", "auto"],
            ["--model", model_dir.name], {}),
        "transformers": Peer(
            "transformers", "`transformers serve --continuous-batching` (its own venv)",
            [str(peer_venv / "bin" / "transformers"), "serve", "--continuous-batching", "--device", "cpu",
             "--dtype", dtype, "--host", HOST, "--port", str(port), model],
            # It serves the forced model under the path it was given, and its /v1/models lists the hub cache.
            ["--model", model, "--no-ignore-eos", "--extra-body", TRANSFORMERS_NO_EOS],
            {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache), "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}),
        "static": Peer(
            "static", "plain HF `model.generate` on static batches (loadtest/static_baseline_server.py)",
            [python, "-m", "loadtest.static_baseline_server", "--model", model, "--host", HOST, "--port", str(port),
             "--dtype", dtype, "--max-batch-size", str(batch)],
            [], {}),
    }


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the server and anything it spawned: its own process group
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def workload_args(args: argparse.Namespace) -> list[str]:
    return [
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--random-range-ratio", "0",
        "--num-prompts", str(args.num_prompts), "--max-concurrency", str(args.max_concurrency),
        "--num-warmups", str(args.num_warmups), "--temperature", "0", "--seed", str(args.seed),
        "--tokenizer", _short(args.model_dir),
    ]


def start_server(peer: Peer, log_dir: Path) -> subprocess.Popen[bytes]:
    """Start the peer in its own process group, its output to log_dir/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{peer.name}.log"
    print(f"\n### {peer.name}: {shlex.join(peer.command)}  (log: {log_path})", flush=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(peer.command, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **peer.env}, start_new_session=True)


async def bench_one(peer: Peer, port: int, args: argparse.Namespace, log_dir: Path,
                    round_no: int = 1) -> dict[str, Any]:
    proc = start_server(peer, log_dir)
    base_url = f"http://{HOST}:{port}"
    try:
        started = time.monotonic()
        await wait_healthy(base_url, proc.poll, READY_TIMEOUT_S, interval_s=0.5)
        print(f"ready after {time.monotonic() - started:.1f}s", flush=True)
        argv = ["--base-url", base_url, *workload_args(args), *peer.harness_args, "--save-result",
                "--result-dir", str(log_dir), "--result-filename", f"{peer.name}-{round_no}.json"]
        if args.disable_tqdm:
            argv.append("--disable-tqdm")
        meter = CpuMeter(proc.pid)
        (result,) = await async_main(argv)
        other_cpu = meter.other_cores()
    finally:
        stop(proc)
    result["peer"] = {"name": peer.name, "description": peer.description, "server_command": peer.command,
                      "harness_args": argv,
                      "other_cpu_cores": other_cpu}
    result["round"] = round_no
    return result


def proc_cpu_seconds(stat: Path) -> float:
    """utime + stime, in seconds, from a /proc/<pid>/stat (a process) or /proc/<pid>/task/<tid>/stat (a thread)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """How much CPU everything except the server process and this one used since construction (Linux /proc)."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.hz = os.sysconf("SC_CLK_TCK")
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            server = proc_cpu_seconds(Path(f"/proc/{self.server_pid}/stat"))
        except (OSError, ValueError, IndexError):
            return None
        busy = (sum(fields) - fields[3] - fields[4]) / self.hz  # all but idle and iowait
        own = os.times()
        return time.monotonic(), busy, server, own.user + own.system

    def other_cores(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        wall, busy, server, own = (e - s for e, s in zip(end, self.start, strict=True))
        return max(busy - server - own, 0.0) / wall


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ms(r: dict[str, Any], key: str) -> str:
    v = r.get(key)
    return "-" if v is None else f"{v:,.1f}"


def summary_table(results: list[dict[str, Any]]) -> str:
    """Median over rounds per server, and each server's output rate against transformers' in the same rounds."""
    names = list(dict.fromkeys(r["peer"]["name"] for r in results))
    by = {n: [r for r in results if r["peer"]["name"] == n] for n in names}
    peer_rate = {r["round"]: r["output_throughput"] for r in by.get("transformers", [])}
    lines = ["| server | rounds | output tok/s (median) | min | max | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) "
             "| ITL p99 (ms) | vs transformers (median of per-round ratios) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n in names:
        rs = by[n]
        rates = [r["output_throughput"] for r in rs]
        ratios = [r["output_throughput"] / peer_rate[r["round"]] for r in rs if peer_rate.get(r["round"])]
        ratio = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "-"

        def med(key: str, rows: list[dict[str, Any]] = rs) -> str:
            vals = [r[key] for r in rows if r.get(key) is not None]
            return f"{statistics.median(vals):,.1f}" if vals else "-"

        lines.append(f"| {n} | {len(rs)} | {statistics.median(rates):,.1f} | {min(rates):,.1f} | {max(rates):,.1f} "
                     f"| {med('p50_ttft_ms')} | {med('p99_ttft_ms')} | {med('p50_itl_ms')} | {med('p99_itl_ms')} "
                     f"| {ratio} |")
    return "\n".join(lines)


def results_table(results: list[dict[str, Any]]) -> str:
    lines = ["| round | server | completed | failed | output tok/s | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) "
             "| ITL p99 (ms) | E2EL p50 (ms) | duration (s) | other CPU (cores) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.get('round', 1)} | {r['peer']['name']} | {r['completed']} | {r['failed']} | "
                     f"{r['output_throughput']:,.1f} | "
                     f"{_ms(r, 'p50_ttft_ms')} | {_ms(r, 'p99_ttft_ms')} | {_ms(r, 'p50_itl_ms')} | "
                     f"{_ms(r, 'p99_itl_ms')} | {_ms(r, 'p50_e2el_ms')} | {r['duration']:.2f} | "
                     f"{_cores(r['peer']['other_cpu_cores'])} |")
    return "\n".join(lines)


def _versions(python: str) -> str:
    try:
        out = subprocess.run([python, "-c", "import torch, transformers; print(torch.__version__, "
                              "transformers.__version__)"], capture_output=True, text=True, timeout=120, check=True)
        torch_v, tf_v = out.stdout.split()
    except (OSError, subprocess.SubprocessError, ValueError):
        return "unknown"
    return f"torch {torch_v}, transformers {tf_v}"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def _short_commit(commit: str | None) -> str:
    if commit is None:
        return "unknown"
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def render_markdown(results: list[dict[str, Any]], args: argparse.Namespace, python: str) -> str:
    standard = all(getattr(args, k) == v for k, v in STANDARD.items())
    m = machine_info()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [SECTION_START, "## Against transformers serve and static batching (`make bench-compare`)", ""]
    if not standard:
        out += [f"> **Smoke run, not the standard workload.** {args.num_prompts} requests at "
                f"{args.max_concurrency} concurrent clients, ~{args.input_len} prompt tokens, {args.output_len} "
                "output tokens. It shows that the pipeline works end to end; its numbers are not a comparison.",
                ""]
    out += [
        f"Generated by `make bench-compare` (`python -m loadtest.compare`) on {when}, at git commit "
        f"`{_short_commit(git_commit())}`. The servers ran one after another, never two at once, with the "
        "harness on the same machine. Reproduce with `make bench-compare`; `make bench-compare "
        "BENCH_ARGS=\"--num-prompts 16\"` is a quick smoke run.",
        "",
        "### Workload",
        "",
        f"- model: `{args.model_dir}` (Llama architecture, random weights), {args.dtype}",
        f"- {args.num_prompts} streamed requests, random dataset: ~{args.input_len} prompt tokens (English words, "
        f"length measured with the model's tokenizer), max_tokens {args.output_len}, EOS ignored, greedy",
        f"- closed loop: {args.max_concurrency} concurrent clients, {args.num_warmups} untimed warm-up requests",
        "- metrics as `vllm bench serve` defines them: TTFT = first content chunk − send; ITL between content "
        "chunks; output tokens from each server's `usage`",
        "",
        "### Results",
        "",
        summary_table(results),
        "",
        "Every round:",
        "",
        results_table(results),
        "",
        f"*other CPU*: cores' worth of CPU time that processes other than the server and the harness used while "
        f"the load ran (from /proc; the machine has {os.cpu_count()}). Well above zero, other work shared the CPU "
        "and that row's numbers are not comparable with the others.",
        "",
        "### Commands",
        "",
    ]
    for r in [r for r in results if r.get("round", 1) == 1]:
        peer = r["peer"]
        out += [f"**{peer['name']}** — {peer['description']}", "", "```",
                shlex.join(peer["server_command"]),
                "python -m loadtest " + shlex.join(peer["harness_args"]), "```", ""]
    out += [
        "### Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cpu_count']} cores; memory {_memory_gib()}",
        f"- {m['platform']}, Python {m['python']}, {_versions(python)}",
    ]
    if any(r["peer"]["name"] == "transformers" for r in results):
        out.append(f"- peer venv ({args.peer_venv}): {_versions(str(Path(args.peer_venv) / 'bin' / 'python'))}")
    out += [
        "",
        "### Notes on the peers",
        "",
        "- `transformers serve` rejects body fields it does not know with 422, `ignore_eos` among them, so the "
        "harness sends `generation_config: '{\"eos_token_id\": -1}'` instead (-1 disables EOS in its "
        "continuous-batching manager). It ignores `stream_options` but always puts `usage` in its last chunk. "
        "It is started with the model directory as its forced model, and requests name that path as the model. "
        "Offline, its `GET /v1/models` fails with 500 unless the Hugging Face cache directory exists, so "
        "`HF_HUB_CACHE` points at an empty directory (and `HF_HUB_OFFLINE=1`).",
        "- The static baseline batches whatever is waiting (up to the client count) when a batch finishes; "
        "newcomers wait for the whole batch. It streams each step's token as `generate` makes it.",
        "",
        SECTION_END,
    ]
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace the bench-compare section of `path` (between its markers), keeping the rest of the page."""
    if not path.exists():
        path.write_text("# Benchmarks\n\n" + section)
        return
    text = path.read_text()
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        tail = rest.split(SECTION_END, 1)[1].lstrip("\n")
        path.write_text(head + section + ("\n" + tail if tail else ""))
    else:
        path.write_text(text.rstrip("\n") + "\n\n" + section)


async def compare(args: argparse.Namespace) -> list[dict[str, Any]]:
    names = [n.strip() for n in args.servers.split(",") if n.strip()]
    log_dir = Path(args.log_dir)
    results = []
    with tempfile.TemporaryDirectory(prefix="hf-cache-") as hf_cache:
        # Rounds run every server once, in turn, so that drift in the machine's speed hits all of them alike.
        for round_no in range(1, args.repeat + 1):
            for name in names:
                port = free_port()
                peers = make_peers(Path(args.model_dir), port, sys.executable, Path(args.peer_venv), args.dtype,
                                   args.max_concurrency, Path(hf_cache))
                if name not in peers:
                    raise ValueError(f"unknown server {name!r}: expected one of {', '.join(peers)}")
                results.append(await bench_one(peers[name], port, args, log_dir, round_no))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default="hfserve",
                   help="Comma-separated: hfserve, hfserve-auto, transformers, static.")
    p.add_argument("--model-dir", default="models/default")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--peer-venv", default=".venv-peer", help="Venv holding transformers[serving].")
    p.add_argument("--num-prompts", type=int, default=STANDARD["num_prompts"])
    p.add_argument("--max-concurrency", type=int, default=STANDARD["max_concurrency"])
    p.add_argument("--input-len", type=int, default=STANDARD["input_len"])
    p.add_argument("--output-len", type=int, default=STANDARD["output_len"])
    p.add_argument("--num-warmups", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default="bench-results", help="Server logs and result JSONs.")
    p.add_argument("--out", default=None, help="Write the markdown report here (e.g. docs/benchmarks.md).")
    p.add_argument("--disable-tqdm", action="store_true")
    p.add_argument("--repeat", type=int, default=1, help="Rounds; each runs every server once, in turn.")
    args = p.parse_args()
    if not (Path(args.model_dir) / "config.json").exists():
        p.error(f"{args.model_dir} has no model: build it with `python -m service.model_builder --preset default "
                f"--out {args.model_dir}` (or `make model`)")
    results = asyncio.run(compare(args))
    print("\n" + results_table(results))
    (Path(args.log_dir) / "compare.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print("\n" + summary_table(results))
    if args.out:
        write_section(Path(args.out), render_markdown(results, args, sys.executable))
        print(f"wrote the bench-compare section of {args.out}")


if __name__ == "__main__":
    main()
