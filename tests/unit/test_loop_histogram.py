"""LoopHistogram renders exactly what prometheus_client's own Histogram renders for the same observations."""

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from service.metrics import LATENCY_BUCKETS, TOKEN_BUCKETS, HistogramCollector, LoopHistogram


@pytest.mark.parametrize("buckets", [LATENCY_BUCKETS, TOKEN_BUCKETS])
def test_exposition_matches_prometheus_client_histogram(buckets: tuple[float, ...]) -> None:
    reference_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h", "doc", buckets=buckets, registry=reference_registry)
    ours = LoopHistogram("h", "doc", buckets)
    ours_registry.register(HistogramCollector([ours]))
    rng = random.Random(0)
    # Values on every bound (the `le` edge), between bounds, and past the last one.
    values = [*buckets, *(rng.expovariate(20 / buckets[-1]) for _ in range(500)), buckets[-1] * 3]
    for v in values:
        reference.observe(v)
        ours.observe(v)
    expected = [line for line in generate_latest(reference_registry).decode().splitlines() if "_created" not in line]
    assert generate_latest(ours_registry).decode().splitlines() == expected


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        LoopHistogram("h", "doc", (1.0, 0.5))
