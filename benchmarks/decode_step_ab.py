"""The model runner's decode step with CPU linear layers through prepacked oneDNN weights vs plain MKL GEMMs.

Both runners live in one process and their steps are interleaved, so drift in the machine's speed hits both.

    python -m benchmarks.decode_step_ab [--model models/default] [--seqs 32] [--steps 60]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from service.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from service.engine.block_manager import BlockManager
from service.engine.model_runner import ModelRunner
from service.engine.request import Request
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import Scheduler


def make(model: str, seqs: int, packed: bool) -> tuple[ModelRunner, Scheduler]:
    cfg = EngineConfig(model=ModelConfig(model=model, dtype="float32", packed_linear=packed),
                       cache=CacheConfig(block_size=16),
                       scheduler=SchedulerConfig(max_num_seqs=seqs, max_num_batched_tokens=4096))
    runner = ModelRunner(cfg.model, cfg.cache, cfg.scheduler, frozenset())
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
    args = parser.parse_args()
    plain, packed = make(args.model, args.seqs, False), make(args.model, args.seqs, True)
    prefill = step(plain), step(packed)
    print(f"prefill {args.seqs} x 60 tokens: MKL {prefill[0] * 1e3:.0f} ms, packed {prefill[1] * 1e3:.0f} ms "
          "(wide inputs take the plain GEMM in both)")
    a, b = [], []
    for _ in range(args.steps):
        a.append(step(plain))
        b.append(step(packed))
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"decode step, {args.seqs} sequences, median of {args.steps}: MKL {ma * 1e3:.1f} ms, "
          f"prepacked oneDNN {mb * 1e3:.1f} ms: {ma / mb:.2f}x")


if __name__ == "__main__":
    main()
