"""Linear layers with weights prepacked for oneDNN, for CPU decode steps.

A decode step multiplies a few dozen rows by every weight matrix. At that size MKL's GEMM spends much of its
time repacking the weight on every call; oneDNN with a weight reordered once at load skips that (measured
here: ~15-40% faster per layer at 32 rows, ~2x on the vocabulary projection). For wide inputs (long prefill
chunks) the plain GEMM is as fast or faster, so each call picks by its row count. The original weight is kept
for that path, which doubles the memory of the weights: the price of the faster decode.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

# Row counts up to this use the packed weight; wider inputs use the plain GEMM.
PACKED_MAX_ROWS = 128
# oneDNN keeps a primitive (with its scratch memory) per distinct row count and weight shape; padding the rows
# up to a multiple of this bounds them to PACKED_MAX_ROWS / ROW_BUCKET per shape (measured over the benchmark
# model's five weight shapes and every count 1..128: 369 MiB of RSS unbucketed, 55 MiB in buckets of 8).
# Decode batches of a multiple of 8 pay nothing; others compute at most 7 padding rows.
ROW_BUCKET = 8
# The batch size oneDNN is told to expect when it lays out the weight (a hint; any row count works).
PACK_HINT_ROWS = 32


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_HINT_ROWS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > PACKED_MAX_ROWS:
            return nn.functional.linear(x, self.weight, self.bias)
        pad = -rows % ROW_BUCKET
        if pad == 0:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        flat = nn.functional.pad(x.reshape(rows, self.in_features), (0, 0, 0, pad))
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return out[:rows].view(*x.shape[:-1], self.out_features)


def packing_supported(device: torch.device, dtype: torch.dtype) -> bool:
    return (
        device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and _cpu_can_pack(dtype)
    )


@functools.cache
def _cpu_can_pack(dtype: torch.dtype) -> bool:
    """oneDNN's bf16 path needs CPU features (AVX512-BF16 or AVX-NE-CONVERT) that some machines lack: ask it."""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype), 1)
    except RuntimeError:
        return False
    return True


def pack_linear_layers(model: nn.Module) -> int:
    """Swap every nn.Linear of `model` for a PackedLinear in place; returns how many were swapped."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear(child))
                swapped += 1
    return swapped
