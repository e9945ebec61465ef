"""Attention over the paged KV cache, registered in transformers' attention-function registry.

Any model whose attention layers dispatch through `ALL_ATTENTION_FUNCTIONS` (Llama, Mistral, Qwen2 and most
decoder-only models in transformers) runs on our cache once loaded with `attn_implementation=ATTENTION_NAME`.
Each step is one forward over a packed batch `[1, T]`: first `num_decodes` single-token decodes, then the
prefill chunks, each a contiguous span. Per layer the function:

  1. writes the step's new K/V into the cache at `slot_mapping`;
  2. decodes: gathers each decode's blocks ([kv_heads, n, L, D]) and runs one batched matmul-softmax-matmul,
     with padding past each context length masked out;
  3. prefills: a first chunk attends to itself causally; a later chunk gathers its earlier blocks too.

The step's metadata travels as the `paged_metadata` keyword of the model's forward, which transformers passes
through to every attention call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from service.engine.kv_cache import KVCache

ATTENTION_NAME = "hfserve_paged"


@dataclass
class PrefillSpan:
    token_start: int  # first index in the packed batch
    token_end: int
    position: int  # absolute position of the first token (tokens before it are already cached)
    # Blocks covering positions [0, position + n); only needed when position > 0.
    block_ids: torch.Tensor | None = None


@dataclass
class AttentionMetadata:
    kv_cache: KVCache
    slot_mapping: torch.Tensor  # [T]
    num_decodes: int = 0
    decode_block_ids: torch.Tensor | None = None  # [num_decodes, max_blocks]
    decode_context_lens: torch.Tensor | None = None  # [num_decodes]
    decode_mask: torch.Tensor | None = None  # [num_decodes, 1, max_blocks * block_size], additive
    prefills: list[PrefillSpan] = field(default_factory=list)


def _score_dtype(dtype: torch.dtype) -> torch.dtype:
    # Softmax in at least fp32: bf16/fp16 scores lose the small differences that decide the distribution.
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _window_mask(q_pos: torch.Tensor, k_len: int, window: int | None) -> torch.Tensor:
    """Boolean [len(q_pos), k_len]: key j is visible to a query at position p iff p - window < j <= p."""
    k_pos = torch.arange(k_len, device=q_pos.device)
    visible = k_pos[None, :] <= q_pos[:, None]
    if window is not None:
        visible &= k_pos[None, :] > q_pos[:, None] - window
    return visible


def _decode(
    meta: AttentionMetadata, layer: int, q: torch.Tensor, scaling: float, window: int | None
) -> torch.Tensor:
    """q: [H, n, D] -> [n, H, D]."""
    assert meta.decode_block_ids is not None
    assert meta.decode_mask is not None
    h, n, d = q.shape
    k_ctx, v_ctx = meta.kv_cache.gather(layer, meta.decode_block_ids)
    kvh = k_ctx.shape[0]
    k_ctx = k_ctx.view(kvh, n, -1, d)
    v_ctx = v_ctx.view(kvh, n, -1, d)
    qg = q.view(kvh, h // kvh, n, d).transpose(1, 2)  # [KVH, n, G, D]: head h reads KV head h // G
    scores = torch.matmul(qg, k_ctx.transpose(-1, -2)).to(_score_dtype(q.dtype))
    scores.mul_(scaling).add_(meta.decode_mask.unsqueeze(0))
    if window is not None:
        assert meta.decode_context_lens is not None
        lengths = meta.decode_context_lens
        too_old = torch.arange(scores.shape[-1], device=q.device)[None, :] <= (lengths[:, None] - 1 - window)
        scores.masked_fill_(too_old[None, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(v_ctx.dtype)
    out = torch.matmul(probs, v_ctx)  # [KVH, n, G, D]
    return out.permute(1, 0, 2, 3).reshape(n, h, d)


def _prefill(
    meta: AttentionMetadata,
    layer: int,
    span: PrefillSpan,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    window: int | None,
) -> torch.Tensor:
    """One prefill chunk; returns [n, H, D]."""
    s, e = span.token_start, span.token_end
    n = e - s
    q = query[:, :, s:e]
    if span.position == 0:
        k, v = key[:, :, s:e], value[:, :, s:e]
        if window is None or n <= window:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
            return out[0].transpose(0, 1)
        mask = _window_mask(torch.arange(n, device=q.device), n, window)
    else:
        assert span.block_ids is not None
        context_len = span.position + n
        k_ctx, v_ctx = meta.kv_cache.gather(layer, span.block_ids)
        k, v = k_ctx[None, :, :context_len], v_ctx[None, :, :context_len]
        q_pos = torch.arange(span.position, context_len, device=q.device)
        mask = _window_mask(q_pos, context_len, window)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=True)
    return out[0].transpose(0, 1)


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
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"{ATTENTION_NAME} attention supports neither logit soft-capping nor sinks")
    layer: int = module.layer_idx  # type: ignore[assignment]
    window: int | None = kwargs.get("sliding_window")
    head_dim = query.shape[-1]
    scale = scaling if scaling is not None else head_dim**-0.5

    meta.kv_cache.write(layer, meta.slot_mapping, key[0], value[0])
    _, h, t, d = query.shape
    out = query.new_empty(t, h, d)
    nd = meta.num_decodes
    if nd:
        out[:nd] = _decode(meta, layer, query[0, :, :nd], scale, window)
    for span in meta.prefills:
        out[span.token_start : span.token_end] = _prefill(meta, layer, span, query, key, value, scale, window)
    return out.unsqueeze(0), None


def register() -> None:
    """Make ATTENTION_NAME known to transformers. Idempotent.

    No mask function is registered with it on purpose: transformers then skips building a causal mask, and the
    masks come from the step's metadata instead.
    """
    AttentionInterface.register(ATTENTION_NAME, paged_attention_forward)
