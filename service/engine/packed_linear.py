"""Linear layers with weights prepacked for oneDNN, for CPU decode steps.

A decode step multiplies a few dozen rows by every weight matrix. At that size MKL's GEMM spends much of its
time repacking the weight on every call; oneDNN with a weight reordered once at load skips that (measured
here: ~15-40% faster per layer at 32 rows, ~2x on the vocabulary projection). For wide inputs (long prefill
chunks) the plain GEMM is as fast or faster, so each call picks by its row count. The original weight is kept
for that path, which doubles the memory of the weights: the price of the faster decode.

Layers that the model always calls on the same input tensor (a Llama layer's q/k/v projections, its MLP's gate
and up projections) share one packed GEMM over their concatenated weights: the first of them to see an input
computes every member's output, the others take their slice. Found by tracing one small forward
(`shared_input_groups`). A wider GEMM runs faster per row at decode sizes (measured here at 32 rows: q/k/v and
gate/up 857 µs fused against 1,031 µs apart, per layer), and each slice is bit-for-bit the member's own GEMM.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

# Row counts up to this use the packed weight; wider inputs use the plain GEMM.
PACKED_MAX_ROWS = 128
# oneDNN keeps a primitive (with its scratch memory) per distinct row count and weight shape; padding the rows
# up to a multiple of this bounds them to PACKED_MAX_ROWS / ROW_BUCKET per shape (measured over the benchmark
# model's five weight shapes and every count 1..128: 369 MiB of RSS unbucketed, 55 MiB in buckets of 8).
# Decode batches of a multiple of 8 pay nothing; others compute at most 7 padding rows.
ROW_BUCKET = 8
# The batch size oneDNN is told to expect when it lays out the weight (a hint; any row count works).
PACK_HINT_ROWS = 32
# Token ids of the forward that finds layers sharing an input.
_TRACE_TOKENS = 8


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_HINT_ROWS)


def _packed_gemm(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, rows: int) -> torch.Tensor:
    """x [rows, in] times a packed weight -> [rows, out], the rows padded up to a whole bucket for oneDNN."""
    pad = -rows % ROW_BUCKET
    if pad:
        x = nn.functional.pad(x, (0, 0, 0, pad))
    out = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return out[:rows] if pad else out


class SharedInputGemm:
    """One packed GEMM for linear layers that read the same input (a layer alone is a group of one); each
    member's output is a column slice."""

    def __init__(self, linears: Sequence[nn.Linear]) -> None:
        weight = torch.cat([lin.weight.detach() for lin in linears])
        biases = [lin.bias for lin in linears]
        self.bias: torch.Tensor | None = None
        if any(b is not None for b in biases):
            self.bias = torch.cat([b.detach() if b is not None else weight.new_zeros(lin.out_features)
                                   for b, lin in zip(biases, linears, strict=True)])
        self.packed = _pack(weight)
        self.sizes = [lin.out_features for lin in linears]
        # The input whose outputs are held, and the members that have not taken theirs yet.
        self._input: torch.Tensor | None = None
        self._outputs: tuple[torch.Tensor, ...] = ()
        self._pending: set[int] = set()

    def output(self, member: int, x: torch.Tensor, rows: int) -> torch.Tensor:
        """Member `member`'s output for the module input x [..., in] ([rows, in] flattened): taken from the held
        outputs when another member already computed them for this very tensor object, else one GEMM for every
        member. (Inference tensors keep no version counter, so a write into x between the members' calls would
        go unseen; the traced models never do that.)"""
        if x is self._input and member in self._pending:
            self._pending.discard(member)
            out = self._outputs[member]
            if not self._pending:
                self._input, self._outputs = None, ()
            return out
        out = _packed_gemm(x.reshape(rows, x.shape[-1]), self.packed, self.bias, rows)
        if len(self.sizes) == 1:
            return out
        outputs = out.split(self.sizes, dim=-1)
        self._input, self._outputs = x, outputs
        self._pending = set(range(len(self.sizes))) - {member}
        return outputs[member]


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, shared: tuple[SharedInputGemm, int] | None = None) -> None:
        """`shared`: the GEMM this layer is a member of, and its index there; else a GEMM of its own."""
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.gemm, self.member = shared if shared is not None else (SharedInputGemm([linear]), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if rows > PACKED_MAX_ROWS:
            return nn.functional.linear(x, self.weight, self.bias)
        return self.gemm.output(self.member, x, rows).view(*x.shape[:-1], self.out_features)


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


def shared_input_groups(model: nn.Module) -> list[list[nn.Linear]]:
    """The model's linear layers grouped by the input tensor they read, as one small forward calls them: groups of
    two or more layers (in call order), each layer in at most one group. Empty when the trace fails.

    The forward runs with transformers' SDPA attention (the paged attention needs a step's metadata), then the
    model's own attention implementation is put back."""
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    by_input: dict[int, list[nn.Linear]] = {}
    inputs: list[torch.Tensor] = []  # kept alive through the trace, so that no two inputs share an id

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        inputs.append(args[0])
        by_input.setdefault(id(args[0]), []).append(module)  # type: ignore[arg-type]

    handles = [m.register_forward_pre_hook(record) for m in linears]
    config = getattr(model, "config", None)
    original = getattr(config, "_attn_implementation", None)
    try:
        if original is not None:
            model.set_attn_implementation("sdpa")  # type: ignore[operator]
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(input_ids=torch.arange(_TRACE_TOKENS, device=device)[None] % config.vocab_size,  # type: ignore[union-attr]
                  use_cache=False)
    except Exception as exc:  # noqa: BLE001 -- the trace only finds an optimisation: without it, no fusion
        log.info("linear layers sharing an input not traced (%s): each packs its own weight", exc)
        return []
    finally:
        for handle in handles:
            handle.remove()
        if original is not None:
            model.set_attn_implementation(original)  # type: ignore[operator]
    groups = [ms for ms in by_input.values() if len(ms) > 1]
    count = Counter(id(m) for ms in groups for m in ms)
    return [ms for ms in groups if all(count[id(m)] == 1 for m in ms)]


def pack_linear_layers(model: nn.Module, groups: Sequence[Sequence[nn.Linear]] = ()) -> int:
    """Swap every nn.Linear of `model` for a PackedLinear in place, the layers of each of `groups` (see
    shared_input_groups) sharing one GEMM; returns how many layers were swapped."""
    shared: dict[int, tuple[SharedInputGemm, int]] = {}
    for group in groups:
        gemm = SharedInputGemm(group)
        shared.update((id(lin), (gemm, i)) for i, lin in enumerate(group))
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear(child, shared.get(id(child))))
                swapped += 1
    return swapped
