"""Injected client faults (`--abort-fraction`) and the check that the server shrugged them off.

A chosen share of requests disconnect mid-stream after a random number of content chunks. Afterwards the
server must still be serving: every request sent after the first disconnect that was not itself aborted must
have succeeded, a fresh probe request must succeed, `/health` (if the server has one) must say 200, and, if
`/health` reports running/waiting counts (as hfserve's does), they must drain to zero: aborted requests
that keep generating or keep their slots are the "zombie" bug other servers shipped.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass

import aiohttp
import orjson

from loadtest.client import Outcome, RequestRecord, send_request
from loadtest.config import TargetConfig

DRAIN_TIMEOUT_S = 15.0


class AbortPlan:
    """Which requests disconnect, and after how many chunks. Seeded; independent of the arrival draws."""

    def __init__(self, fraction: float, seed: int, num_requests: int | None) -> None:
        self.fraction = fraction
        self._rng = random.Random(seed ^ 0x5EED)
        self._chosen: set[int] | None = None
        if num_requests is not None and fraction > 0:
            # An exact share when the count is known; a coin per request in a timed run.
            self._chosen = set(self._rng.sample(range(num_requests), round(fraction * num_requests)))

    def abort_after(self, index: int, max_tokens: int) -> int | None:
        if self.fraction <= 0:
            return None
        chosen = index in self._chosen if self._chosen is not None else self._rng.random() < self.fraction
        if not chosen:
            return None
        return self._rng.randint(1, max(max_tokens - 1, 1))


@dataclass(frozen=True)
class FaultReport:
    aborted: int
    sent_after_first_abort: int
    failed_after_first_abort: int
    probe_ok: bool
    probe_error: str
    health_status: int | None  # None: the server has no /health
    drained_after_s: float | None  # None: the server does not report running/waiting
    passed: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


async def _health(session: aiohttp.ClientSession, target: TargetConfig) -> tuple[int | None, dict[str, object]]:
    try:
        async with session.get(target.url("/health"), headers=target.http_headers(),
                               timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status == 404:
                return None, {}
            body = await resp.read()
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = {}
            return resp.status, parsed if isinstance(parsed, dict) else {}
    except (aiohttp.ClientError, TimeoutError):
        return 0, {}


async def _wait_drained(session: aiohttp.ClientSession, target: TargetConfig) -> tuple[int | None, float | None,
                                                                                       bool]:
    """(last /health status, seconds until nothing ran or waited, whether it drained)."""
    start = time.perf_counter()
    while True:
        status, body = await _health(session, target)
        if "running" not in body:
            return status, None, True
        if body.get("running") == 0 and body.get("waiting", 0) == 0:
            return status, time.perf_counter() - start, True
        if time.perf_counter() - start > DRAIN_TIMEOUT_S:
            return status, None, False
        await asyncio.sleep(0.2)


async def check_server(session: aiohttp.ClientSession, target: TargetConfig, model: str,
                       records: list[RequestRecord], probe_prompt: str) -> FaultReport:
    aborted = [r for r in records if r.outcome is Outcome.ABORTED]
    first_abort = min((r.done for r in aborted), default=None)
    after = [r for r in records if first_abort is not None and r.sent > first_abort
             and r.outcome is not Outcome.ABORTED]
    failed_after = sum(r.outcome is Outcome.FAILED for r in after)
    status, drained_s, drained = await _wait_drained(session, target)
    probe = await send_request(session, target, model, RequestRecord(-1, probe_prompt, 0, 4))
    probe_ok = probe.outcome is Outcome.SUCCESS
    passed = probe_ok and failed_after == 0 and status in (None, 200) and drained
    return FaultReport(
        aborted=len(aborted),
        sent_after_first_abort=len(after),
        failed_after_first_abort=failed_after,
        probe_ok=probe_ok,
        probe_error=probe.error if not probe_ok else "",
        health_status=status,
        drained_after_s=drained_s,
        passed=passed,
    )
