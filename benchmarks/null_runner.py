"""A model runner that costs nothing: every sampling chunk gets its token at once, so whatever time a benchmark
measures around it is the server's own overhead (scheduling, bookkeeping, detokenization, HTTP).

The token is a pure function of the position it is sampled at, so the runner keeps no per-request state and
its output is predictable in tests:

    token sampled after positions [0, p)  =  token_ids[p % len(token_ids)]

Plain Python: no torch, no tokenizer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from service.engine.outputs import ModelRunnerOutput, SchedulerOutput


class NullRunner:
    """Satisfies the engine's `Runner` protocol. `token_ids` defaults to the whole vocabulary."""

    def __init__(self, *, vocab_size: int, max_model_len: int = 2048, num_blocks: int = 8192,
                 block_size: int = 16, token_ids: Sequence[int] | None = None) -> None:
        ids = tuple(token_ids) if token_ids is not None else tuple(range(vocab_size))
        if not ids:
            raise ValueError("token_ids must not be empty")
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.token_ids = ids
        self.steps = 0

    def token_at(self, position: int) -> int:
        """The token this runner samples to follow `position` known tokens."""
        return self.token_ids[position % len(self.token_ids)]

    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self.steps += 1
        ids = self.token_ids
        n = len(ids)
        request_ids = []
        tokens = []
        for chunk in sched.chunks:
            if chunk.sample:
                request_ids.append(chunk.request_id)
                tokens.append(ids[(chunk.start + chunk.num_tokens) % n])
        return ModelRunnerOutput(sched.step_id, tuple(request_ids), tuple(tokens), (None,) * len(tokens), {},
                                 finished_at=time.monotonic())
