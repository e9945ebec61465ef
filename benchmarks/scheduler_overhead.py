"""Per-step cost of the engine's plain-Python hot path with 256 decoding sequences, at no model cost.

    python -m benchmarks.scheduler_overhead [--json results.json]

Measured once with prefix caching on and once off, each over --steps decode steps after the prompts are in:

  schedule             Scheduler.schedule(): the token budget, block allocation (a new block every block_size
                       tokens), prefix-cache digests of newly full blocks, the SchedulerOutput
  update               Scheduler.update_from_output() on a runner output built beforehand (not timed)
  sched+update         the two above: the issue's "scheduler + bookkeeping" figure
  output processing    the engine's output processor (AsyncEngine.outputs.process) on one step's updates:
                       incremental detokenization (the model's byte-level table), a stop-string matcher per
                       request (one stop string, never hit), the delta put on each request's OutputStream
  stream reads         then, timed separately, a reader taking each request's delta (OutputStream.get)
  engine loop          the real AsyncEngine batch loop (overlapped), NullRunner in its executor thread, 256
                       streaming requests each drained by a task that awaits its stream: wall time between
                       consecutive decode steps; everything the event loop does per step except HTTP

The first three need only the scheduler and block manager; the others load the tokenizer of --model-dir.
Steps alternate between the prefix-caching-on and -off instances, so that load from other processes on a shared
machine hits both alike; each row is reported as wall time and as this thread's CPU time (which time slices
lost to other processes do not inflate). The engine loop runs two threads, so it has wall time only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.null_runner import NullRunner
from service.config import SchedulerConfig
from service.engine.block_manager import BlockManager
from service.engine.outputs import ModelRunnerOutput
from service.engine.request import Request
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import Scheduler
from service.logging_setup import configure_logging

VOCAB = 8192
STOP = ("<|user|>",)  # never appears in the NullRunner's text tokens


@dataclass(frozen=True)
class Setup:
    num_seqs: int = 256
    steps: int = 500
    block_size: int = 16
    min_prompt: int = 64
    max_prompt: int = 1024
    seed: int = 0

    @property
    def max_tokens(self) -> int:
        return self.steps + 64  # nobody finishes while measured

    @property
    def max_model_len(self) -> int:
        return self.max_prompt + self.max_tokens

    @property
    def num_blocks(self) -> int:
        return self.num_seqs * -(-self.max_model_len // self.block_size)


def prompts(setup: Setup) -> list[list[int]]:
    """Log-uniform prompt lengths in [min_prompt, max_prompt] (median ~256 for the defaults)."""
    rng = random.Random(setup.seed)
    lo, hi = math.log(setup.min_prompt), math.log(setup.max_prompt)
    return [[rng.randrange(VOCAB) for _ in range(round(math.exp(rng.uniform(lo, hi))))]
            for _ in range(setup.num_seqs)]


class Samples:
    """Per-step durations: wall clock, and this thread's CPU time (which time slices lost to other processes on
    a shared machine do not inflate)."""

    def __init__(self) -> None:
        self.wall_ns: list[int] = []
        self.cpu_ns: list[int] = []

    def add(self, wall_ns: int, cpu_ns: int) -> None:
        self.wall_ns.append(wall_ns)
        self.cpu_ns.append(cpu_ns)

    def __add__(self, other: Samples) -> Samples:
        total = Samples()
        for args in zip(self.wall_ns, other.wall_ns, self.cpu_ns, other.cpu_ns, strict=True):
            total.add(args[0] + args[1], args[2] + args[3])
        return total

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {"n": len(self.wall_ns)}
        for name, samples in (("wall", self.wall_ns), ("cpu", self.cpu_ns)):
            if samples:
                ms = sorted(x / 1e6 for x in samples)
                out[f"median_{name}_ms"] = statistics.median(ms)
                out[f"p99_{name}_ms"] = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        return out


def _clock() -> tuple[int, int]:
    return time.perf_counter_ns(), time.thread_time_ns()


def _since(t: tuple[int, int]) -> tuple[int, int]:
    now = _clock()
    return now[0] - t[0], now[1] - t[1]


def _prefill(step: Callable[[], object], scheduler: Scheduler, setup: Setup) -> None:
    """Step until every sequence is decoding (one token a step)."""
    for _ in range(10_000):
        if all(r.num_output_tokens > 0 for r in scheduler.running) and scheduler.num_running == setup.num_seqs:
            return
        step()
    raise RuntimeError("the prompts never finished prefilling")


# ---- scheduler + block manager only ------------------------------------------------------------------------
class SchedulerBench:
    def __init__(self, setup: Setup, prefix_caching: bool) -> None:
        bm = BlockManager(setup.num_blocks, setup.block_size, enable_prefix_caching=prefix_caching)
        config = SchedulerConfig(max_num_seqs=setup.num_seqs, max_num_batched_tokens=8192)
        self.setup = setup
        self.scheduler = Scheduler(config, bm, setup.max_model_len)
        self.runner = NullRunner(vocab_size=VOCAB, max_model_len=setup.max_model_len, num_blocks=setup.num_blocks,
                                 block_size=setup.block_size)
        params = SamplingParams(max_tokens=setup.max_tokens, ignore_eos=True, stop=STOP)
        for i, ids in enumerate(prompts(setup)):
            self.scheduler.add_request(Request(f"r{i}", ids, params))
        _prefill(self._step, self.scheduler, setup)
        self.schedule = Samples()
        self.update = Samples()

    def _step(self) -> None:
        so = self.scheduler.schedule()
        self.scheduler.update_from_output(so, self.runner.execute(so))

    def measure_step(self) -> None:
        t = _clock()
        so = self.scheduler.schedule()
        self.schedule.add(*_since(t))
        out = self.runner.execute(so)
        t = _clock()
        self.scheduler.update_from_output(so, out)
        self.update.add(*_since(t))
        assert len(so.chunks) == self.setup.num_seqs and so.num_batched_tokens == self.setup.num_seqs

    def results(self) -> dict[str, dict[str, float]]:
        return {"schedule": self.schedule.summary(), "update": self.update.summary(),
                "sched+update": (self.schedule + self.update).summary()}


# ---- the engine: output processing, then the whole loop ----------------------------------------------------
def _engine(setup: Setup, prefix_caching: bool, model_dir: Path, tokenizer: Any) -> tuple[Any, list[Any]]:
    """A NullRunner engine (as benchmarks.null_model builds it) holding num_seqs streaming requests."""
    from benchmarks.null_model import null_engine

    engine, _ = null_engine(model_dir, max_num_seqs=setup.num_seqs, max_num_batched_tokens=8192,
                            block_size=setup.block_size, enable_prefix_caching=prefix_caching, tokenizer=tokenizer)
    vocab = engine.runner.vocab_size
    params = SamplingParams(max_tokens=setup.max_tokens, ignore_eos=True, stop=STOP)
    handles = [engine.add_request([t % vocab for t in ids], params, stream=True) for ids in prompts(setup)]
    return engine, handles


class OutputBench:
    """Output processing driven step by step on the running loop; the engine's own task is not started."""

    def __init__(self, setup: Setup, prefix_caching: bool, model_dir: Path, tokenizer: Any) -> None:
        self.engine, self.handles = _engine(setup, prefix_caching, model_dir, tokenizer)
        _prefill(lambda: self.engine.outputs.process(self._step()), self.engine.scheduler, setup)
        self.process = Samples()
        self.read = Samples()

    def _step(self) -> ModelRunnerOutput:
        sched = self.engine.scheduler
        so = sched.schedule()
        out = self.engine.runner.execute(so)
        sched.update_from_output(so, out)
        return out

    async def drain(self) -> None:
        for h in self.handles:  # each request has a delta waiting, so none of these suspends
            await h.stream.get()

    async def measure_step(self) -> None:
        out = self._step()
        t = _clock()
        self.engine.outputs.process(out)
        self.process.add(*_since(t))
        t = _clock()
        await self.drain()
        self.read.add(*_since(t))

    def results(self) -> dict[str, dict[str, float]]:
        return {"output processing": self.process.summary(), "stream reads": self.read.summary()}


async def engine_loop(setup: Setup, prefix_caching: bool, model_dir: Path, tokenizer: Any) -> dict[str, float]:
    """Wall time between consecutive decode steps of the real batch loop, streams drained by reader tasks."""
    engine, handles = _engine(setup, prefix_caching, model_dir, tokenizer)
    stamps: list[tuple[int, int]] = []  # (perf_counter_ns, batched tokens) per step
    engine.on_step.append(lambda so, out, elapsed: stamps.append((time.perf_counter_ns(), so.num_batched_tokens)))

    async def read(h: Any) -> None:
        while not (await h.stream.get()).finished:
            pass

    readers = [asyncio.create_task(read(h)) for h in handles]
    await engine.start()
    await asyncio.gather(*readers)
    await engine.stop()
    decode = [t for t, tokens in stamps if tokens == setup.num_seqs]
    loop = Samples()
    for a, b in list(itertools.pairwise(decode))[10:]:  # the first few are warm-up
        loop.wall_ns.append(b - a)
    return loop.summary()


async def bench_engine(setup: Setup, model_dir: Path, tokenizer: Any) -> dict[str, dict[str, Any]]:
    benches = {pc: OutputBench(setup, pc, model_dir, tokenizer) for pc in (True, False)}
    for b in benches.values():
        await b.drain()
    for _ in range(setup.steps):
        for b in benches.values():  # alternate, so that load from other processes hits both alike
            await b.measure_step()
    results: dict[bool, dict[str, Any]] = {}
    for pc, b in benches.items():
        results[pc] = b.results()
        await b.engine.stop()
    for pc in (True, False):
        results[pc]["engine loop"] = await engine_loop(setup, pc, model_dir, tokenizer)
    return {"on" if pc else "off": res for pc, res in results.items()}


# ---- CLI -----------------------------------------------------------------------------------------------------
ROWS = ("schedule", "update", "sched+update", "output processing", "stream reads", "engine loop")


def run(setup: Setup, model_dir: Path | None) -> dict[str, Any]:
    benches = {pc: SchedulerBench(setup, pc) for pc in (True, False)}
    for _ in range(setup.steps):
        for b in benches.values():  # alternate, so that load from other processes hits both alike
            b.measure_step()
    by_pc: dict[str, dict[str, Any]] = {"on" if pc else "off": b.results() for pc, b in benches.items()}
    del benches
    if model_dir is not None:
        from service.engine.tokenizer import Tokenizer

        engine_rows = asyncio.run(bench_engine(setup, model_dir, Tokenizer(str(model_dir))))
        for pc, rows in engine_rows.items():
            by_pc[pc] |= rows
    return {"setup": setup.__dict__ | {"model_dir": str(model_dir) if model_dir else None},
            "prefix_caching": by_pc}


def print_table(results: dict[str, Any]) -> None:
    s = results["setup"]
    print(f"per-step cost, {s['num_seqs']} decoding sequences, prompts {s['min_prompt']}-{s['max_prompt']} tokens "
          f"(log-uniform), block_size {s['block_size']}, {s['steps']} steps")
    print(f"{'prefix caching':<16}{'phase':<19}{'wall median':>12}{'wall p99':>10}{'CPU median':>12}{'CPU p99':>10}"
          "   (ms)")
    for pc, res in results["prefix_caching"].items():
        for row in ROWS:
            if row not in res:
                continue
            r = res[row]
            cpu = f"{'-':>12}{'-':>10}"
            if "median_cpu_ms" in r:
                cpu = f"{r['median_cpu_ms']:>12.3f}{r['p99_cpu_ms']:>10.3f}"
            print(f"{pc:<16}{row:<19}{r['median_wall_ms']:>12.3f}{r['p99_wall_ms']:>10.3f}{cpu}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--model-dir", type=Path, default=Path("models/default"),
                        help="tokenizer for the engine rows (`make model` builds models/default)")
    parser.add_argument("--scheduler-only", action="store_true", help="skip the rows that need the tokenizer")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    model_dir = None if args.scheduler_only else args.model_dir
    if model_dir is not None and not (model_dir / "tokenizer.json").exists():
        print(f"scheduler_overhead: no tokenizer in {model_dir}; run `make model` or pass --scheduler-only",
              file=sys.stderr)
        return 2
    configure_logging("console", "warning")  # the engine's per-second debug lines would interleave the table
    results = run(Setup(num_seqs=args.num_seqs, steps=args.steps), model_dir)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
