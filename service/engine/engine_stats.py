"""Plain counters the engine keeps about itself; the metrics endpoint and the tests read them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from service.engine.outputs import SchedulerOutput

# The reasons counted by count_rejected: a 4xx for bad input, a 429, a request_timeout that fired.
REJECTION_REASONS = ("invalid", "overloaded", "timeout")


@dataclass(slots=True)
class EngineStats:
    """Updated on the event-loop thread only."""

    steps: int = 0
    step_failures: int = 0
    requests_finished: dict[str, int] = field(default_factory=dict)  # finish reason -> count
    requests_rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    prompt_tokens: int = 0
    generation_tokens: int = 0
    client_disconnects: int = 0
    last_step_time_s: float = 0.0
    last_step_tokens: int = 0
    last_step_batch_size: int = 0
    # Model idle time between consecutive steps (previous step returned -> next one submitted).
    step_gaps: int = 0
    step_gap_total_s: float = 0.0

    def count_finished(self, reason: str) -> None:
        self.requests_finished[reason] = self.requests_finished.get(reason, 0) + 1

    def count_rejected(self, reason: str) -> None:
        self.requests_rejected[reason] = self.requests_rejected.get(reason, 0) + 1

    def record_gap(self, seconds: float) -> None:
        self.step_gaps += 1
        self.step_gap_total_s += max(seconds, 0.0)

    @property
    def mean_step_gap_s(self) -> float:
        return self.step_gap_total_s / self.step_gaps if self.step_gaps else 0.0


class StepWindow:
    """Aggregates steps between two debug log lines, so debug logging never floods."""

    INTERVAL_S = 1.0

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._start = time.monotonic()
        self._steps = 0
        self._tokens = 0
        self._busy_s = 0.0

    def add(self, sched: SchedulerOutput, elapsed: float) -> None:
        self._steps += 1
        self._tokens += sched.num_batched_tokens
        self._busy_s += elapsed

    def due(self) -> bool:
        return time.monotonic() - self._start >= self.INTERVAL_S

    def flush(self) -> dict[str, float]:
        window = time.monotonic() - self._start
        summary = {"steps": self._steps, "tokens": self._tokens, "window_s": round(window, 3),
                   "busy_frac": round(self._busy_s / window, 3) if window else 0.0}
        self._reset()
        return summary
