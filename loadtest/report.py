"""What a run leaves behind: the terminal table, the result JSON (vLLM's keys plus run metadata), the
per-request JSONL and the one-row-per-run CSV."""

from __future__ import annotations

import csv
import os
import platform
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from loadtest.client import Outcome, RequestRecord
from loadtest.metrics import DEFAULT_PERCENTILES, LATENCY_METRICS, percentile_key
from loadtest.runner import RunResult, rate_for_json

CSV_COLUMNS = (
    "label", "backend_url", "model_id", "num_prompts", "request_rate", "max_concurrency", "duration", "completed",
    "failed", "aborted", "error_rate", "total_input_tokens", "total_output_tokens", "request_throughput",
    "request_goodput", "output_throughput", "total_token_throughput", "max_output_tokens_per_s",
    "max_concurrent_requests", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
    "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms", "median_e2el_ms",
    "p99_e2el_ms", "fault_check_passed",
)
TITLES = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL (chunk)", "itl_per_token": "ITL (token)",
          "e2el": "E2EL", "queue": "Client queue"}


def git_commit() -> str | None:
    """HEAD of the harness's checkout, with "-dirty" when tracked files differ from it."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=here, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + "-dirty" if dirty else head) or None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}


def vllm_date(iso: str) -> str:
    """vLLM's `date`: local time as %Y%m%d-%H%M%S, from an ISO timestamp."""
    return datetime.fromisoformat(iso).astimezone().strftime("%Y%m%d-%H%M%S")


def per_request_lists(records: list[RequestRecord]) -> dict[str, list[Any]]:
    """vLLM's per-request lists (its `--save-detailed`), one entry per timed request in order; times in
    seconds. A request that did not succeed has output length 0, TTFT 0.0 and no ITLs, as in vLLM; a successful
    request without streaming has TTFT None (there is none to measure)."""
    out: dict[str, list[Any]] = {k: [] for k in ("input_lens", "output_lens", "ttfts", "itls", "generated_texts",
                                                 "errors")}
    for r in records:
        ok = r.outcome is Outcome.SUCCESS
        out["input_lens"].append(r.input_tokens)
        out["output_lens"].append(r.output_tokens if ok else 0)
        out["ttfts"].append(r.ttft if ok else 0.0)
        out["itls"].append(r.itl if ok else [])
        out["generated_texts"].append(r.text)
        error = r.error
        if r.outcome is Outcome.ABORTED:
            error = f"aborted by the harness after {len(r.chunk_times)} chunks"
        out["errors"].append(error)
    return out


def build_result(run: RunResult, *, target_url: str, model: str, args: dict[str, Any],
                 server_info: dict[str, Any], prompt_len_source: str,
                 percentiles: tuple[float, ...] = DEFAULT_PERCENTILES,
                 percentile_metrics: tuple[str, ...] = LATENCY_METRICS, backend: str = "openai",
                 tokenizer_id: str | None = None, detailed: bool = False) -> dict[str, Any]:
    m = run.metrics
    result: dict[str, Any] = {
        "date": vllm_date(run.started_at),
        "endpoint_type": backend,
        "backend": backend,
        "label": run.load.label,
        "backend_url": target_url,
        "model_id": model,
        "tokenizer_id": tokenizer_id,
        "num_prompts": len(run.records),
        "request_rate": rate_for_json(run.load.request_rate),
        "burstiness": run.load.burstiness,
        "max_concurrency": run.load.max_concurrency,
    }
    ramp = run.load.ramp_up
    if ramp is not None:
        result.update(ramp_up_strategy=ramp.strategy.value, ramp_up_start_rps=ramp.start_rps,
                      ramp_up_end_rps=ramp.end_rps)
    result.update({
        **m.to_dict(percentiles, percentile_metrics),
        "fault_check": run.fault_report.to_dict() if run.fault_report else None,
        "prompt_len_source": prompt_len_source,
        "metadata": {
            "args": args,
            "server_info": server_info,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "git_commit": git_commit(),
            "machine": machine_info(),
        },
    })
    if detailed:
        result.update(per_request_lists(run.records))
    notes = []
    if any(k != "usage" for k in m.token_sources):
        notes.append(f"output tokens not all from the server's usage: {m.token_sources}")
    if prompt_len_source.startswith("estimate"):
        notes.append(f"prompt lengths are estimates ({prompt_len_source})")
    result["notes"] = notes
    return result


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def format_table(result: dict[str, Any], percentiles: tuple[float, ...] = DEFAULT_PERCENTILES) -> str:
    head = [
        ("Successful requests", result["completed"]),
        ("Failed requests", result["failed"]),
        ("Aborted by the harness", result["aborted"]),
        ("Error rate", f"{result['error_rate'] * 100:.2f}%"),
        ("Error codes", ", ".join(f"{k}: {v}" for k, v in result["error_codes"].items()) or "-"),
        ("Benchmark duration (s)", result["duration"]),
        ("Total input tokens", result["total_input_tokens"]),
        ("Total generated tokens", result["total_output_tokens"]),
        ("Request throughput (req/s)", result["request_throughput"]),
        ("Request goodput (req/s)", result["request_goodput"]),
        ("Output token throughput (tok/s)", result["output_throughput"]),
        ("Peak output token throughput (tok/s)", result["max_output_tokens_per_s"]),
        ("Peak concurrent requests", result["max_concurrent_requests"]),
        ("Total token throughput (tok/s)", result["total_token_throughput"]),
    ]
    fault = result.get("fault_check")
    if fault:
        head.append(("Server still serving after aborts", "yes" if fault["passed"] else f"NO: {fault}"))
    width = 40
    title = f" Serving Benchmark Result ({result['label']}) "
    lines = [f"{title:=^{width + 22}}"]
    lines += [f"{name + ':':<{width}}{_fmt(value):>22}" for name, value in head]
    cols = ["mean", "median", "std", "min", "max", *(percentile_key(p) for p in percentiles)]
    lines.append("-" * (width + 22))
    lines.append(f"{'latency (ms)':<16}" + "".join(f"{c:>10}" for c in cols))
    for name in LATENCY_METRICS:
        keys = ["mean", "median", "std", "min", "max", *(percentile_key(p) for p in percentiles)]
        row = [result.get(f"{k}_{name}_ms") for k in keys]
        lines.append(f"{TITLES[name]:<16}" + "".join(f"{_fmt(v):>10}" for v in row))
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    lines.append("=" * (width + 22))
    return "\n".join(lines)


def format_sweep_table(results: list[dict[str, Any]]) -> str:
    cols = ("label", "completed", "failed", "output_throughput", "median_ttft_ms", "p99_ttft_ms",
            "median_itl_ms", "p99_itl_ms", "median_e2el_ms")
    lines = ["".join(f"{c:>20}" for c in cols)]
    for r in results:
        lines.append("".join(f"{_fmt(r.get(c)):>20}" for c in cols))
    return "\n".join(lines)


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))


def detailed_rows(records: list[RequestRecord], t0: float) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        ttft, tpot = r.ttft, r.tpot
        rows.append({
            "index": r.index,
            "outcome": r.outcome.value,
            "due_s": r.due - t0,
            "sent_s": r.sent - t0,
            "done_s": r.done - t0,
            "prompt_len": r.prompt_len,
            "input_tokens": r.input_tokens,
            "max_tokens": r.max_tokens,
            "output_tokens": r.output_tokens,
            "output_token_source": r.token_source.value,
            "ttft_ms": ttft * 1000 if ttft is not None else None,
            "tpot_ms": tpot * 1000 if tpot is not None else None,
            "e2el_ms": r.e2el * 1000,
            "itl_ms": [g * 1000 for g in r.itl],
            "chunk_tokens": r.chunk_tokens,
            "abort_after": r.abort_after,
            "http_status": r.http_status,
            "error_code": r.error_code,
            "error": r.error,
            "generated_text": r.text,
        })
    return rows


def write_detailed(path: Path, records: list[RequestRecord], t0: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for row in detailed_rows(records, t0):
            f.write(orjson.dumps(row) + b"\n")


def check_csv(path: Path) -> bool:
    """Whether `path` already holds rows; ValueError if it holds other columns than ours."""
    exists = path.exists() and path.stat().st_size > 0
    if exists:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != CSV_COLUMNS:
            raise ValueError(f"{path} exists with other columns; pick another --csv file")
    return exists


def append_csv(path: Path, results: list[dict[str, Any]]) -> None:
    """One row per run; appends under the same header if the file exists. The CLI calls it as each run
    finishes, so an interrupted sweep keeps the rows of the runs that did."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exists = check_csv(path)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if not exists:
            writer.writeheader()
        for r in results:
            row = dict(r)
            fault = r.get("fault_check")
            row["fault_check_passed"] = None if fault is None else fault["passed"]
            writer.writerow(row)
