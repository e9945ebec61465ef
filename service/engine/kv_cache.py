"""The paged KV cache tensors. Bookkeeping (which block belongs to whom) is in block_manager.py.

Per layer, K and V are each one tensor laid out head-major:

    [num_kv_heads, num_blocks * block_size, head_dim]      slot = block_id * block_size + offset

Head-major makes a block of one head a contiguous `block_size * head_dim` run, so gathering a request's
blocks is one `index_select` of contiguous chunks, and the gathered context comes out as
[num_kv_heads, tokens, head_dim] ready for a batched matmul with no further copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVCacheSpec:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def bytes_per_token(self) -> int:
        elem = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem


class KVCache:
    def __init__(self, spec: KVCacheSpec, num_blocks: int, block_size: int) -> None:
        self.spec = spec
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (spec.num_kv_heads, num_blocks * block_size, spec.head_dim)
        # Zeroed, so that masked-out padding never holds NaN (0 * NaN would poison the output).
        self.keys = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]
        self.values = [torch.zeros(shape, dtype=spec.dtype, device=spec.device) for _ in range(spec.num_layers)]

    def write(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store new tokens' K/V ([num_kv_heads, tokens, head_dim]) at `slots` ([tokens])."""
        self.keys[layer].index_copy_(1, slots, keys)
        self.values[layer].index_copy_(1, slots, values)

    def gather(self, layer: int, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of the given blocks (any shape of ids), flattened to [num_kv_heads, len(ids) * block_size, D]."""
        flat = block_ids.reshape(-1)
        h, d, bs = self.spec.num_kv_heads, self.spec.head_dim, self.block_size
        k = self.keys[layer].view(h, self.num_blocks, bs * d).index_select(1, flat)
        v = self.values[layer].view(h, self.num_blocks, bs * d).index_select(1, flat)
        return k.view(h, -1, d), v.view(h, -1, d)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
