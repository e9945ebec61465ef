"""The paged KV cache's bookkeeping: fixed-size blocks, a free list, per-request block tables and, optionally,
prefix caching. Plain Python; the tensors themselves live in `kv_cache.py`.

A request's block table maps its token positions onto physical blocks (block_size = 4 here):

    positions   0 1 2 3 | 4 5 6 7 | 8 9
    block table [   7   |    2    |  9  ]      slot of position p = table[p // 4] * 4 + p % 4

With prefix caching, a *full* block is named by a chained digest of its tokens and of every token before it,
so two requests whose prompts share the first k full blocks share those physical blocks (ref_cnt counts the
sharers). A block whose ref_cnt falls to 0 goes to the tail of the free queue but keeps its digest, so a later
request can still hit it; allocation takes blocks from the head, which evicts the least recently used.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

from service.engine.request import Request


@dataclass(eq=False, slots=True)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    digest: bytes | None = None


@dataclass(slots=True)
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up
    hits: int = 0  # of which found cached


def block_digest(parent: bytes | None, token_ids: list[int]) -> bytes:
    """Digest of a full block given its parent's digest. Collision-resistant, so a hit is always a true hit."""
    h = hashlib.blake2b(parent or b"", digest_size=16)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


@dataclass
class BlockManager:
    num_blocks: int
    block_size: int
    enable_prefix_caching: bool = False
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)

    def __post_init__(self) -> None:
        if self.num_blocks < 1 or self.block_size < 1:
            raise ValueError(f"num_blocks={self.num_blocks} and block_size={self.block_size} must be >= 1")
        self._blocks = [KVBlock(i) for i in range(self.num_blocks)]
        # Free blocks in eviction order (head = least recently used). Insertion-ordered dict gives O(1)
        # removal when a cached free block is hit again.
        self._free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self._blocks)
        self._cached: dict[bytes, KVBlock] = {}
        self._tables: dict[str, list[KVBlock]] = {}
        self._num_digested: dict[str, int] = {}

    # ---- queries -------------------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live requests (cached-but-free blocks count as free)."""
        return 1.0 - len(self._free) / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_ids(self, request_id: str, start: int = 0) -> list[int]:
        """The request's block table, or its entries from index `start` on."""
        table = self._tables.get(request_id)
        return [b.block_id for b in table[start:]] if table else []

    def num_held_blocks(self, request_id: str) -> int:
        return len(self._tables.get(request_id, ()))

    # ---- prefix cache --------------------------------------------------------------------------------------
    def find_cached_prefix(self, request: Request) -> list[KVBlock]:
        """The longest run of cached full blocks that starts the request's tokens.

        At least one token is always left to compute, so that the step that finishes the prompt yields logits.
        """
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        max_blocks = (request.num_tokens - 1) // bs
        hits: list[KVBlock] = []
        parent: bytes | None = None
        tokens = request.prompt_token_ids + request.output_token_ids
        for i in range(max_blocks):
            parent = block_digest(parent, tokens[i * bs : (i + 1) * bs])
            block = self._cached.get(parent)
            if block is None:
                break
            hits.append(block)
        return hits

    def record_prefix_lookup(self, num_tokens: int, num_hit_blocks: int) -> None:
        """Count one admitted request's lookup (called once per admission, not per attempt)."""
        if self.enable_prefix_caching:
            self.stats.queries += num_tokens
            self.stats.hits += num_hit_blocks * self.block_size

    # ---- allocation ----------------------------------------------------------------------------------------
    def allocate(self, request: Request, num_tokens: int, cached_prefix: list[KVBlock] | None = None) -> bool:
        """Make the request hold enough blocks for `num_tokens` tokens in total.

        `cached_prefix` (only for a request that holds nothing yet) are blocks found by find_cached_prefix;
        they are shared rather than allocated. Returns False, changing nothing, if the free list is too short.
        """
        rid = request.request_id
        table = self._tables.get(rid)
        if table is not None and not cached_prefix:
            return self.grow(request, num_tokens) is not None
        prefix = cached_prefix or []
        if table is None:
            table = []
        elif prefix:
            raise ValueError(f"request {rid} already holds blocks; a cached prefix can only start a table")
        # A cached prefix block that sits in the free queue stops being free once we take it.
        prefix_from_free = sum(1 for b in prefix if b.ref_cnt == 0)
        num_new = self.blocks_needed(num_tokens) - len(table) - len(prefix)
        if num_new + prefix_from_free > len(self._free):
            return False
        for block in prefix:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1
            table.append(block)
        for _ in range(max(num_new, 0)):
            table.append(self._take_free_block())
        self._tables[rid] = table
        return True

    def grow(self, request: Request, num_tokens: int) -> tuple[int, ...] | None:
        """For a request that already holds blocks: hold enough for `num_tokens`. Returns the ids of the blocks
        added (usually none), or None, changing nothing, if the free list is too short."""
        table = self._tables[request.request_id]
        missing = -(-num_tokens // self.block_size) - len(table)
        if missing <= 0:
            return ()
        if missing > len(self._free):
            return None
        added = [self._take_free_block() for _ in range(missing)]
        table.extend(added)
        return tuple(b.block_id for b in added)

    def _take_free_block(self) -> KVBlock:
        _, block = self._free.popitem(last=False)
        if block.digest is not None:
            # Evict: the block's contents are about to be overwritten.
            if self._cached.get(block.digest) is block:
                del self._cached[block.digest]
            block.digest = None
        block.ref_cnt = 1
        return block

    def cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Register the digests of the request's blocks that `num_tokens` known tokens fill completely.

        Called when a step is scheduled: the step writes those tokens' K/V before any later step can read them.
        """
        if not self.enable_prefix_caching:
            return
        rid = request.request_id
        bs = self.block_size
        done = self._num_digested.get(rid, 0)
        if num_tokens // bs <= done:
            return  # no block filled up since the last call (most decode steps)
        table = self._tables[rid]
        full = min(num_tokens // bs, len(table))
        parent = table[done - 1].digest if done > 0 else None
        for i in range(done, full):
            block = table[i]
            if block.digest is None:
                block.digest = block_digest(parent, request.token_ids_between(i * bs, (i + 1) * bs))
                self._cached.setdefault(block.digest, block)
            parent = block.digest
        self._num_digested[rid] = full

    def free(self, request_id: str) -> None:
        """Release the request's blocks. Tail blocks are queued first so prefix blocks are evicted last."""
        table = self._tables.pop(request_id, None)
        self._num_digested.pop(request_id, None)
        if not table:
            return
        for block in reversed(table):
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                if block.digest is None:
                    # Nothing to reuse: put it where it is taken first.
                    self._free[block.block_id] = block
                    self._free.move_to_end(block.block_id, last=False)
                else:
                    self._free[block.block_id] = block

    def drop_prefix_cache(self) -> None:
        """Forget every digest. For after a failed step: the scheduler registers the blocks a step fills when it
        schedules it, so that step's blocks are registered but were never written.

        Live requests keep their blocks; their full blocks are registered again, from the first, with correct
        chaining, as they fill more.
        """
        for block in self._blocks:
            block.digest = None
        self._cached.clear()
        self._num_digested.clear()

    def check_invariants(self) -> None:
        """For tests: every block is either free (ref 0) or held, and ref counts match the tables."""
        held: dict[int, int] = {}
        for table in self._tables.values():
            for b in table:
                held[b.block_id] = held.get(b.block_id, 0) + 1
        for b in self._blocks:
            assert b.ref_cnt == held.get(b.block_id, 0), (b.block_id, b.ref_cnt, held.get(b.block_id))
            assert (b.ref_cnt == 0) == (b.block_id in self._free), b.block_id
