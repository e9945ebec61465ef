"""The seeded arrival process: rate, burstiness (coefficient of variation), ramps and determinism."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from loadtest.arrivals import ArrivalProcess, RampStrategy, RampUp

N = 40_000


def gaps(rate: float, burstiness: float, seed: int = 0) -> np.ndarray:
    proc = ArrivalProcess(rate, burstiness, seed)
    return np.array([proc.next_interval() for _ in range(N)])


@pytest.mark.parametrize(("rate", "burstiness"), [(10.0, 1.0), (3.0, 4.0), (50.0, 0.25)])
def test_mean_rate_and_coefficient_of_variation(rate: float, burstiness: float) -> None:
    g = gaps(rate, burstiness)
    assert 1.0 / g.mean() == pytest.approx(rate, rel=0.03)
    cv = g.std() / g.mean()
    assert cv == pytest.approx(1.0 / math.sqrt(burstiness), rel=0.05)  # gamma: CV = 1/sqrt(shape)


def test_poisson_gaps_are_exponential() -> None:
    g = gaps(5.0, 1.0)
    # P(gap > mean) = e^-1 for an exponential distribution
    assert np.mean(g > 0.2) == pytest.approx(math.exp(-1), abs=0.01)


def test_same_seed_same_schedule() -> None:
    a = ArrivalProcess(4.0, 1.0, seed=7).offsets(200)
    b = ArrivalProcess(4.0, 1.0, seed=7).offsets(200)
    c = ArrivalProcess(4.0, 1.0, seed=8).offsets(200)
    assert a == b
    assert a != c
    assert a[0] == 0.0 and all(y >= x for x, y in itertools.pairwise(a))


def test_infinite_rate_sends_everything_at_once() -> None:
    assert ArrivalProcess(math.inf).offsets(5) == [0.0] * 5


def test_linear_ramp_rates() -> None:
    ramp = RampUp(RampStrategy.LINEAR, 2.0, 10.0)
    assert ramp.rate_at(0.0) == 2.0 and ramp.rate_at(0.5) == 6.0 and ramp.rate_at(1.0) == 10.0
    assert ramp.rate_at(1.5) == 10.0  # clamped


def test_exponential_ramp_rates() -> None:
    ramp = RampUp(RampStrategy.EXPONENTIAL, 1.0, 16.0)
    assert ramp.rate_at(0.5) == pytest.approx(4.0)
    assert ramp.rate_at(0.25) == pytest.approx(2.0)


def test_ramped_gaps_follow_the_ramp() -> None:
    proc = ArrivalProcess(1.0, 1.0, seed=3, ramp=RampUp(RampStrategy.LINEAR, 5.0, 50.0))
    early = np.array([proc.next_interval(0.0) for _ in range(N // 4)])
    late = np.array([proc.next_interval(1.0) for _ in range(N // 4)])
    assert 1.0 / early.mean() == pytest.approx(5.0, rel=0.05)
    assert 1.0 / late.mean() == pytest.approx(50.0, rel=0.05)


def test_ramp_from_zero_still_advances() -> None:
    proc = ArrivalProcess(1.0, 1.0, ramp=RampUp(RampStrategy.LINEAR, 0.0, 10.0))
    assert math.isfinite(proc.next_interval(0.0))


@pytest.mark.parametrize(("rate", "burstiness"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_rejects_bad_parameters(rate: float, burstiness: float) -> None:
    with pytest.raises(ValueError):
        ArrivalProcess(rate, burstiness)


def test_exponential_ramp_needs_a_positive_start() -> None:
    with pytest.raises(ValueError, match="start-rps"):
        RampUp(RampStrategy.EXPONENTIAL, 0.0, 5.0)
