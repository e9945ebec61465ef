"""Attention over the paged KV cache, registered in transformers' attention-function registry.

Any model whose attention layers dispatch through `ALL_ATTENTION_FUNCTIONS` (Llama, Mistral, Qwen2 and most
decoder-only models in transformers) runs on our cache once loaded with `attn_implementation=ATTENTION_NAME`.
Each step is one forward over a packed batch `[1, T]`: first `num_decodes` single-token decodes, then the
prefill chunks, each a contiguous span. Per layer the function:

  1. writes the step's new K/V into the cache at `slot_mapping`;
  2. decodes: one batched matmul-softmax-matmul over every decode's context, with padding past each context
     length masked out. The context is read in place from the decode mirror (decode_mirror.py) when the
     runner keeps one, or else gathered block by block from the paged cache;
  3. prefills: a first chunk attends to itself causally; a later chunk gathers its earlier blocks too.

Scores follow the layer's own rule (`ScoreRule`): its scaling, sliding window, logit soft-capping (Gemma 2) and
attention sinks (gpt-oss), as transformers passes them to the attention call.

The step's metadata travels as the `paged_metadata` keyword of the model's forward, which transformers passes
through to every attention call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PretrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from service.engine.decode_mirror import DecodeKVMirror, RowFill
from service.engine.kv_cache import KVCache
from service.errors import StartupError

ATTENTION_NAME = "hfserve_paged"


@dataclass
class PrefillSpan:
    token_start: int  # first index in the packed batch
    token_end: int
    position: int  # absolute position of the first token (tokens before it are already cached)
    # Blocks covering positions [0, position + n); only needed when position > 0.
    block_ids: torch.Tensor | None = None


@dataclass
class MirrorDecode:
    """Decodes read from the mirror: rows 0..num_rows-1, each decode at its request's row."""

    mirror: DecodeKVMirror
    num_rows: int
    length: int  # keys attended per row (the longest context, padded)
    write_index: torch.Tensor  # [num_decodes * kv_heads], see DecodeKVMirror.flat_index
    context_lens: torch.Tensor  # [num_rows]
    mask: torch.Tensor  # [num_rows, length], additive
    # None when decode i sits at row i for every i (the usual case); else the row of each decode.
    rows: torch.Tensor | None = None
    # Rows new this step, copied from the paged cache at each layer after that layer's writes.
    fills: list[RowFill] = field(default_factory=list)


@dataclass
class GatherDecode:
    """Decodes read by gathering their blocks from the paged cache."""

    block_ids: torch.Tensor  # [num_decodes, max_blocks]
    context_lens: torch.Tensor  # [num_decodes]
    mask: torch.Tensor  # [num_decodes, max_blocks * block_size], additive


@dataclass(frozen=True, slots=True)
class ScoreRule:
    """How one layer turns q·k into attention weights."""

    scale: float
    window: int | None = None  # sliding window: a query sees only the last `window` keys, itself included
    softcap: float | None = None  # scores become softcap * tanh(scores / softcap), before the mask
    # One logit per query head that joins each softmax without a value: it only takes probability mass.
    sinks: torch.Tensor | None = None

    @property
    def plain(self) -> bool:
        """Nothing that SDPA cannot do itself."""
        return self.softcap is None and self.sinks is None


@dataclass
class AttentionMetadata:
    kv_cache: KVCache
    slot_mapping: torch.Tensor  # [T]
    num_decodes: int = 0
    decode: MirrorDecode | GatherDecode | None = None
    prefills: list[PrefillSpan] = field(default_factory=list)


def score_dtype(dtype: torch.dtype) -> torch.dtype:
    # Softmax in at least fp32: bf16/fp16 scores lose the small differences that decide the distribution.
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def decode_length_mask(lengths: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive [n, width]: 0 for key positions below each length, -inf past it."""
    past = torch.arange(width, device=lengths.device)[None, :] >= lengths[:, None]
    return torch.zeros(past.shape, dtype=dtype, device=lengths.device).masked_fill_(past, float("-inf"))


def _window_mask(q_pos: torch.Tensor, k_len: int, window: int | None) -> torch.Tensor:
    """Boolean [len(q_pos), k_len]: key j is visible to a query at position p iff p - window < j <= p."""
    k_pos = torch.arange(k_len, device=q_pos.device)
    visible = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        visible &= k_pos[None, :] > q_pos[:, None] - window
    return visible


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, rule: ScoreRule,
            sinks: torch.Tensor | None = None) -> torch.Tensor:
    """q [..., G, D] against k/v [..., L, D] with an additive mask broadcastable to [..., G, L].

    `sinks`: the rule's sinks shaped to broadcast against [..., G, 1] (the caller knows its head layout)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).to(score_dtype(q.dtype))
    scores.mul_(rule.scale)
    if rule.softcap is not None:
        scores = torch.tanh(scores.div_(rule.softcap)).mul_(rule.softcap)
    scores.add_(mask)
    if sinks is None:
        probs = torch.softmax(scores, dim=-1)
    else:
        with_sinks = torch.cat([scores, sinks.to(scores.dtype).expand(*scores.shape[:-1], 1)], dim=-1)
        probs = torch.softmax(with_sinks, dim=-1)[..., :-1]
    return torch.matmul(probs.to(v.dtype), v)


def _with_window(mask: torch.Tensor, lengths: torch.Tensor, window: int | None) -> torch.Tensor:
    """Add a sliding window to a decode mask of shape [n, L] (keys older than `window` become -inf)."""
    if window is None:
        return mask
    too_old = torch.arange(mask.shape[-1], device=mask.device)[None, :] <= (lengths - 1 - window)[:, None]
    return mask.masked_fill(too_old, float("-inf"))


def _decode_mirror(meta: AttentionMetadata, d: MirrorDecode, layer: int, q: torch.Tensor, key: torch.Tensor,
                   value: torch.Tensor, rule: ScoreRule) -> torch.Tensor:
    """q: [H, n, D], key/value: [KVH, n, D] (the decodes' new tokens) -> [n, H, D]. Runs after the step's
    writes to the paged cache at this layer, which new rows' contexts may include."""
    h, n, dim = q.shape
    kvh = key.shape[0]
    for todo in d.fills:
        d.mirror.fill(layer, meta.kv_cache, todo)
    d.mirror.write(layer, d.write_index, key, value)
    qg = q.view(kvh, h // kvh, n, dim).permute(2, 0, 1, 3)  # [n, KVH, G, D]: head h reads KV head h // G
    if d.rows is not None:
        full = qg.new_zeros(d.num_rows, kvh, h // kvh, dim)
        full[d.rows] = qg
        qg = full
    k, v = d.mirror.view(layer, d.num_rows, d.length)
    mask = _with_window(d.mask, d.context_lens, rule.window)[:, None, None, :]
    sinks = None if rule.sinks is None else rule.sinks.view(kvh, h // kvh, 1)
    out = _attend(qg, k, v, mask, rule, sinks)  # [rows, KVH, G, D]
    if d.rows is not None:
        out = out[d.rows]
    return out.reshape(n, h, dim)


def _decode_gather(meta: AttentionMetadata, d: GatherDecode, layer: int, q: torch.Tensor,
                   rule: ScoreRule) -> torch.Tensor:
    """q: [H, n, D] -> [n, H, D], reading each decode's blocks out of the paged cache."""
    h, n, dim = q.shape
    k_ctx, v_ctx = meta.kv_cache.gather(layer, d.block_ids)
    kvh = k_ctx.shape[0]
    k_ctx = k_ctx.view(kvh, n, -1, dim)
    v_ctx = v_ctx.view(kvh, n, -1, dim)
    qg = q.view(kvh, h // kvh, n, dim).transpose(1, 2)  # [KVH, n, G, D]
    mask = _with_window(d.mask, d.context_lens, rule.window)[None, :, None, :]
    sinks = None if rule.sinks is None else rule.sinks.view(kvh, 1, h // kvh, 1)
    out = _attend(qg, k_ctx, v_ctx, mask, rule, sinks)  # [KVH, n, G, D]
    return out.permute(1, 0, 2, 3).reshape(n, h, dim)


def _prefill(
    meta: AttentionMetadata,
    layer: int,
    span: PrefillSpan,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    rule: ScoreRule,
) -> torch.Tensor:
    """One prefill chunk; returns [n, H, D]."""
    s, e = span.token_start, span.token_end
    n = e - s
    q = query[:, :, s:e]
    window = rule.window
    if span.position == 0:
        k, v = key[:, :, s:e], value[:, :, s:e]
        if rule.plain and (window is None or n <= window):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=rule.scale, enable_gqa=True)
            return out[0].transpose(0, 1)
        mask = _window_mask(torch.arange(n, device=q.device), n, window)
    else:
        assert span.block_ids is not None
        context_len = span.position + n
        k_ctx, v_ctx = meta.kv_cache.gather(layer, span.block_ids)
        k, v = k_ctx[None, :, :context_len], v_ctx[None, :, :context_len]
        q_pos = torch.arange(span.position, context_len, device=q.device)
        mask = _window_mask(q_pos, context_len, window)
    if not rule.plain:
        return _prefill_by_rule(q, k, v, mask, rule)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=rule.scale, enable_gqa=True)
    return out[0].transpose(0, 1)


def _prefill_by_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                     rule: ScoreRule) -> torch.Tensor:
    """A prefill chunk whose scores need what SDPA lacks (soft-capping, sinks). q [1, H, n, D], k/v [1, KVH, L, D],
    visible: boolean [n, L]. Returns [n, H, D]."""
    _, h, n, d = q.shape
    kvh = k.shape[1]
    qg = q[0].view(kvh, h // kvh, n, d)  # [KVH, G, n, D]: head h reads KV head h // G
    mask = torch.zeros(visible.shape, dtype=score_dtype(q.dtype), device=q.device).masked_fill_(~visible,
                                                                                                float("-inf"))
    sinks = None if rule.sinks is None else rule.sinks.view(kvh, h // kvh, 1, 1)
    out = _attend(qg, k[0, :, None], v[0, :, None], mask, rule, sinks)  # [KVH, G, n, D]
    return out.view(h, n, d).transpose(0, 1)


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query [1, H, T, D], key/value [1, KVH, T, D] -> ([1, T, H, D], None)."""
    meta: AttentionMetadata | None = kwargs.get("paged_metadata")
    if meta is None:
        raise RuntimeError(f"{ATTENTION_NAME} attention needs `paged_metadata`; run the model through ModelRunner")
    layer: int = module.layer_idx  # type: ignore[assignment]
    rule = ScoreRule(scale=scaling if scaling is not None else query.shape[-1] ** -0.5,
                     window=kwargs.get("sliding_window"), softcap=kwargs.get("softcap"), sinks=kwargs.get("s_aux"))

    meta.kv_cache.write(layer, meta.slot_mapping, key[0], value[0])
    _, h, t, d = query.shape
    out = query.new_empty(t, h, d)
    nd = meta.num_decodes
    if isinstance(meta.decode, MirrorDecode):
        out[:nd] = _decode_mirror(meta, meta.decode, layer, query[0, :, :nd], key[0, :, :nd], value[0, :, :nd],
                                  rule)
    elif isinstance(meta.decode, GatherDecode):
        out[:nd] = _decode_gather(meta, meta.decode, layer, query[0, :, :nd], rule)
    for span in meta.prefills:
        out[span.token_start : span.token_end] = _prefill(meta, layer, span, query, key, value, rule)
    return out.unsqueeze(0), None


class UnsupportedModelError(StartupError):
    """The checkpoint's architecture cannot run on the paged KV cache."""


def require_attention_interface(config: PretrainedConfig) -> None:
    """Refuse, before any weight is loaded, a model whose layers compute attention themselves instead of
    calling transformers' attention interface (its class says so with `_supports_attention_backend`)."""
    model_class: Any = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    if model_class is None:
        return  # not a causal LM transformers knows: loading it fails with transformers' own message
    if not getattr(model_class, "_supports_attention_backend", False):
        raise UnsupportedModelError(
            f"{model_class.__name__} computes attention in its own code rather than through transformers' "
            f"attention interface, so it cannot run on hfserve's paged KV cache")


def register() -> None:
    """Make ATTENTION_NAME known to transformers. Idempotent.

    No mask function is registered with it on purpose: transformers then skips building a causal mask, and the
    masks come from the step's metadata instead.
    """
    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
