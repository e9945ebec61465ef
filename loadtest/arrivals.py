"""When requests are sent: the seeded open-loop arrival process, with an optional rate ramp.

Inter-arrival gaps are drawn from a gamma distribution with shape `burstiness` and mean 1/rate, as in
`vllm bench serve`: shape 1 is a Poisson process (exponential gaps, coefficient of variation 1); a larger
shape spaces requests more evenly (CV = 1/sqrt(shape)), a smaller one makes them burstier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np


class RampStrategy(Enum):
    LINEAR = "linear"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True)
class RampUp:
    """The rate moves from start_rps to end_rps as the run progresses from 0 to 1."""

    strategy: RampStrategy
    start_rps: float
    end_rps: float

    def __post_init__(self) -> None:
        if self.start_rps < 0 or self.end_rps <= 0 or not math.isfinite(self.end_rps):
            raise ValueError(f"ramp-up rates must be finite, start >= 0 and end > 0: "
                             f"start={self.start_rps}, end={self.end_rps}")
        if self.strategy is RampStrategy.EXPONENTIAL and self.start_rps <= 0:
            raise ValueError(f"an exponential ramp-up needs --ramp-up-start-rps > 0, got {self.start_rps}")

    def rate_at(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        if self.strategy is RampStrategy.LINEAR:
            return self.start_rps + (self.end_rps - self.start_rps) * p
        return float(self.start_rps * (self.end_rps / self.start_rps) ** p)


class ArrivalProcess:
    """Draws the gap before each next request. Same seed, same gaps."""

    def __init__(self, rate: float, burstiness: float = 1.0, seed: int = 0, ramp: RampUp | None = None) -> None:
        if burstiness <= 0:
            raise ValueError(f"--burstiness must be > 0, got {burstiness}")
        if rate <= 0:
            raise ValueError(f"--request-rate must be > 0 (inf for all at once), got {rate}")
        self.rate = rate
        self.burstiness = burstiness
        self.ramp = ramp
        self._rng = np.random.default_rng(seed)

    def rate_at(self, progress: float) -> float:
        return self.ramp.rate_at(progress) if self.ramp is not None else self.rate

    def next_interval(self, progress: float = 0.0) -> float:
        """Seconds from the previous arrival to the next, at `progress` (0..1) through the run."""
        rate = self.rate_at(progress)
        if math.isinf(rate):
            return 0.0
        if rate <= 0:
            # A ramp starting at 0 rps: wait as long as the first step of the ramp would.
            rate = self.rate_at(max(progress, 1e-3))
        theta = 1.0 / (rate * self.burstiness)
        return float(self._rng.gamma(shape=self.burstiness, scale=theta))

    def offsets(self, n: int) -> list[float]:
        """Arrival times of n requests, relative to the first (which arrives at 0)."""
        out = [0.0]
        t = 0.0
        for i in range(1, n):
            t += self.next_interval(i / max(n - 1, 1))
            out.append(t)
        return out[:n]
