"""Where and in what precision the model runs: `--device auto` and `--dtype auto` resolved here."""

from __future__ import annotations

import functools
import time

import torch

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def configure_cuda_attention() -> None:
    """Keep torch's SDPA off its cuDNN backend. That backend builds a plan for every new input shape (measured
    on an H100 with torch 2.11: ~2.7 ms per attention call, 60 ms of a 22-layer step), and prefill shapes are
    rarely repeated in serving; the flash and memory-efficient backends need no plan."""
    torch.backends.cuda.enable_cudnn_sdp(False)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: on CUDA bf16 (fp16 where the GPU lacks bf16); on the CPU bf16 only if it measures at least 1.5x
    fp32's matmul speed, else fp32."""
    if name != "auto":
        return _DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_bf16_speedup() >= 1.5 else torch.float32


@functools.cache
def cpu_bf16_speedup() -> float:
    """Measured bf16/fp32 matmul throughput ratio on this CPU.

    CPU flags are not enough: virtual machines often hide avx512_bf16/AMX, and without them torch falls back to
    a bf16 path hundreds of times slower than fp32. A few milliseconds of measurement settle it.
    """

    def rate(dtype: torch.dtype) -> float:
        a = torch.randn(256, 256).to(dtype)
        b = torch.randn(256, 256).to(dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
        return 1.0 / best

    return rate(torch.bfloat16) / rate(torch.float32)
