"""`python -m loadtest` end to end against the small fake server of test_loadtest_client.py: usage errors and
their exit status, vLLM's flags and result keys, and outputs written as each run finishes."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest

from loadtest.cli import async_main, build_parser, main, target_from_args
from loadtest.local_server import free_port
from loadtest.tokens import LocalTokenizer
from tests.unit.test_loadtest_client import Body, FakeServer, Status, Stream, ok_stream, serve, text

PER_REQUEST_KEYS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors")


async def run(url: str, *argv: str) -> list[dict[str, Any]]:
    return await async_main(["--base-url", url, "--disable-tqdm", "--num-prompts", "4", "--max-concurrency", "2",
                             "--random-input-len", "4", "--random-output-len", "2", *argv])


def exit_status(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run main() against a port nothing listens on, naming the model so that nothing needs the server before
    the flags and the dataset are checked."""
    with pytest.raises(SystemExit) as info:
        main(["--base-url", f"http://127.0.0.1:{free_port()}", "--model", "m", "--disable-tqdm", *argv])
    code = info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


@pytest.mark.parametrize(("name", "content", "message"), [
    ("sg.json", json.dumps([{"conversations": ["hi there you", "hello to you"]}]), "each turn must be an object"),
    ("p.jsonl", '{"prompt": "a"}\n[1, 2]\n', r"p\.jsonl:2: each JSONL line must be"),
    ("p.jsonl", '{"prompt": "a", "max_tokens": null}\n', "'max_tokens' must be a whole number"),
    ("p.jsonl", '{"prompt": "a", "max_tokens": 0}\n', "'max_tokens' must be a whole number"),
    ("p.jsonl", '{"prompt": "a"}\n{"prompt": \n', r"p\.jsonl:2: not valid JSON"),
    ("p.json", '["a", "b"]', "not one JSON document"),
])
def test_malformed_datasets_exit_2_with_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    dataset = "sharegpt" if name == "sg.json" else "prompts"
    code, err = exit_status(capsys, "--dataset-name", dataset, "--dataset-path", str(path))
    assert code == 2, err
    assert err.startswith("hfserve-loadtest: error: ") and re.search(message, err), err
    assert "Traceback" not in err


def test_a_directory_as_dataset_and_a_missing_tokenizer_exit_2(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, err = exit_status(capsys, "--dataset-name", "prompts", "--dataset-path", str(tmp_path))
    assert code == 2 and "is a directory" in err, err
    code, err = exit_status(capsys, "--tokenizer", "/nonexistent")
    assert code == 2 and "--tokenizer /nonexistent: no such file or directory" in err, err
    with pytest.raises(ValueError, match="/nonexistent"):
        LocalTokenizer("/nonexistent")


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_request_timeout_must_be_positive(capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, err = exit_status(capsys, f"--request-timeout={value}")
    assert code == 2 and "--request-timeout must be a number of seconds > 0" in err, err


def test_goodput_on_ttft_or_tpot_without_streaming_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = exit_status(capsys, "--disable-stream", "--goodput", "ttft:500", "e2el:900")
    assert code == 2 and "--goodput ttft: there is no TTFT or TPOT without streaming" in err, err
    code, err = exit_status(capsys, "--disable-stream", "--goodput", "tpot:50")
    assert code == 2 and "--goodput tpot" in err, err


@pytest.mark.parametrize(("item", "expected"), [
    ("Authorization: Bearer tok==", ("Authorization", "Bearer tok==")),
    ("X-A=1", ("X-A", "1")),
    ("X-B: two", ("X-B", "two")),
    ("X-Url=http://h:1/x", ("X-Url", "http://h:1/x")),
    ("X-Eq: a=b:c", ("X-Eq", "a=b:c")),
])
def test_headers_split_at_the_first_of_colon_and_equals(item: str, expected: tuple[str, str]) -> None:
    target = target_from_args(build_parser().parse_args(["--header", item]))
    assert target.headers == (expected,)
    assert target.http_headers()[expected[0]] == expected[1]


def test_header_without_a_separator_is_refused() -> None:
    with pytest.raises(ValueError, match="--header"):
        target_from_args(build_parser().parse_args(["--header", "X-Nothing"]))


async def test_one_bad_frame_fails_one_request_and_the_run_goes_on(aiohttp_server) -> None:
    # The 1st POST is the harness's test request; the 3rd gets a frame that is a JSON list.
    server = FakeServer(lambda n: Stream([(0.0, text("a")), (0.0, b"[1, 2]")]) if n == 3 else ok_stream())
    (r,) = await run(await serve(aiohttp_server, server), "--max-concurrency", "1")
    assert r["completed"] == 3 and r["failed"] == 1 and r["error_codes"] == {"bad_response": 1}


async def test_non_streamed_run_reports_no_ttft_tpot_or_itl(aiohttp_server, capsys) -> None:
    body = {"choices": [{"index": 0, "text": "ab", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
    (r,) = await run(await serve(aiohttp_server, FakeServer(lambda n: Body(body))), "--disable-stream",
                     "--goodput", "e2el:60000")
    assert r["completed"] == 4 and r["total_output_tokens"] == 8
    for name in ("ttft", "tpot", "itl"):
        assert r[f"mean_{name}_ms"] is None and r[f"p99_{name}_ms"] is None, name
    assert r["mean_e2el_ms"] > 0 and r["request_goodput"] == pytest.approx(r["request_throughput"])
    ttft_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("TTFT"))
    assert set(ttft_row.split()[1:]) == {"-"}


async def test_vllm_flags_percentile_metrics_and_custom_dataset(aiohttp_server, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "one two three"}\n{"prompt": "four five", "max_tokens": 3}\n')
    server = FakeServer()
    (r,) = await run(await serve(aiohttp_server, server), "--dataset-name", "custom", "--dataset-path",
                     str(prompts), "--custom-output-len", "5", "--percentile-metrics", "ttft,tpot,itl,e2el",
                     "--metric-percentiles", "50,90")
    assert r["completed"] == 4
    assert sorted({(b["prompt"], b["max_tokens"]) for b in server.requests}) == [("four five", 3),
                                                                                ("one two three", 5)]
    for name in ("ttft", "tpot", "itl", "e2el"):
        assert r[f"p50_{name}_ms"] is not None and f"p90_{name}_ms" in r
    assert "p50_itl_per_token_ms" not in r and "p50_queue_ms" not in r
    assert r["mean_itl_per_token_ms"] is not None


async def test_csv_sweep_table_keep_p99_whatever_the_percentiles(aiohttp_server, tmp_path: Path, capsys) -> None:
    url = await serve(aiohttp_server, FakeServer())
    results = await run(url, "--sweep", "max-concurrency=1,2", "--metric-percentiles", "50,90",
                        "--csv", str(tmp_path / "runs.csv"), "--plot", str(tmp_path / "plots"))
    assert all(r["p99_ttft_ms"] is not None and r["p50_ttft_ms"] is not None for r in results)
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert len(rows) == 2
    for row in rows:
        for key in ("p99_ttft_ms", "p99_tpot_ms", "p99_itl_ms", "p99_e2el_ms"):
            assert row[key] != "", key
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if line.split()[:2] == ["label", "completed"])
    assert "p99_ttft_ms" in out[header].split()
    sweep_rows = [line.split() for line in out[header + 1:header + 3]]
    assert [row[0] for row in sweep_rows] == ["rateinf-conc1", "rateinf-conc2"]
    assert all("-" not in row for row in sweep_rows)


async def test_csv_rows_are_written_as_each_run_finishes(aiohttp_server, tmp_path: Path) -> None:
    # Run 1 of the sweep: POSTs 1 (test request) to 5; run 2's test request, POST 6, fails: the sweep stops.
    server = FakeServer(lambda n: Status(500) if n >= 6 else ok_stream())
    with pytest.raises(RuntimeError, match="test request"):
        await run(await serve(aiohttp_server, server), "--sweep", "max-concurrency=1,2",
                  "--csv", str(tmp_path / "runs.csv"))
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [row["label"] for row in rows] == ["rateinf-conc1"]


async def test_result_json_has_vllms_keys(aiohttp_server, tmp_path: Path) -> None:
    url = await serve(aiohttp_server, FakeServer())
    await run(url, "--save-result", "--result-dir", str(tmp_path), "--result-filename", "plain.json")
    plain = json.loads((tmp_path / "plain.json").read_text())
    assert re.fullmatch(r"\d{8}-\d{6}", plain["date"]), plain["date"]
    assert plain["backend"] == plain["endpoint_type"] == "openai"
    assert "tokenizer_id" in plain and plain["tokenizer_id"] is None  # no /tokenize and no --tokenizer
    assert not any(key in plain for key in (*PER_REQUEST_KEYS, "ramp_up_strategy"))
    assert plain["metadata"]["started_at"] <= plain["metadata"]["finished_at"]

    url = await serve(aiohttp_server, FakeServer(tokenize=True))
    await run(url, "--endpoint", "/v1/chat/completions", "--save-detailed",
              "--ramp-up-strategy", "linear", "--ramp-up-start-rps", "50", "--ramp-up-end-rps", "100",
              "--result-dir", str(tmp_path), "--result-filename", "detailed.json")
    d = json.loads((tmp_path / "detailed.json").read_text())
    assert d["backend"] == d["endpoint_type"] == "openai-chat"
    assert d["tokenizer_id"] == "fake"  # the server's /tokenize counted: the model's own tokenizer
    assert (d["ramp_up_strategy"], d["ramp_up_start_rps"], d["ramp_up_end_rps"]) == ("linear", 50.0, 100.0)
    assert d["input_lens"] == [3] * 4 and d["output_lens"] == [2] * 4  # the server's usage
    assert all(isinstance(t, float) and 0 < t < 5 for t in d["ttfts"])  # seconds, as vLLM's
    assert all(len(itl) == 1 for itl in d["itls"])
    assert d["generated_texts"] == ["ab"] * 4 and d["errors"] == [""] * 4
    assert (tmp_path / "detailed.requests.jsonl").exists()  # the per-request JSONL is still written


def test_a_csv_with_other_columns_is_refused_before_any_run(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    code, err = exit_status(capsys, "--csv", str(path))
    assert code == 2 and "exists with other columns" in err, err
