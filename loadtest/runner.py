"""One benchmark run: a test request, warm-ups, the timed load (arrival schedule + concurrency cap + injected
aborts), then token accounting, metrics and the fault check.

    schedule ─► due ─► [semaphore] ─► sent ─► chunks … ─► done
                 └──── client queue ───┘└──── TTFT ──┘
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from tqdm.auto import tqdm

from loadtest.arrivals import ArrivalProcess
from loadtest.client import Outcome, RequestRecord, TokenSource, send_request
from loadtest.config import LoadConfig, TargetConfig
from loadtest.datasets import SampleRequest
from loadtest.faults import AbortPlan, FaultReport, check_server
from loadtest.metrics import DEFAULT_PERCENTILES, BenchmarkMetrics, GoodputSLO, allocate, compute_metrics
from loadtest.tokens import TokenCounter


class TargetUnusableError(RuntimeError):
    """The initial test request failed: there is no point sending the rest."""


@dataclass
class RunResult:
    load: LoadConfig
    records: list[RequestRecord]
    t0: float
    duration: float
    metrics: BenchmarkMetrics
    fault_report: FaultReport | None
    started_at: str
    finished_at: str


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def _sleep_until(deadline: float) -> None:
    """The loop's timer may fire up to a millisecond early, so sleep again until the deadline has passed."""
    for _ in range(100):
        delay = deadline - time.perf_counter()
        if delay <= 0:
            return
        await asyncio.sleep(delay)


def _record(index: int, sample: SampleRequest) -> RequestRecord:
    return RequestRecord(index, sample.prompt, sample.prompt_len, sample.output_len)


async def _test_and_warm_up(session: aiohttp.ClientSession, target: TargetConfig, model: str, load: LoadConfig,
                            samples: list[SampleRequest]) -> None:
    test = await send_request(session, target, model, _record(-1, samples[0]))
    if test.outcome is not Outcome.SUCCESS:
        raise TargetUnusableError(f"the test request to {target.endpoint_url} failed "
                                  f"({test.error_code}): {test.error}")
    if load.num_warmups:
        width = min(load.max_concurrency or load.num_warmups, load.num_warmups)
        sem = asyncio.Semaphore(width)

        async def one(i: int) -> None:
            async with sem:
                await send_request(session, target, model, _record(-1, samples[i % len(samples)]))

        await asyncio.gather(*(one(i) for i in range(load.num_warmups)))


async def _dispatch(session: aiohttp.ClientSession, target: TargetConfig, model: str, load: LoadConfig,
                    samples: list[SampleRequest], bar: tqdm | None) -> tuple[list[RequestRecord], float]:
    arrivals = ArrivalProcess(load.request_rate, load.burstiness, load.seed, load.ramp_up)
    timed = load.duration_s is not None
    aborts = AbortPlan(load.abort_fraction if target.stream else 0.0, load.seed, None if timed else load.num_prompts)
    sem = asyncio.Semaphore(load.max_concurrency) if load.max_concurrency else None
    records: list[RequestRecord] = []
    tasks: list[asyncio.Task[RequestRecord]] = []
    counts = {o: 0 for o in Outcome}

    async def one(rec: RequestRecord) -> RequestRecord:
        try:
            return await send_request(session, target, model, rec)
        finally:
            if sem is not None:
                sem.release()
            counts[rec.outcome] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ok=counts[Outcome.SUCCESS], failed=counts[Outcome.FAILED],
                                aborted=counts[Outcome.ABORTED], refresh=False)

    t0 = time.perf_counter()
    due = t0
    i = 0
    while timed or i < load.num_prompts:
        if i:
            progress = (due - t0) / load.duration_s if load.duration_s else i / max(load.num_prompts - 1, 1)
            due += arrivals.next_interval(progress)
        if load.duration_s is not None and due - t0 >= load.duration_s:
            break
        await _sleep_until(due)
        if sem is not None:
            await sem.acquire()
            if load.duration_s is not None and time.perf_counter() - t0 >= load.duration_s:
                sem.release()
                break
        sample = samples[i % len(samples)]
        rec = _record(i, sample)
        rec.due = due if load.open_loop else time.perf_counter()
        rec.abort_after = aborts.abort_after(i, sample.output_len)
        records.append(rec)
        tasks.append(asyncio.create_task(one(rec)))
        i += 1
    await asyncio.gather(*tasks)
    return records, t0


async def _count_output_tokens(records: list[RequestRecord], counter: TokenCounter | None) -> None:
    """Fill in output token counts: the server's usage, else the tokenizer, else one per chunk."""
    for rec in records:
        if rec.outcome is not Outcome.SUCCESS:
            rec.output_tokens = sum(k or 1 for k in rec.chunk_tokens)
            continue
        if rec.usage_completion_tokens is not None:
            rec.output_tokens, rec.token_source = rec.usage_completion_tokens, TokenSource.USAGE
        elif counter is not None:
            rec.output_tokens = await counter.count(rec.text, add_special_tokens=False)
            rec.token_source = TokenSource.TOKENIZER
        else:
            rec.output_tokens, rec.token_source = len(rec.chunk_times), TokenSource.CHUNKS
        if all(k is not None for k in rec.chunk_tokens):
            continue
        # The chunks did not say how many tokens each carried: weigh them by their own token counts (a
        # fragment tokenized alone is only an estimate) and scale so that they add up to the total.
        weights = [1] * len(rec.chunk_texts)
        if counter is not None and rec.output_tokens != len(rec.chunk_times):
            weights = [await counter.count(t, add_special_tokens=False) for t in rec.chunk_texts]
        rec.chunk_tokens = list(allocate(rec.output_tokens, weights))


async def run_load(session: aiohttp.ClientSession, target: TargetConfig, model: str, load: LoadConfig,
                   samples: list[SampleRequest], counter: TokenCounter | None, slo: GoodputSLO | None = None,
                   percentiles: tuple[float, ...] = DEFAULT_PERCENTILES, show_progress: bool = True) -> RunResult:
    if not samples:
        raise ValueError("no samples to send")
    await _test_and_warm_up(session, target, model, load, samples)
    started_at = _now_iso()
    total = None if load.duration_s is not None else load.num_prompts
    bar = tqdm(total=total, desc=f"load {load.label}", unit="req", disable=not show_progress, leave=True)
    try:
        records, t0 = await _dispatch(session, target, model, load, samples, bar)
    finally:
        bar.close()
    finished_at = _now_iso()
    duration = max((r.done for r in records), default=t0) - t0
    await _count_output_tokens(records, counter)
    metrics = compute_metrics(records, duration, t0, slo, percentiles, open_loop=load.open_loop)
    fault_report = None
    if load.abort_fraction > 0 and target.stream:
        fault_report = await check_server(session, target, model, records, samples[0].prompt)
    return RunResult(load, records, t0, duration, metrics, fault_report, started_at, finished_at)


def rate_for_json(rate: float) -> float | str:
    return rate if math.isfinite(rate) else "inf"
