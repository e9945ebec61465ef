"""Prometheus metrics, named as vLLM names them (with our `hfserve:` prefix), so dashboards map over.

Counters and gauges are read from the engine's own plain counters at scrape time (the engine imports no
prometheus); histograms are observed through the engine's hooks as requests and steps finish.

Every observation happens on the event-loop thread, once per request or step, so histograms are plain bucket
counts (LoopHistogram: a bisect and two additions, no lock) that prometheus_client renders at scrape time.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from service.embeddings.batcher import EmbeddingBatcher
from service.engine.async_engine import AsyncEngine
from service.engine.engine_stats import REJECTION_REASONS
from service.engine.output_stream import RequestResult
from service.engine.outputs import ModelRunnerOutput, SchedulerOutput
from service.engine.request import FinishReason, Request

PREFIX = "hfserve:"
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0, 160.0)
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    def __init__(self, engine: AsyncEngine, embeddings: EmbeddingBatcher | None) -> None:
        self.engine = engine
        self.embeddings = embeddings

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        e, s = self.engine, self.engine.stats
        sched, bm = e.scheduler, e.block_manager
        yield _gauge("num_requests_running", "Requests in the running batch.", sched.num_running)
        yield _gauge("num_requests_waiting", "Requests waiting to be scheduled.", sched.num_waiting)
        yield _gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", bm.usage)
        yield _gauge("num_live_requests", "Requests accepted and not yet resolved (their futures and streams).",
                     e.num_live)
        yield _gauge("engine_healthy", "1 while the engine's batch loop is alive.", 1.0 if e.is_alive else 0.0)
        yield _counter("num_preemptions", "Requests preempted (recomputed later).", sched.num_preemptions_total)
        yield _counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", bm.stats.queries)
        yield _counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", bm.stats.hits)
        yield _counter("prompt_tokens", "Prompt tokens of finished requests.", s.prompt_tokens)
        yield _counter("generation_tokens", "Tokens generated.", s.generation_tokens)
        yield _counter("num_client_disconnects", "Requests aborted because the client went away.",
                       s.client_disconnects)
        yield _counter("engine_step_failures", "Model steps that raised.", s.step_failures)
        yield _counter("step_idle_gap_seconds", "Model idle time between consecutive steps, summed.",
                       s.step_gap_total_s)
        yield _counter("step_idle_gaps", "Consecutive step pairs measured for step_idle_gap_seconds.", s.step_gaps)
        # Every label value from the first scrape on, at 0 until it happens (as vLLM does), so that a rate() or an
        # alert on a reason works before its first occurrence.
        yield _labelled_counter("request_success", "Finished requests by finish reason.", "finished_reason",
                                {**dict.fromkeys(FinishReason, 0), **s.requests_finished})
        yield _labelled_counter("num_requests_rejected", "Requests refused at admission, by reason.", "reason",
                                {**dict.fromkeys(REJECTION_REASONS, 0), **s.requests_rejected})
        if self.embeddings is not None:
            yield _gauge("embedding_queue_length", "Embedding inputs waiting for a batch.",
                         self.embeddings.queue_len)
            yield _counter("embedding_inputs", "Inputs embedded.", self.embeddings.stats.inputs)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _labelled_counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


class LoopHistogram:
    """A Prometheus histogram observed from one thread only (the event loop): no lock, a bisect per value."""

    def __init__(self, name: str, doc: str, buckets: tuple[float, ...]) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"{name}: buckets must be strictly increasing")
        self.name = name
        self.doc = doc
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bound >= value: Prometheus's `le`
        self.sum += value

    def family(self) -> HistogramMetricFamily:
        cumulative, buckets = 0, []
        for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        return HistogramMetricFamily(self.name, self.doc, buckets=buckets, sum_value=self.sum)


class HistogramCollector(Collector):
    def __init__(self, histograms: list[LoopHistogram]) -> None:
        self.histograms = histograms

    def collect(self) -> Iterator[HistogramMetricFamily]:
        for h in self.histograms:
            yield h.family()


class Metrics:
    """One registry per server (not the global one), so tests and embedded uses never collide."""

    def __init__(self, engine: AsyncEngine, embeddings: EmbeddingBatcher | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(engine, embeddings))
        histograms: list[LoopHistogram] = []
        self.registry.register(HistogramCollector(histograms))

        def hist(name: str, doc: str, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> LoopHistogram:
            histograms.append(LoopHistogram(PREFIX + name, doc, buckets))
            return histograms[-1]

        self.ttft = hist("time_to_first_token_seconds", "Arrival to first generated token.")
        self.tpot = hist("time_per_output_token_seconds", "Mean time between output tokens of a request.")
        self.e2e = hist("e2e_request_latency_seconds", "Arrival to finish.")
        self.queue = hist("request_queue_time_seconds", "Arrival to first scheduled.")
        self.iteration_tokens = hist("iteration_tokens_total", "Tokens computed per engine step.", TOKEN_BUCKETS)
        self.step_duration = hist("model_step_duration_seconds", "Wall time of one model step.")
        self.batch_size = hist("batch_size", "Requests in one engine step.", TOKEN_BUCKETS)
        self.embed_batch = hist("embedding_batch_size", "Inputs per embedding batch.", TOKEN_BUCKETS)
        self.embed_latency = hist("embedding_batch_latency_seconds", "Wall time of one embedding batch.")
        engine.on_request_finished.append(self._on_finished)
        engine.on_step.append(self._on_step)
        if embeddings is not None:
            embeddings.on_batch.append(self._on_embedding_batch)

    def _on_finished(self, request: Request, result: RequestResult) -> None:
        self.e2e.observe(result.e2e_s)
        if result.queue_time_s is not None:
            self.queue.observe(result.queue_time_s)
        if result.ttft_s is not None:
            self.ttft.observe(result.ttft_s)
            n = len(result.token_ids)
            if n > 1:
                self.tpot.observe((result.e2e_s - result.ttft_s) / (n - 1))

    def _on_step(self, sched: SchedulerOutput, out: ModelRunnerOutput, seconds: float) -> None:
        self.iteration_tokens.observe(sched.num_batched_tokens)
        self.step_duration.observe(seconds)
        self.batch_size.observe(len(sched.chunks))

    def _on_embedding_batch(self, size: int, seconds: float) -> None:
        self.embed_batch.observe(size)
        self.embed_latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
