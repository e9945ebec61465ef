"""Decode speed of the engine's model step on a CUDA GPU, against the memory-bandwidth roofline.

A decode step must read every weight once (the input embedding excepted: a step reads only its batch's rows),
so no step can beat `weight bytes / HBM bandwidth`. This measures the bandwidth (a large device-to-device copy,
bytes read plus written), then times the scheduler + model runner's decode steps at several batch sizes and
reports each against that floor. The GPU's busy time per step (sum of kernel times from torch's profiler)
says how much of the step is launch and Python overhead rather than memory traffic.

    python -m service.model_builder --preset llama-1b --out models/llama-1b
    python -m benchmarks.gpu_decode --model models/llama-1b --batch-sizes 1,16,64,128 --steps 40
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from service.config import CacheConfig, ModelConfig, SchedulerConfig
from service.engine.block_manager import BlockManager
from service.engine.model_runner import ModelRunner
from service.engine.request import Request
from service.engine.sampling_params import SamplingParams
from service.engine.scheduler import Scheduler


def hbm_bandwidth(device: torch.device, nbytes: int = 2 * 1024**3, repeats: int = 20) -> float:
    """Bytes per second of a device-to-device copy, counting bytes read and written (median of `repeats`)."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / statistics.median(times)


def streamed_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a decode step must read: every parameter except the input embedding table."""
    embed = model.get_input_embeddings().weight  # type: ignore[operator]
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)


def gpu_busy_seconds(fn: Callable[[], object], steps: int, table: bool = False) -> float:
    """Mean kernel time per call of `fn` on the GPU, from torch's profiler; `table` prints the top ops."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    averages = prof.key_averages()
    if table:
        print(averages.table(sort_by="self_cuda_time_total", row_limit=20))
    # Device-side entries only (kernels, copies): an op's CPU-side entry repeats its kernels' time.
    total_us = sum(e.self_device_time_total for e in averages if e.device_type == torch.autograd.DeviceType.CUDA)
    return total_us / 1e6 / steps


def run_batch(runner: ModelRunner, batch: int, prompt_len: int, steps: int, tag: str,
              table: bool = False) -> dict[str, float]:
    """Median step time of `batch` decodes after a `prompt_len` prefill, the GPU's busy time in such a step, and
    the median time of a mixed step: the running decodes plus one newly arrived prompt's prefill (always eager)."""
    mixed_steps = 10
    budget = (batch + 1) * prompt_len + mixed_steps  # the first prefill in one step; a mixed step never chunks
    sched = Scheduler(SchedulerConfig(max_num_seqs=batch + mixed_steps, max_num_batched_tokens=budget),
                      BlockManager(runner.num_blocks, runner.block_size), runner.max_model_len)
    g = torch.Generator().manual_seed(batch)

    def add(i: int) -> None:
        prompt = torch.randint(10, runner.vocab_size - 10, (prompt_len,), generator=g).tolist()
        sched.add_request(Request(f"{tag}-{i}", prompt,
                                  SamplingParams(max_tokens=steps * 3 + 20, temperature=0.0, ignore_eos=True)))

    for i in range(batch):
        add(i)

    def step() -> int:
        out = sched.schedule()
        sched.update_from_output(out, runner.execute(out))
        return out.num_batched_tokens

    assert step() == batch * prompt_len  # the prefill
    for _ in range(5):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        n = step()
        times.append(time.perf_counter() - t0)
        assert n == batch
    busy = gpu_busy_seconds(step, 5, table)
    mixed = []
    for i in range(mixed_steps):
        add(batch + i)
        t0 = time.perf_counter()
        n = step()
        mixed.append(time.perf_counter() - t0)
        assert n == batch + i + prompt_len
    return {"step_s": statistics.median(times), "busy_s": busy, "mixed_s": statistics.median(mixed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/llama-1b")
    parser.add_argument("--batch-sizes", default="1,16,64,128")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--kv-cache-gib", type=float, default=16.0)
    parser.add_argument("--table-batch", type=int, default=None, help="Print the profiler's top ops at this batch.")
    parser.add_argument("--modes", default="graphs,eager",
                        help="graphs: decode steps replayed from CUDA graphs; eager: every step eager.")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    runner = ModelRunner(
        ModelConfig(model=args.model, dtype="auto", device="cuda"),
        CacheConfig(kv_cache_memory_bytes=int(args.kv_cache_gib * 1024**3)),
        SchedulerConfig(max_num_seqs=max(batches)),
        frozenset(),
    )
    bw = hbm_bandwidth(runner.device)
    weights = streamed_weight_bytes(runner.model)
    floor = weights / bw
    params = sum(p.numel() for p in runner.model.parameters())
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e12:.2f} TB/s; model {params / 1e9:.2f}B params "
          f"in {runner.dtype}, {weights / 1e9:.2f} GB streamed per step -> floor {floor * 1e3:.3f} ms/step")
    graphs = runner.decode_graphs
    if graphs is not None:
        print(f"captured {graphs.num_captured} decode graphs in {graphs.capture_seconds:.1f} s")
    rows = []
    for mode in args.modes.split(","):
        runner.decode_graphs = graphs if mode == "graphs" else None
        for b in batches:
            r = run_batch(runner, b, args.prompt_len, args.steps, f"{mode}{b}", table=b == args.table_batch)
            rows.append(f"{mode:>6} {b:>5} {r['step_s'] * 1e3:>8.2f} {r['busy_s'] * 1e3:>11.2f} "
                        f"{b / r['step_s']:>8.0f} {b / floor:>14.0f} {floor / r['step_s']:>6.3f} "
                        f"{r['mixed_s'] * 1e3:>9.2f}")
    print(f"{'mode':>6} {'batch':>5} {'step ms':>8} {'GPU busy ms':>11} {'tok/s':>8} {'roofline tok/s':>14} "
          f"{'ratio':>6} {'mixed ms':>9}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
