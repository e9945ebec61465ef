"""The engine's view of one generation: its tokens, its progress and its status.

`Request.status` is the single source of truth. Statuses are ordered so that everything after PREEMPTED is
finished, and each finished status maps to one OpenAI finish reason.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from service.engine.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    # Everything below is finished.
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH = enum.auto()
    FINISHED_ABORTED = enum.auto()
    FINISHED_ERROR = enum.auto()

    @property
    def is_finished(self) -> bool:
        return self > LAST_UNFINISHED  # an int comparison: enum hashing costs more, and this runs per token


LAST_UNFINISHED = RequestStatus.PREEMPTED


class FinishReason(enum.StrEnum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"
    ERROR = "error"


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: FinishReason.STOP,
    RequestStatus.FINISHED_LENGTH: FinishReason.LENGTH,
    RequestStatus.FINISHED_ABORTED: FinishReason.ABORT,
    RequestStatus.FINISHED_ERROR: FinishReason.ERROR,
}


@dataclass(eq=False, slots=True)
class Request:
    """A prompt being generated from. Owned and mutated only on the event-loop thread."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    priority: int = 0
    # echo with logprobs: the runner also returns the prompt tokens' logprobs.
    want_prompt_logprobs: bool = False
    arrival_time: float = field(default_factory=time.monotonic)
    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_preemptions: int = 0
    # Prompt tokens found in the prefix cache at first admission.
    num_cached_tokens: int = 0
    # Why it stopped: the EOS or stop token id, or a stop string. None for length/abort.
    stop_reason: int | str | None = None
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    # Filled in by the scheduler: the index among admissions, used to find the youngest running request.
    admission_seq: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def max_total_tokens(self) -> int:
        """Upper bound on the tokens this request can ever hold in the KV cache."""
        return self.num_prompt_tokens + self.sampling_params.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status > LAST_UNFINISHED

    @property
    def finish_reason(self) -> FinishReason | None:
        return _FINISH_REASONS.get(self.status)

    def token_ids_between(self, start: int, end: int) -> list[int]:
        """The known tokens at positions [start, end): prompt, then output."""
        prompt, n = self.prompt_token_ids, len(self.prompt_token_ids)
        if end <= n:
            return prompt[start:end]
        if start >= n:
            return self.output_token_ids[start - n:end - n]
        return prompt[start:] + self.output_token_ids[:end - n]

    def append_output_token(self, token_id: int, now: float) -> None:
        if self.first_token_time is None:
            self.first_token_time = now
        self.output_token_ids.append(token_id)
