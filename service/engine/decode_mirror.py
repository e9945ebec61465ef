"""A dense copy of the KV of decoding requests, so that decode attention reads K/V where they lie.

Why: on a CPU, gathering every decoding request's blocks out of the paged cache costs more than the
attention itself, at every layer of every step. The mirror keeps one row per decoding request:

    per layer K (and V): [rows, kv_heads, capacity, head_dim]
    row r = one request; positions 0..len(r)-1 hold its keys, in order; past that, stale or zero

A request gets a row when it starts decoding, filled once from the paged cache, and each decode step writes
its new token to both the paged cache and its row. The fill happens inside the step, layer by layer, after the
step's own writes: a request admitted with a prefix-cache hit may decode in the very step that writes the
blocks it hit (another request's prefill), so copying before the forward would read them unwritten.

Rows are kept dense, 0..n-1: when a request leaves, the last row moves into its place. Decodes are packed in
row order, so attention is one batched matmul over a strided view, with no copy. The paged cache stays the
source of truth (prefill, preemption, prefix cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from service.engine.kv_cache import KVCache, KVCacheSpec

ROW_GROWTH = 8
LEN_GROWTH = 128


@dataclass(frozen=True, slots=True)
class RowFill:
    """A new row's context still to be copied from the paged cache: `length` tokens from `block_ids`."""

    row: int
    block_ids: torch.Tensor
    length: int


class DecodeKVMirror:
    def __init__(self, spec: KVCacheSpec, max_rows: int, max_len: int, memory_limit_bytes: int) -> None:
        self.spec = spec
        self.max_rows = max_rows
        self.max_len = max_len
        self.memory_limit_bytes = memory_limit_bytes
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.cap_rows = 0
        self.cap_len = 0
        self.rows: dict[str, int] = {}  # request id -> row
        self._owners: list[str] = []  # row -> request id
        self._lengths: list[int] = []  # row -> tokens held

    @property
    def num_rows(self) -> int:
        return len(self._owners)

    def _bytes_for(self, rows: int, length: int) -> int:
        return rows * length * self.spec.bytes_per_token

    def ensure_capacity(self, rows: int, length: int) -> bool:
        """Grow to hold `rows` rows of `length` tokens; False if that would pass the memory limit."""
        if rows <= self.cap_rows and length <= self.cap_len:
            return True
        new_rows = min(max(rows, self.cap_rows + ROW_GROWTH, self.cap_rows * 2), self.max_rows)
        new_len = min(max(-(-length // LEN_GROWTH) * LEN_GROWTH, self.cap_len * 2), self.max_len)
        new_rows, new_len = max(new_rows, rows), max(new_len, length)
        if self._bytes_for(new_rows, new_len) > self.memory_limit_bytes:
            return False
        s = self.spec
        shape = (new_rows, s.num_kv_heads, new_len, s.head_dim)
        for store in (self.keys, self.values):
            for layer in range(s.num_layers):
                grown = torch.zeros(shape, dtype=s.dtype, device=s.device)
                if store and self.num_rows:
                    held = max(self._lengths)
                    grown[: self.num_rows, :, :held] = store[layer][: self.num_rows, :, :held]
                if len(store) > layer:
                    store[layer] = grown
                else:
                    store.append(grown)
        self.cap_rows, self.cap_len = new_rows, new_len
        return True

    def assign(self, request_id: str, cache: KVCache, block_ids: list[int] | tuple[int, ...],
               length: int) -> RowFill | None:
        """Give the request the next row; returns what must be copied into it from the paged cache (its first
        `length` tokens), layer by layer with fill(), or None if there is nothing to copy."""
        row = self.num_rows
        self.rows[request_id] = row
        self._owners.append(request_id)
        self._lengths.append(length)
        if not length:
            return None
        blocks = torch.tensor(block_ids[: -(-length // cache.block_size)], dtype=torch.long, device=self.spec.device)
        return RowFill(row, blocks, length)

    def fill(self, layer: int, cache: KVCache, todo: RowFill) -> None:
        """Copy one layer of a new row's context from the paged cache (after this step wrote that layer)."""
        k, v = cache.gather(layer, todo.block_ids)
        self.keys[layer][todo.row, :, : todo.length] = k[:, : todo.length]
        self.values[layer][todo.row, :, : todo.length] = v[:, : todo.length]

    def set_length(self, row: int, length: int) -> None:
        self._lengths[row] = length

    def release(self, request_id: str) -> None:
        """Drop a request's row; the last row moves into the hole so rows stay 0..n-1."""
        row = self.rows.pop(request_id, None)
        if row is None:
            return
        last = self.num_rows - 1
        if row != last:
            moved = self._owners[last]
            held = self._lengths[last]
            for store in (self.keys, self.values):
                for t in store:
                    t[row, :, :held] = t[last, :, :held]
            self._owners[row] = moved
            self._lengths[row] = held
            self.rows[moved] = row
        self._owners.pop()
        self._lengths.pop()

    def clear(self) -> None:
        self.rows.clear()
        self._owners.clear()
        self._lengths.clear()

    def length(self, row: int) -> int:
        return self._lengths[row]

    def write(self, layer: int, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store decode tokens' K/V ([kv_heads, n, D]) at flat `index` ([n * kv_heads])."""
        h, d = self.spec.num_kv_heads, self.spec.head_dim
        flat = (self.cap_rows * h * self.cap_len, d)
        self.keys[layer].view(flat).index_copy_(0, index, keys.transpose(0, 1).reshape(-1, d))
        self.values[layer].view(flat).index_copy_(0, index, values.transpose(0, 1).reshape(-1, d))

    def flat_index(self, rows: list[int], positions: list[int]) -> torch.Tensor:
        """Where each (row, position) lands, for every KV head, in the order write() expects."""
        h, cap = self.spec.num_kv_heads, self.cap_len
        r = torch.tensor(rows, dtype=torch.long, device=self.spec.device)[:, None]
        p = torch.tensor(positions, dtype=torch.long, device=self.spec.device)[:, None]
        heads = torch.arange(h, device=self.spec.device)[None, :]
        return ((r * h + heads) * cap + p).reshape(-1)

    def view(self, layer: int, rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, kv_heads, length, D] strided views; batched matmul reads them in place."""
        return self.keys[layer][:rows, :, :length], self.values[layer][:rows, :, :length]
