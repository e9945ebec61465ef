"""The small immutable records that cross stage boundaries: scheduler -> runner -> scheduler.

They hold plain Python values only, so the runner (in its executor thread) never touches a live `Request`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from service.engine.sampling_params import SamplingParams


@dataclass(frozen=True, slots=True)
class NewRequestData:
    """Sent the first time a request is scheduled; the runner keeps its own copy of the tokens from then on."""

    request_id: str
    token_ids: tuple[int, ...]
    sampling_params: SamplingParams
    # How many leading tokens want prompt logprobs (echo with logprobs); 0 for none.
    num_prompt_logprobs: int = 0


@dataclass(slots=True)
class ScheduledChunk:
    """One request's share of a step: compute tokens [start, start + num_tokens).

    Block tables travel as deltas: `new_block_ids` extends the table the runner already holds for the request,
    or replaces it when `reset_blocks` (first admission, or re-admission after preemption). Built every step
    for every running request, so it is a plain slotted class; nothing mutates it after construction.
    """

    request_id: str
    start: int
    num_tokens: int
    new_block_ids: tuple[int, ...]
    reset_blocks: bool
    # True when the chunk reaches the request's last known token, so its logits are sampled.
    sample: bool


@dataclass(frozen=True, slots=True)
class SchedulerOutput:
    step_id: int
    new_requests: tuple[NewRequestData, ...]
    chunks: tuple[ScheduledChunk, ...]
    # Requests that ended since the last step; the runner drops their state.
    finished_request_ids: tuple[str, ...]
    preempted_request_ids: tuple[str, ...]
    num_batched_tokens: int

    @property
    def is_empty(self) -> bool:
        return not self.chunks


@dataclass(frozen=True, slots=True)
class TokenLogprobs:
    """Log-probability of the chosen token and the `k` most likely alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class ModelRunnerOutput:
    step_id: int
    # Parallel tuples, one entry per request that sampled this step.
    request_ids: tuple[str, ...]
    sampled_token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs | None, ...]
    # request_id -> logprobs of prompt tokens computed this step (index 0 of a prompt has none).
    prompt_logprobs: dict[str, list[TokenLogprobs | None]]
    # Wall-clock seconds the forward and sampling took in the runner thread.
    execute_time_s: float = 0.0
    # time.monotonic() when the runner finished the step.
    finished_at: float = field(default_factory=time.monotonic)
