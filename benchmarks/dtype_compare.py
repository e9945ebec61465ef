"""fp32 vs bf16 on this machine: what `--dtype auto` picks, the decode speed of each, and how often greedy
decoding agrees between them.

    python -m benchmarks.dtype_compare [--model models/default] [--prompts 16] [--tokens 32]

Both runs use the engine's own scheduler and model runner (no HTTP), greedy, the same prompts.
"""

from __future__ import annotations

import argparse
import time

import torch

from service.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from service.engine.block_manager import BlockManager
from service.engine.model_runner import ModelRunner
from service.engine.platform import cpu_bf16_speedup, resolve_dtype
from service.engine.request import Request
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import Scheduler


def generate(model: str, dtype: str, prompts: list[list[int]], max_tokens: int) -> tuple[list[list[int]], float]:
    """Greedy outputs of every prompt, batched together, and the mean decode-step time in seconds."""
    cfg = EngineConfig(model=ModelConfig(model=model, dtype=dtype), cache=CacheConfig(),
                       scheduler=SchedulerConfig(max_num_seqs=len(prompts), max_num_batched_tokens=4096))
    runner = ModelRunner(cfg.model, cfg.cache, cfg.scheduler, frozenset())
    sched = Scheduler(cfg.scheduler, BlockManager(runner.num_blocks, runner.block_size), runner.max_model_len)
    requests = [Request(f"r{i}", p, SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
                for i, p in enumerate(prompts)]
    for r in requests:
        sched.add_request(r)
    decode_times = []
    first = True
    while sched.has_unfinished():
        t0 = time.perf_counter()
        out = sched.schedule()
        sched.update_from_output(out, runner.execute(out))
        if not first:
            decode_times.append(time.perf_counter() - t0)
        first = False
    return [r.output_token_ids for r in requests], sum(decode_times) / max(len(decode_times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    speedup = cpu_bf16_speedup()
    auto = resolve_dtype("auto", torch.device("cpu"))
    print(f"bf16/fp32 matmul throughput on this CPU: {speedup:.3f}x -> --dtype auto picks {auto}")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 8000, (60,), generator=g).tolist() for _ in range(args.prompts)]
    fp32, t32 = generate(args.model, "float32", prompts, args.tokens)
    bf16, t16 = generate(args.model, "bfloat16", prompts, args.tokens)
    same_seq = sum(a == b for a, b in zip(fp32, bf16, strict=True))
    prefix = [next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
              for a, b in zip(fp32, bf16, strict=True)]
    tokens_agree = sum(x == y for a, b in zip(fp32, bf16, strict=True) for x, y in zip(a, b, strict=True))
    total = args.prompts * args.tokens
    n = args.prompts
    print(f"decode step, {n} sequences: fp32 {t32 * 1000:.1f} ms ({n / t32:.0f} tok/s), "
          f"bf16 {t16 * 1000:.1f} ms ({n / t16:.1f} tok/s): bf16 is {t32 / t16:.3f}x the speed of fp32")
    print(f"greedy agreement bf16 vs fp32: {same_seq}/{n} sequences identical; "
          f"{tokens_agree}/{total} tokens equal position by position; "
          f"mean tokens before the first divergence {sum(prefix) / n:.1f} of {args.tokens}")


if __name__ == "__main__":
    main()
