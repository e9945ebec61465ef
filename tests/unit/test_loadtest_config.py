"""Flags to configs, request bodies, response-frame parsing, abort plans and report writers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from loadtest.cli import build_parser, loads_from_args, parse_percentiles, target_from_args
from loadtest.client import Outcome, RequestRecord, _Reader, build_body
from loadtest.config import EndpointKind, LoadConfig, TargetConfig
from loadtest.faults import AbortPlan
from loadtest.report import CSV_COLUMNS, append_csv, format_table


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_vllm_flag_names_and_defaults() -> None:
    args = parse("--base-url", "http://h:1", "--max-concurrency", "8", "--num-prompts", "50")
    target = target_from_args(args)
    (load,) = loads_from_args(args)
    assert target.endpoint_url == "http://h:1/v1/completions"
    assert target.kind is EndpointKind.COMPLETIONS and target.stream
    assert load.max_concurrency == 8 and load.num_prompts == 50 and math.isinf(load.request_rate)
    assert not load.open_loop
    assert parse_percentiles(args.metric_percentiles) == (50.0, 90.0, 95.0, 99.0, 99.9)


def test_chat_endpoint_is_inferred_and_headers_and_extra_body_apply() -> None:
    args = parse("--endpoint", "/v1/chat/completions", "--header", "X-A=1", "--header", "X-B: two",
                 "--api-key", "k", "--extra-body", '{"top_k": 3, "stream_options": {"include_usage": false}}')
    target = target_from_args(args)
    assert target.kind is EndpointKind.CHAT
    headers = target.http_headers()
    assert headers["X-A"] == "1" and headers["X-B"] == "two" and headers["Authorization"] == "Bearer k"
    body = build_body(target, "hi", 7, "m")
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_completion_tokens"] == 7 and "prompt" not in body
    assert body["top_k"] == 3 and body["stream_options"] == {"include_usage": False}  # extra-body wins


def test_completions_body() -> None:
    target = TargetConfig("http://h:1", ignore_eos=True, temperature=0.0)
    body = build_body(target, "hello", 5, "m")
    assert body == {"model": "m", "stream": True, "prompt": "hello", "max_tokens": 5,
                    "stream_options": {"include_usage": True}, "ignore_eos": True, "temperature": 0.0}
    plain = build_body(TargetConfig("http://h:1", stream=False), "hello", 5, "m")
    assert "stream_options" not in plain and "ignore_eos" not in plain


def test_sweep_values() -> None:
    loads = loads_from_args(parse("--sweep", "max-concurrency=1,4,16"))
    assert [x.max_concurrency for x in loads] == [1, 4, 16]
    loads = loads_from_args(parse("--sweep", "request-rate=2,8.5,inf", "--max-concurrency", "4"))
    assert [x.request_rate for x in loads] == [2.0, 8.5, math.inf] and loads[0].open_loop
    assert len({x.label for x in loads}) == 3
    with pytest.raises(ValueError, match="sweep"):
        loads_from_args(parse("--sweep", "batch=1,2"))


def test_ramp_up_flags() -> None:
    (load,) = loads_from_args(parse("--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1",
                                    "--ramp-up-end-rps", "9"))
    assert load.ramp_up is not None and load.ramp_up.rate_at(0.5) == 5.0 and load.open_loop
    with pytest.raises(ValueError, match="ramp-up"):
        loads_from_args(parse("--ramp-up-strategy", "linear"))


@pytest.mark.parametrize("kwargs", [
    {"num_prompts": 0}, {"request_rate": 0.0}, {"burstiness": 0.0}, {"max_concurrency": 0},
    {"abort_fraction": 1.5}, {"duration_s": 5.0},  # a timed closed loop needs a concurrency cap
])
def test_load_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LoadConfig(**kwargs)  # type: ignore[arg-type]


def test_target_config_validation() -> None:
    with pytest.raises(ValueError, match="base-url"):
        TargetConfig("localhost:8000")
    with pytest.raises(ValueError, match="endpoint"):
        TargetConfig("http://h", endpoint="v1/completions")
    for timeout in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="request-timeout"):
            TargetConfig("http://h", request_timeout_s=timeout)


def record() -> RequestRecord:
    return RequestRecord(0, "p", 3, 8)


def test_reader_takes_text_usage_token_ids_and_skips_empty_frames() -> None:
    rec = record()
    reader = _Reader(rec, EndpointKind.COMPLETIONS)
    assert reader.apply({"choices": [{"index": 0, "text": "Hel", "token_ids": [1, 2]}]}, 1.0)
    assert reader.apply({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}, 2.0)
    assert reader.apply({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 9}}, 3.0)
    assert rec.chunk_times == [1.0] and rec.chunk_tokens == [2] and rec.text == "Hel"
    assert rec.usage_prompt_tokens == 4 and rec.usage_completion_tokens == 9 and rec.input_tokens == 4


def test_reader_chat_deltas() -> None:
    rec = record()
    reader = _Reader(rec, EndpointKind.CHAT)
    reader.apply({"choices": [{"delta": {"role": "assistant", "content": ""}}]}, 1.0)  # role header: no token
    reader.apply({"choices": [{"delta": {"content": "Hi"}}]}, 2.0)
    reader.apply({"choices": [{"delta": {"content": " there"}}]}, 3.0)
    assert rec.chunk_times == [2.0, 3.0] and rec.text == "Hi there" and rec.chunk_tokens == [None, None]


@pytest.mark.parametrize(("frame", "code"), [
    ({"error": {"message": "boom", "type": "server_error", "code": 500}}, "500"),
    ({"error": "plain text error"}, "error"),  # transformers serve's shape
])
def test_reader_error_frames_fail_the_request(frame: dict[str, object], code: str) -> None:
    rec = record()
    assert not _Reader(rec, EndpointKind.COMPLETIONS).apply(frame, 1.0)
    assert rec.outcome is Outcome.FAILED and rec.error_code == code and rec.error


def test_abort_plan_picks_an_exact_seeded_share() -> None:
    plan = AbortPlan(0.2, seed=1, num_requests=50)
    picks = {i: plan.abort_after(i, 16) for i in range(50)}
    chosen = {i: n for i, n in picks.items() if n is not None}
    assert len(chosen) == 10
    assert all(1 <= n <= 15 for n in chosen.values())
    again = AbortPlan(0.2, seed=1, num_requests=50)
    assert {i: again.abort_after(i, 16) for i in range(50)} == picks
    assert AbortPlan(0.0, seed=1, num_requests=50).abort_after(3, 16) is None


def test_abort_plan_for_a_timed_run_is_a_coin_per_request() -> None:
    plan = AbortPlan(0.3, seed=2, num_requests=None)
    share = sum(plan.abort_after(i, 8) is not None for i in range(4000)) / 4000
    assert share == pytest.approx(0.3, abs=0.03)


def minimal_result(label: str) -> dict[str, object]:
    result: dict[str, object] = {c: 1 for c in CSV_COLUMNS}
    result.update({"label": label, "error_rate": 0.0, "error_codes": {"HTTP 500": 2}, "fault_check": None,
                   "request_goodput": None, "duration": 1.5, "notes": ["a note"]})
    return result


def test_csv_appends_one_row_per_run(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    append_csv(path, [minimal_result("a")])
    append_csv(path, [minimal_result("b"), minimal_result("c")])
    rows = list(csv.DictReader(path.open()))
    assert [r["label"] for r in rows] == ["a", "b", "c"]
    assert tuple(rows[0]) == CSV_COLUMNS


def test_table_shows_counts_errors_and_notes() -> None:
    text = format_table(minimal_result("x"), (50.0, 99.0))
    assert "Serving Benchmark Result (x)" in text
    assert "HTTP 500: 2" in text and "note: a note" in text
    assert "p99" in text and "TTFT" in text and "ITL (token)" in text
