"""Soak: mixed normal, aborted and invalid traffic against the real server for SOAK_MINUTES (default 3), then
proof that nothing leaked: no request running or waiting, every KV block free, no live request (future or
stream) left in the engine, an empty embedding queue, a healthy /health, a clean exit on SIGTERM, and RSS growth
under a stated bound. It prints a report (run with -s to see it).

    make soak                                                         # 3 minutes on models/default
    SOAK_MINUTES=0.2 .venv/bin/python -m pytest -q -m slow -s tests/soak   # the same path in ~40 s, tiny model

Model: SOAK_MODEL names the model directory (`make soak` passes models/default, the model `make run` and the
benchmarks serve); unset, the test builds the tiny model into a temporary directory. The default model is the
one whose memory matters in production, and at its real step cost the queue really fills, disconnects really
hit queued and running requests, and deadlines really expire mid-generation. The tiny model sends about three
times as many requests per minute, which suits quick checks of the same code path.

RSS bound, SOAK_RSS_BOUND_MIB (default 100 MiB), over the measured phase. Everything large is allocated before
the baseline: weights, KV cache and embedding model at start-up; the per-row-count state of the packed linear
layers by a sweep of prompt lengths 1..PACKED_MAX_ROWS (about 350 MiB on the default model, bounded; see
Traffic.sweep_row_counts); allocator warm-up by a warm-up phase of the full mix. Measured after that, growth
was 15-20 MiB and flattening on the default model, so the bound leaves 5x headroom. A 3-minute run measures
about 3,500 requests: a leak of about 30 KB per request (a retained tensor, token list or response body) trips
it. Smaller per-request leaks are what the exact checks are for: the live-request map and the KV blocks must be
back to zero, not merely small. Longer runs (SOAK_MINUTES) make the RSS check proportionally more sensitive.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtest.local_server import ServerExitedError, free_port, wait_healthy
from service.engine.packed_linear import PACKED_MAX_ROWS
from service.model_builder import build
from tests.soak.traffic import ALLOWED, Traffic

MINUTES = float(os.environ.get("SOAK_MINUTES", "3"))
RSS_BOUND_MIB = float(os.environ.get("SOAK_RSS_BOUND_MIB", "100"))
WORKERS = 10  # concurrent clients, each looping over random request kinds
MAX_NUM_SEQS = 8  # small, so the waiting queue is rarely empty
MAX_QUEUED = 16  # small, so bursts trip 429
BURST = 3 * MAX_QUEUED
BURST_EVERY_S = 5.0
MAX_BODY_BYTES = 256 * 1024
SETTLE_S = 30.0  # after the last client returns, how long the gauges may take to reach zero
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
# A stream handler's write that races the client's hang-up fails this way; the request is still aborted (the
# handler's `finally`), so it is log noise, not a leak. Any other traceback fails the soak.
HARMLESS_TRACEBACK = "ClientConnectionResetError: Cannot write to closing transport"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS line")


def scrape(text: str) -> dict[str, float]:
    """Samples by name, labels folded in as name{k=v}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


async def start_server(model_dir: Path, log_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    log_file = log_path.open("wb")  # a file, not a pipe: a soak writes far more log than a pipe buffers
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "--model", str(model_dir), "--port", str(port),
        "--embedding-model", "default", "--dtype", "float32", "--log-format", "json",
        "--max-num-seqs", str(MAX_NUM_SEQS), "--max-queued-requests", str(MAX_QUEUED),
        "--max-body-bytes", str(MAX_BODY_BYTES), "--drain-timeout", "10",
        stdout=asyncio.subprocess.DEVNULL, stderr=log_file,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log_file.close()
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(base, lambda: proc.returncode, 120)
    except ServerExitedError as exc:
        raise RuntimeError(f"{exc}; see {log_path}") from exc
    except TimeoutError:
        proc.kill()
        raise
    return proc, base


async def drive(traffic: Traffic, seconds: float) -> None:
    """WORKERS clients looping over random kinds, plus a burst every BURST_EVERY_S, for `seconds`."""
    end = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            await traffic.run_one()

    async def bursts() -> None:
        while time.monotonic() + BURST_EVERY_S < end:
            await asyncio.sleep(BURST_EVERY_S)
            await traffic.burst(BURST)

    await asyncio.gather(*(worker() for _ in range(WORKERS)), bursts())


async def settle(session: aiohttp.ClientSession, base: str) -> tuple[dict[str, float], float]:
    """Scrape /metrics until nothing is running, waiting or live (bounded); return the scrape and the wait."""
    t0 = time.monotonic()
    while True:
        async with session.get(base + "/metrics") as r:
            m = scrape(await r.text())
        quiet = all(m[f"hfserve:{g}"] == 0 for g in
                    ("num_requests_running", "num_requests_waiting", "num_live_requests", "kv_cache_usage_perc"))
        if quiet or time.monotonic() - t0 > SETTLE_S:
            return m, time.monotonic() - t0
        await asyncio.sleep(0.1)


def read_log(log_path: Path) -> tuple[Counter[str], list[str], Counter[str]]:
    """Structured lines by level, the error-level ones, and the final lines of plain-text tracebacks (aiohttp's
    own "Error handling request" goes through the stdlib logger, not structlog) by exception."""
    levels: Counter[str] = Counter()
    bad: list[str] = []
    tracebacks: Counter[str] = Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            if EXCEPTION_LINE.match(line):
                tracebacks[line[:120]] += 1
            continue
        entry = json.loads(line)
        levels[entry.get("level", "?")] += 1
        if entry.get("level") in ("error", "critical", "exception"):
            bad.append(line[:300])
    return levels, bad, tracebacks


@dataclass
class Figures:
    """What the soak measured; the report prints it and the test asserts on it."""

    model_dir: Path
    warmup_s: float
    soak_s: float
    rss_boot: float = 0.0  # MiB, server just healthy
    rss_swept: float = 0.0  # MiB, after the row-count sweep
    rss: list[tuple[float, float]] = field(default_factory=list)  # (s into the measured phase, MiB)
    metrics: dict[str, float] = field(default_factory=dict)
    settle_s: float = 0.0
    health: tuple[int, dict[str, object]] = (0, {})
    exit_code: int | None = None
    levels: Counter[str] = field(default_factory=Counter)
    tracebacks: Counter[str] = field(default_factory=Counter)

    @property
    def growth(self) -> float:
        return self.rss[-1][1] - self.rss[0][1]


def report(f: Figures, traffic: Traffic) -> str:
    tally, m = traffic.tally, f.metrics
    lines = ["", "==== hfserve soak report ====",
             f"model              {f.model_dir}",
             f"traffic            {f.soak_s:.0f} s measured after {f.warmup_s:.0f} s warm-up; {WORKERS} clients, "
             f"a burst of {BURST} every {BURST_EVERY_S:.0f} s; --max-num-seqs {MAX_NUM_SEQS} "
             f"--max-queued-requests {MAX_QUEUED}",
             f"requests sent      {tally.total} ({tally.total / (f.warmup_s + f.soak_s):.1f}/s, warm-up included, "
             f"row-count sweep not), by kind and outcome:"]
    for kind, outcomes in tally.by_kind().items():
        lines.append(f"  {kind:18} {sum(outcomes.values()):6}   "
                     + "  ".join(f"{o}:{n}" for o, n in sorted(outcomes.items())))
    lines.append("outcomes           " + "  ".join(f"{o}:{n}" for o, n in sorted(tally.by_outcome().items())))
    counters = {k.removeprefix("hfserve:"): int(v) for k, v in m.items()
                if k.startswith(("hfserve:request_success_total", "hfserve:num_requests_rejected_total",
                                 "hfserve:num_client_disconnects_total", "hfserve:engine_step_failures_total",
                                 "hfserve:num_preemptions_total"))}
    lines.append("server counters    (whole run) " + "  ".join(f"{k}={v}" for k, v in sorted(counters.items())))
    lines.append(f"at end (+{f.settle_s:.1f} s)    running={m['hfserve:num_requests_running']:.0f}  "
                 f"waiting={m['hfserve:num_requests_waiting']:.0f}  "
                 f"kv_cache_usage_perc={m['hfserve:kv_cache_usage_perc']:.3f}  "
                 f"live_requests={m['hfserve:num_live_requests']:.0f}  "
                 f"embedding_queue={m.get('hfserve:embedding_queue_length', 0):.0f}  "
                 f"/health={f.health[0]} {json.dumps(f.health[1])}")
    start, end = f.rss[0][1], f.rss[-1][1]
    lines.append(f"RSS                boot {f.rss_boot:.1f} MiB  after row-count sweep {f.rss_swept:.1f} MiB  "
                 f"after warm-up (baseline) {start:.1f} MiB")
    lines.append(f"                   end {end:.1f} MiB  growth {f.growth:+.1f} MiB (bound {RSS_BOUND_MIB:.0f} MiB)  "
                 f"peak {max(r for _, r in f.rss):.1f} MiB")
    lines.append("RSS samples        " + "  ".join(f"{t:.0f}s:{r:.0f}" for t, r in f.rss))
    lines.append("server log lines   " + "  ".join(f"{k}:{v}" for k, v in sorted(f.levels.items()))
                 + f"; exit code after SIGTERM {f.exit_code}")
    for text, n in sorted(f.tracebacks.items()):
        lines.append(f"plain tracebacks   {n} x {text}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def soak_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    named = os.environ.get("SOAK_MODEL")
    if named:
        path = Path(named)
        if not (path / "config.json").exists():
            build("default", path)
        return path
    return build("tiny", tmp_path_factory.mktemp("soak-model"))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
@pytest.mark.timeout(int(MINUTES * 60 * 1.3) + 300)
async def test_soak(soak_model: Path, tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    f = Figures(soak_model, warmup_s=min(30.0, max(5.0, MINUTES * 60 * 0.15)), soak_s=MINUTES * 60)
    proc, base = await start_server(soak_model, log_path)
    try:
        f.rss_boot = rss_mib(proc.pid)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            async with session.get(base + "/v1/models") as r:
                card = (await r.json())["data"][0]
            traffic = Traffic(session, base, card["id"], card["max_model_len"], MAX_BODY_BYTES)
            await traffic.sweep_row_counts(PACKED_MAX_ROWS)
            f.rss_swept = rss_mib(proc.pid)
            await drive(traffic, f.warmup_s)  # every kind runs before the baseline; allocators settle
            await settle(session, base)
            t0 = time.monotonic()
            f.rss.append((0.0, rss_mib(proc.pid)))

            async def sample_rss() -> None:
                while True:
                    await asyncio.sleep(15)
                    f.rss.append((time.monotonic() - t0, rss_mib(proc.pid)))

            sampler = asyncio.ensure_future(sample_rss())
            try:
                await drive(traffic, f.soak_s)
            finally:
                sampler.cancel()
            f.metrics, f.settle_s = await settle(session, base)
            f.rss.append((time.monotonic() - t0, rss_mib(proc.pid)))
            async with session.get(base + "/health") as r:
                f.health = (r.status, await r.json())
        proc.send_signal(signal.SIGTERM)
        f.exit_code = await asyncio.wait_for(proc.wait(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    f.levels, bad_logs, f.tracebacks = read_log(log_path)
    print(report(f, traffic))

    tally, m = traffic.tally, f.metrics
    assert not tally.surprises, "\n".join(tally.surprises)
    seen = {kind for kind, _ in tally.outcomes}
    assert seen >= set(ALLOWED), f"kinds never exercised: {set(ALLOWED) - seen}"
    assert tally.by_kind()["burst"]["429"] > 0, "the bursts never tripped 429"
    assert m["hfserve:num_requests_running"] == 0
    assert m["hfserve:num_requests_waiting"] == 0
    assert m["hfserve:kv_cache_usage_perc"] == 0
    assert m["hfserve:num_live_requests"] == 0
    assert m.get("hfserve:embedding_queue_length", 0) == 0
    assert m["hfserve:engine_step_failures_total"] == 0
    assert m["hfserve:num_client_disconnects_total"] > 0
    assert f.health[0] == 200 and f.health[1]["live_requests"] == 0
    assert not bad_logs, "\n".join(bad_logs[:10])
    assert all(HARMLESS_TRACEBACK in t for t in f.tracebacks), f.tracebacks
    assert f.exit_code == 0
    assert f.growth < RSS_BOUND_MIB, f"RSS grew {f.growth:.1f} MiB (bound {RSS_BOUND_MIB} MiB): {f.rss}"
