"""The metric maths, on plain records: definitions as `vllm bench serve`'s, result keys as its JSON's.

Latency metrics (TTFT, TPOT, ITL, E2EL) are over successful requests only; requests the harness aborted on
purpose count in neither `completed` nor `failed`. TPOT leaves out single-token requests (goodput counts their
TPOT as 0), and a run without streaming has no TTFT, TPOT or ITL at all. Every function here is pure, so it is
tested against hand-written timelines.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from loadtest.client import Outcome, RequestRecord

DEFAULT_PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)
LATENCY_METRICS = ("ttft", "tpot", "itl", "itl_per_token", "e2el", "queue")
GOODPUT_METRICS = ("ttft", "tpot", "e2el")
STREAMING_METRICS = ("ttft", "tpot", "itl", "itl_per_token")  # none of these without streaming


def parse_percentile_metrics(text: str) -> tuple[str, ...]:
    """`--percentile-metrics ttft,tpot,itl,e2el` (vLLM's flag): the metrics whose percentiles are reported."""
    names = tuple(dict.fromkeys(x.strip().lower() for x in text.split(",") if x.strip()))
    unknown = [n for n in names if n not in LATENCY_METRICS]
    if not names or unknown:
        raise ValueError(f"--percentile-metrics takes a comma-separated list of {', '.join(LATENCY_METRICS)}; "
                         f"got {text!r}")
    return names


@dataclass(frozen=True)
class Stats:
    mean: float
    median: float
    std: float
    min: float
    max: float
    percentiles: dict[float, float]
    count: int


def summarize(values: list[float], percentiles: tuple[float, ...] = DEFAULT_PERCENTILES) -> Stats | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    return Stats(float(a.mean()), float(np.median(a)), float(a.std()), float(a.min()), float(a.max()),
                 {p: float(np.percentile(a, p)) for p in percentiles}, len(values))


def percentile_key(p: float) -> str:
    """vLLM's spelling: 99 -> "p99", 99.9 -> "p99.9"."""
    return f"p{int(p)}" if float(p).is_integer() else f"p{p:g}"


@dataclass(frozen=True)
class GoodputSLO:
    """A request is good if it meets every given bound (milliseconds)."""

    bounds_ms: dict[str, float]

    def __post_init__(self) -> None:
        for name, value in self.bounds_ms.items():
            if name not in GOODPUT_METRICS:
                raise ValueError(f"goodput metric {name!r}: expected one of {', '.join(GOODPUT_METRICS)}")
            if not value > 0:
                raise ValueError(f"goodput bound for {name} must be > 0 ms, got {value}")

    @classmethod
    def parse(cls, items: list[str]) -> GoodputSLO:
        bounds: dict[str, float] = {}
        for item in items:
            name, sep, value = item.partition(":")
            if not sep:
                raise ValueError(f"--goodput takes NAME:MS pairs such as ttft:500, got {item!r}")
            try:
                bounds[name.strip().lower()] = float(value)
            except ValueError:
                raise ValueError(f"--goodput {item!r}: {value!r} is not a number of milliseconds") from None
        return cls(bounds)

    @property
    def streaming_metrics(self) -> list[str]:
        """The bounds that only a streamed run can judge: without streaming there is no TTFT or TPOT."""
        return [name for name in self.bounds_ms if name in STREAMING_METRICS]

    def is_good(self, rec: RequestRecord) -> bool:
        tpot = rec.tpot
        if tpot is None and rec.ttft is not None:
            tpot = 0.0  # a single output token: vLLM counts its TPOT as 0 for goodput
        measured = {"ttft": rec.ttft, "tpot": tpot, "e2el": rec.e2el}
        for name, bound in self.bounds_ms.items():
            value = measured[name]
            # No value (a non-streamed request's TTFT) cannot be shown to meet the bound; the CLI refuses such
            # an SLO before the run.
            if value is None or value * 1000.0 > bound:
                return False
        return True


def allocate(total: int, weights: list[int]) -> list[int]:
    """Split `total` tokens over chunks in proportion to `weights` (largest remainder), at least one per chunk
    while there are tokens enough: every content chunk carried something."""
    n = len(weights)
    if n == 0:
        return []
    if total <= n:
        return [1] * total + [0] * (n - total)
    w = [max(x, 0) for x in weights] if any(x > 0 for x in weights) else [1] * n
    spare = total - n  # after the one token each
    exact = [spare * x / sum(w) for x in w]
    out = [1 + int(e) for e in exact]
    by_remainder = sorted(range(n), key=lambda i: (-(exact[i] - int(exact[i])), i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def token_times(rec: RequestRecord) -> list[float]:
    """When each output token arrived, as far as the chunks tell: a chunk carrying k tokens counts k times."""
    out: list[float] = []
    for t, k in zip(rec.chunk_times, rec.chunk_tokens, strict=True):
        out.extend([t] * (1 if k is None else k))
    return out


def tokens_per_bucket(records: list[RequestRecord], t0: float, bucket_s: float = 1.0) -> list[int]:
    """Output tokens of successful requests arriving in each `bucket_s` window from t0."""
    counts: Counter[int] = Counter()
    for rec in records:
        if rec.outcome is Outcome.SUCCESS:
            counts.update(int((t - t0) // bucket_s) for t in token_times(rec))
    if not counts:
        return []
    return [counts.get(i, 0) for i in range(max(counts) + 1)]


def concurrency_steps(records: list[RequestRecord], t0: float) -> list[tuple[float, int]]:
    """(time since t0, requests in flight from then on), at every change."""
    events = sorted([(r.sent - t0, 1) for r in records if r.sent] + [(r.done - t0, -1) for r in records if r.sent],
                    key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    steps: list[tuple[float, int]] = []
    level = 0
    for t, delta in events:
        level += delta
        if steps and steps[-1][0] == t:
            steps[-1] = (t, level)
        else:
            steps.append((t, level))
    return steps


@dataclass(frozen=True)
class BenchmarkMetrics:
    duration: float
    completed: int
    failed: int
    aborted: int
    total_input_tokens: int
    total_output_tokens: int
    good: int | None  # None: no SLOs given
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    error_codes: dict[str, int]
    token_sources: dict[str, int]
    stats: dict[str, Stats | None] = field(default_factory=dict)

    @property
    def request_throughput(self) -> float:
        return self.completed / self.duration if self.duration > 0 else 0.0

    @property
    def output_throughput(self) -> float:
        return self.total_output_tokens / self.duration if self.duration > 0 else 0.0

    @property
    def total_token_throughput(self) -> float:
        return (self.total_input_tokens + self.total_output_tokens) / self.duration if self.duration > 0 else 0.0

    @property
    def request_goodput(self) -> float | None:
        if self.good is None:
            return None
        return self.good / self.duration if self.duration > 0 else 0.0

    @property
    def error_rate(self) -> float:
        finished = self.completed + self.failed
        return self.failed / finished if finished else 0.0

    def to_dict(self, percentiles: tuple[float, ...] = DEFAULT_PERCENTILES,
                percentile_metrics: tuple[str, ...] = LATENCY_METRICS) -> dict[str, object]:
        """vLLM's keys. Mean, median, std, min and max of every latency metric; the percentiles only of
        `percentile_metrics` (vLLM's `--percentile-metrics`)."""
        out: dict[str, object] = {
            "duration": self.duration,
            "completed": self.completed,
            "failed": self.failed,
            "aborted": self.aborted,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "request_goodput": self.request_goodput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "max_output_tokens_per_s": self.max_output_tokens_per_s,
            "max_concurrent_requests": self.max_concurrent_requests,
            "error_rate": self.error_rate,
            "error_codes": dict(self.error_codes),
            "output_token_source": dict(self.token_sources),
        }
        for name in LATENCY_METRICS:
            s = self.stats.get(name)
            out[f"mean_{name}_ms"] = s.mean if s else None
            out[f"median_{name}_ms"] = s.median if s else None
            out[f"std_{name}_ms"] = s.std if s else None
            out[f"min_{name}_ms"] = s.min if s else None
            out[f"max_{name}_ms"] = s.max if s else None
            if name not in percentile_metrics:
                continue
            for p in percentiles:
                out[f"{percentile_key(p)}_{name}_ms"] = s.percentiles.get(p) if s else None
        return out


def compute_metrics(records: list[RequestRecord], duration: float, t0: float,
                    slo: GoodputSLO | None = None, percentiles: tuple[float, ...] = DEFAULT_PERCENTILES,
                    open_loop: bool = True) -> BenchmarkMetrics:
    ok = [r for r in records if r.outcome is Outcome.SUCCESS]
    failed = [r for r in records if r.outcome is Outcome.FAILED]
    ms = 1000.0
    values: dict[str, list[float]] = {
        "ttft": [r.ttft * ms for r in ok if r.ttft is not None],
        "tpot": [t * ms for r in ok if (t := r.tpot) is not None],  # not single-token requests
        "itl": [g * ms for r in ok for g in r.itl],
        "itl_per_token": [g * ms for r in ok for g in r.itl_per_token],
        "e2el": [r.e2el * ms for r in ok],
        # How late each request left against the arrival schedule; a closed loop has no schedule.
        "queue": [(r.sent - r.due) * ms for r in records if r.sent] if open_loop else [],
    }
    buckets = tokens_per_bucket(records, t0)
    steps = concurrency_steps(records, t0)
    return BenchmarkMetrics(
        duration=duration,
        completed=len(ok),
        failed=len(failed),
        aborted=sum(r.outcome is Outcome.ABORTED for r in records),
        total_input_tokens=sum(r.input_tokens for r in ok),
        total_output_tokens=sum(r.output_tokens for r in ok),
        good=sum(slo.is_good(r) for r in ok) if slo is not None else None,
        max_output_tokens_per_s=float(max(buckets, default=0)),
        max_concurrent_requests=max((level for _, level in steps), default=0),
        error_codes=dict(Counter(r.error_code for r in failed)),
        token_sources=dict(Counter(r.token_source.value for r in ok)),
        stats={name: summarize(v, percentiles) for name, v in values.items()},
    )


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
