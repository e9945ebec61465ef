"""The model runner's decode step under two ways of running the CPU linear layers, interleaved in one process so
that drift in the machine's speed hits both:

- `mkl`: plain GEMMs (torch's default);
- `alone`: each layer's weight prepacked for oneDNN (service/engine/packed_linear.py);
- `shared`: the same, and layers that read the same input (q/k/v, gate/up) share one GEMM: what the server runs.

    python -m benchmarks.decode_step_ab [--model models/default] [--seqs 32] [--steps 60] [--a mkl] [--b shared]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from service.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from service.engine.block_manager import BlockManager
from service.engine.model_runner import ModelRunner
from service.engine.packed_linear import pack_linear_layers, shared_input_groups
from service.engine.request import Request
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import Scheduler

VARIANTS = ("mkl", "alone", "shared")


def make(model: str, seqs: int, variant: str) -> tuple[ModelRunner, Scheduler]:
    cfg = EngineConfig(model=ModelConfig(model=model, dtype="float32", packed_linear=False),
                       cache=CacheConfig(block_size=16),
                       scheduler=SchedulerConfig(max_num_seqs=seqs, max_num_batched_tokens=4096))
    runner = ModelRunner(cfg.model, cfg.cache, cfg.scheduler, frozenset())
    if variant != "mkl":
        pack_linear_layers(runner.model, shared_input_groups(runner.model) if variant == "shared" else ())
    sched = Scheduler(cfg.scheduler, BlockManager(runner.num_blocks, runner.block_size), runner.max_model_len)
    g = torch.Generator().manual_seed(0)
    for i in range(seqs):
        prompt = torch.randint(10, 8000, (60,), generator=g).tolist()
        sched.add_request(Request(f"r{i}", prompt, SamplingParams(max_tokens=1000, temperature=0.0,
                                                                  ignore_eos=True)))
    return runner, sched


def step(pair: tuple[ModelRunner, Scheduler]) -> float:
    runner, sched = pair
    t0 = time.perf_counter()
    out = sched.schedule()
    sched.update_from_output(out, runner.execute(out))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--seqs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--a", choices=VARIANTS, default="mkl")
    parser.add_argument("--b", choices=VARIANTS, default="shared")
    args = parser.parse_args()
    a_pair, b_pair = make(args.model, args.seqs, args.a), make(args.model, args.seqs, args.b)
    prefill = step(a_pair), step(b_pair)
    print(f"prefill {args.seqs} x 60 tokens: {args.a} {prefill[0] * 1e3:.0f} ms, {args.b} {prefill[1] * 1e3:.0f} ms "
          "(wide inputs take the plain GEMM in every variant)")
    a, b = [], []
    for _ in range(args.steps):
        a.append(step(a_pair))
        b.append(step(b_pair))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"decode step, {args.seqs} sequences, median of {args.steps}: {args.a} {ma * 1e3:.1f} ms, "
          f"{args.b} {mb * 1e3:.1f} ms: {ma / mb:.3f}x")


if __name__ == "__main__":
    main()
