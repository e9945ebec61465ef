"""The harness end to end against the real server on the tiny model (in-process), in closed- and open-loop
modes with injected client aborts, plus chat, non-streaming, timed and sweep runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtest.cli import async_main

VLLM_KEYS = ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
             "request_goodput", "output_throughput", "total_token_throughput")
PNG = b"\x89PNG\r\n\x1a\n"


async def run(client: Any, *argv: str) -> list[dict[str, Any]]:
    base = str(client.make_url("")).rstrip("/")
    return await async_main(["--base-url", base, "--disable-tqdm", "--temperature", "0", *argv])


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG), path
    assert len(data) > 5000, path  # axes, labels and a curve, not an empty canvas


def assert_sane(r: dict[str, Any], sent: int, output_len: int) -> None:
    for key in VLLM_KEYS:
        assert key in r
    for m in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p50", "p90", "p95", "p99", "p99.9"):
            assert f"{stat}_{m}_ms" in r
    assert r["completed"] + r["failed"] + r["aborted"] == sent
    assert r["failed"] == 0, r["error_codes"]
    assert r["total_output_tokens"] == r["completed"] * output_len  # ignore_eos: every request runs to max
    assert r["output_token_source"] == {"usage": r["completed"]}
    assert r["duration"] > 0
    assert r["request_throughput"] == pytest.approx(r["completed"] / r["duration"])
    assert r["output_throughput"] == pytest.approx(r["total_output_tokens"] / r["duration"])
    assert r["total_token_throughput"] > r["output_throughput"]
    assert 0 < r["min_ttft_ms"] <= r["median_ttft_ms"] <= r["p99_ttft_ms"] <= r["max_ttft_ms"]
    assert 0 < r["median_itl_ms"] <= r["max_itl_ms"]
    assert r["mean_tpot_ms"] > 0
    assert r["median_e2el_ms"] > r["median_ttft_ms"]
    assert r["max_output_tokens_per_s"] > 0 and r["max_concurrent_requests"] >= 1


async def test_closed_loop_with_aborts(make_client, tmp_path: Path) -> None:
    client = await make_client()
    out = tmp_path / "out"
    (r,) = await run(client, "--num-prompts", "20", "--max-concurrency", "4", "--random-input-len", "24",
                     "--random-output-len", "12", "--abort-fraction", "0.2", "--goodput", "ttft:60000",
                     "--save-result", "--save-detailed", "--result-dir", str(out), "--result-filename", "closed.json",
                     "--csv", str(out / "runs.csv"), "--plot", str(out / "plots"))
    assert_sane(r, sent=20, output_len=12)
    assert r["aborted"] == 4 and r["completed"] == 16
    assert r["max_concurrent_requests"] <= 4
    assert r["request_goodput"] == pytest.approx(r["request_throughput"])  # a 60 s TTFT bound: all good
    assert r["mean_queue_ms"] is None  # a closed loop has no arrival schedule to be late against
    assert r["prompt_len_source"] == "server /tokenize"
    fault = r["fault_check"]
    assert fault["passed"] and fault["aborted"] == 4 and fault["probe_ok"] and fault["health_status"] == 200
    assert fault["drained_after_s"] is not None  # hfserve's /health reports running/waiting; they reached 0
    saved = json.loads((out / "closed.json").read_text())
    assert saved["completed"] == r["completed"] and saved["p99.9_ttft_ms"] == pytest.approx(r["p99.9_ttft_ms"])
    assert saved["backend"] == "openai" and saved["tokenizer_id"] == "tiny"
    assert len(saved["ttfts"]) == len(saved["errors"]) == 20  # --save-detailed: vLLM's per-request lists
    meta = saved["metadata"]
    assert meta["server_info"]["data"][0]["id"] == "tiny"
    assert meta["args"]["max_concurrency"] == 4 and meta["started_at"] <= meta["finished_at"]
    rows = [json.loads(line) for line in (out / "closed.requests.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    aborted = [row for row in rows if row["outcome"] == "aborted"]
    assert len(aborted) == 4
    assert all(len(row["itl_ms"]) + 1 <= row["abort_after"] for row in aborted)
    done = [row for row in rows if row["outcome"] == "success"]
    assert all(row["input_tokens"] == row["prompt_len"] for row in done)  # /tokenize agrees with usage
    assert all(abs(row["prompt_len"] - 24) <= 2 for row in done)
    csv_lines = (out / "runs.csv").read_text().splitlines()
    assert len(csv_lines) == 2 and csv_lines[1].startswith("rateinf-conc4,")
    for name in ("cdf_ttft", "cdf_itl", "cdf_e2el", "timeline"):
        assert_png(out / "plots" / f"{name}.png")


async def test_open_loop_with_aborts(make_client, tmp_path: Path) -> None:
    client = await make_client()
    (r,) = await run(client, "--num-prompts", "24", "--request-rate", "40", "--burstiness", "1",
                     "--max-concurrency", "8", "--random-input-len", "16", "--random-output-len", "10",
                     "--random-range-ratio", "0.3", "--abort-fraction", "0.2", "--seed", "5",
                     "--plot", str(tmp_path / "plots"))
    assert r["request_rate"] == 40.0 and r["burstiness"] == 1.0
    assert r["aborted"] == 5 and r["completed"] == 19 and r["failed"] == 0
    assert r["output_token_source"] == {"usage": 19}
    assert 0 < r["median_ttft_ms"] <= r["p99_ttft_ms"]
    assert r["mean_queue_ms"] is not None and r["min_queue_ms"] >= 0
    assert r["fault_check"]["passed"]
    for name in ("cdf_ttft", "cdf_itl", "cdf_e2el", "timeline"):
        assert_png(tmp_path / "plots" / f"{name}.png")


async def test_sweep_writes_a_row_and_plots_per_point(make_client, tmp_path: Path) -> None:
    client = await make_client()
    results = await run(client, "--num-prompts", "6", "--sweep", "max-concurrency=1,3", "--random-input-len", "8",
                        "--random-output-len", "6", "--csv", str(tmp_path / "runs.csv"),
                        "--plot", str(tmp_path / "plots"))
    assert [x["max_concurrency"] for x in results] == [1, 3]
    for r in results:
        assert_sane(r, sent=6, output_len=6)
    assert results[0]["max_concurrent_requests"] == 1
    assert len((tmp_path / "runs.csv").read_text().splitlines()) == 3
    assert_png(tmp_path / "plots" / "sweep.png")
    assert_png(tmp_path / "plots" / "rateinf-conc3-cdf_ttft.png")


async def test_chat_endpoint(make_client) -> None:
    client = await make_client()
    (r,) = await run(client, "--endpoint", "/v1/chat/completions", "--num-prompts", "6", "--max-concurrency", "3",
                     "--random-input-len", "10", "--random-output-len", "8")
    assert_sane(r, sent=6, output_len=8)
    assert r["total_input_tokens"] > 6 * 10  # the chat template wraps each prompt


async def test_non_streaming_has_no_ttft_tpot_or_itl(make_client) -> None:
    client = await make_client()
    (r,) = await run(client, "--disable-stream", "--num-prompts", "5", "--max-concurrency", "5",
                     "--random-input-len", "10", "--random-output-len", "7")
    assert r["completed"] == 5 and r["total_output_tokens"] == 35
    assert r["mean_itl_ms"] is None and r["mean_tpot_ms"] is None
    assert r["mean_ttft_ms"] is None and r["p99_ttft_ms"] is None  # no first token to time without streaming
    assert r["median_e2el_ms"] > 0


async def test_timed_run(make_client) -> None:
    client = await make_client()
    (r,) = await run(client, "--duration", "1.0", "--max-concurrency", "2", "--num-prompts", "4",
                     "--random-input-len", "8", "--random-output-len", "4")
    assert r["failed"] == 0 and r["completed"] >= 2
    assert r["num_prompts"] == r["completed"]  # prompts are cycled for as long as the run lasts
    assert r["duration"] >= 0.5
