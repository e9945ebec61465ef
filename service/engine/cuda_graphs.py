"""CUDA graphs of pure-decode steps, so that a decode step costs one graph launch instead of a thousand kernels.

On a GPU an eager decode step of a ~1B model is bound by Python and kernel launches, not by the GPU: most of
the step the GPU waits (benchmarks/gpu_decode.py). A graph records the whole forward once and replays it.

A graph fixes every shape, so steps are padded into buckets:
  - the batch, up to the next capture size (`capture_sizes`; larger batches run eagerly);
  - the context, up to the next power of two in blocks (decode attention reads `blocks * block_size` keys,
    masked past each request's length).

Padding rows write their K/V into a scratch block that the block manager never hands out, read only that
block, and their logits are dropped. All inputs of a step go to the GPU as one copy into a static buffer that
each graph reads at fixed offsets; the logits come back in one static buffer shared by all graphs.

Every bucket is captured at start-up (`capture_all`, largest first, in one memory pool), so that no request
waits on a capture. With `capture=False` the same padded, static-buffer forward runs eagerly, and buckets are
made on first use: that is how the CPU test suite checks the padding and bucketing that the graphs replay.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable

import structlog
import torch

from service.engine.attention import AttentionMetadata, GatherDecode, decode_length_mask
from service.engine.kv_cache import KVCache

log = structlog.get_logger(__name__)

# Batch sizes captured by default (those above max_num_seqs are dropped; max_num_seqs itself is added).
DEFAULT_CAPTURE_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def capture_sizes(max_num_seqs: int) -> tuple[int, ...]:
    sizes = {s for s in DEFAULT_CAPTURE_SIZES if s <= max_num_seqs}
    sizes.add(min(max_num_seqs, DEFAULT_CAPTURE_SIZES[-1]))
    return tuple(sorted(sizes))


def block_buckets(max_blocks: int) -> tuple[int, ...]:
    """Powers of two below `max_blocks`, then `max_blocks` itself."""
    buckets = []
    b = 1
    while b < max_blocks:
        buckets.append(b)
        b *= 2
    buckets.append(max_blocks)
    return tuple(buckets)


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv_cache: KVCache, scratch_block: int, max_blocks: int,
                 max_batch: int, score_dtype: torch.dtype, capture: bool) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size
        self.scratch_block = scratch_block
        self.sizes = capture_sizes(max_batch)
        self.blocks = block_buckets(max_blocks)
        self.score_dtype = score_dtype
        self.capture = capture
        device = kv_cache.spec.device
        largest, widest = self.sizes[-1], self.blocks[-1]
        # Per row: token, position, slot, context length, then the block table.
        self._inputs = torch.zeros(largest * (4 + widest), dtype=torch.long, device=device)
        # Made by the first forward (never under capture), in the shape and dtype the model's logits come in.
        self._logits: torch.Tensor | None = None
        self._replays: dict[tuple[int, int], Callable[[], None]] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self.capture_seconds = 0.0

    @property
    def num_captured(self) -> int:
        return len(self._replays)

    def bucket(self, batch: int, blocks: int) -> tuple[int, int] | None:
        """The (batch, blocks) bucket a step pads into, or None when it is larger than every bucket."""
        i, j = bisect.bisect_left(self.sizes, batch), bisect.bisect_left(self.blocks, blocks)
        if i == len(self.sizes) or j == len(self.blocks):
            return None
        return self.sizes[i], self.blocks[j]

    def capture_all(self) -> bool:
        """Capture every bucket, largest first. Padding rows only: the captures' warm-up runs write to the
        scratch block alone. False if a capture failed (out of memory, an operation that cannot be captured):
        the caller then drops the graphs and runs every step eagerly."""
        t0 = time.perf_counter()
        try:
            for b in reversed(self.sizes):
                for nblk in reversed(self.blocks):
                    self._fill(b, nblk, [], [], [], [])
                    self._replays[(b, nblk)] = self._make_replay(b, nblk)
        except RuntimeError:  # torch.OutOfMemoryError included
            log.exception("cuda_graph_capture_failed", captured=len(self._replays))
            self._replays.clear()
            torch.cuda.empty_cache()
            return False
        self.capture_seconds = time.perf_counter() - t0
        log.info("cuda_graphs_captured", graphs=len(self._replays), batch_sizes=self.sizes,
                 context_blocks=self.blocks, seconds=round(self.capture_seconds, 2))
        return True

    def run(self, bucket: tuple[int, int], tokens: list[int], positions: list[int], slots: list[int],
            tables: list[list[int]]) -> torch.Tensor:
        """Logits [len(tokens), vocab] of one decode step, padded into `bucket`."""
        b, nblk = bucket
        self._fill(b, nblk, tokens, positions, slots, tables)
        replay = self._replays.get(bucket)
        if replay is None:  # only without capture: buckets are then made on first use
            replay = self._replays[bucket] = self._make_replay(b, nblk)
        replay()
        assert self._logits is not None
        return self._logits[: len(tokens)]

    def _fill(self, b: int, nblk: int, tokens: list[int], positions: list[int], slots: list[int],
              tables: list[list[int]]) -> None:
        """Copy a step's inputs, padded to `b` rows of `nblk` blocks, into the static input buffer."""
        pad = b - len(tokens)
        scratch_slot = self.scratch_block * self.block_size
        values = tokens + [0] * pad
        values += positions + [0] * pad
        values += slots + [scratch_slot] * pad
        values += [p + 1 for p in positions] + [1] * pad
        for table in tables:
            values += table[:nblk]
            values += [self.scratch_block] * (nblk - len(table))
        values += [self.scratch_block] * (nblk * pad)
        self._inputs[: len(values)].copy_(torch.tensor(values, dtype=torch.long))

    def _forward(self, b: int, nblk: int) -> None:
        """The padded decode forward over the static buffers (what a graph records)."""
        inp = self._inputs
        lens = inp[3 * b : 4 * b]
        table = inp[4 * b : 4 * b + b * nblk].view(b, nblk)
        width = nblk * self.block_size
        meta = AttentionMetadata(
            self.kv_cache, inp[2 * b : 3 * b], num_decodes=b,
            decode=GatherDecode(block_ids=table, context_lens=lens,
                                mask=decode_length_mask(lens, width, self.score_dtype)),
        )
        out = self.model(input_ids=inp[:b].view(1, b), position_ids=inp[b : 2 * b].view(1, b), use_cache=False,
                         logits_to_keep=0, paged_metadata=meta)
        logits = out.logits[0]
        if self._logits is None:
            self._logits = logits.new_empty(self.sizes[-1], logits.shape[-1])
        self._logits[:b].copy_(logits)

    def _make_replay(self, b: int, nblk: int) -> Callable[[], None]:
        if not self.capture:
            return lambda: self._forward(b, nblk)
        # Warm up on a side stream (lazy initialisation must not happen during capture), then record. The
        # inputs already hold this step's values (or padding alone): the warm-up writes K/V only where the
        # step itself writes it.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._forward(b, nblk)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            self._forward(b, nblk)
        log.debug("cuda_graph_captured", batch=b, blocks=nblk, total=len(self._replays) + 1)
        return graph.replay
