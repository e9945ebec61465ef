"""The metric maths against timelines worked out by hand."""

from __future__ import annotations

import pytest

from loadtest.client import Outcome, RequestRecord
from loadtest.metrics import (
    GoodputSLO,
    allocate,
    compute_metrics,
    concurrency_steps,
    parse_percentile_metrics,
    percentile_key,
    summarize,
    tokens_per_bucket,
)

T0 = 100.0  # perf_counter() values are arbitrary offsets; nothing may depend on them being 0


def make_record(sent: float, chunks: list[float], tokens: list[int | None] | None = None, *,
                usage: int | None = None, prompt: int = 10, outcome: Outcome = Outcome.SUCCESS,
                due: float | None = None, done: float | None = None, code: str = "",
                streamed: bool = True, last_frame: float | None = None) -> RequestRecord:
    rec = RequestRecord(index=0, prompt="p", prompt_len=prompt, max_tokens=64)
    rec.sent = T0 + sent
    rec.due = T0 + (due if due is not None else sent)
    rec.chunk_times = [T0 + c for c in chunks]
    rec.chunk_tokens = list(tokens) if tokens is not None else [1] * len(chunks)
    rec.chunk_texts = ["x"] * len(chunks)
    rec.done = T0 + (done if done is not None else (chunks[-1] if chunks else sent))
    rec.last_frame = T0 + last_frame if last_frame is not None else None
    rec.outcome = outcome
    rec.error_code = code
    rec.streamed = streamed
    rec.usage_completion_tokens = usage
    rec.output_tokens = usage if usage is not None else sum(k or 1 for k in rec.chunk_tokens)
    return rec


def test_per_request_definitions() -> None:
    # Sent at 0; chunks at 0.2, 0.3, 0.6 (the last carrying 3 tokens): 5 tokens in all.
    rec = make_record(0.0, [0.2, 0.3, 0.6], [1, 1, 3], usage=5, done=0.65)
    assert rec.ttft == pytest.approx(0.2)
    assert rec.e2el == pytest.approx(0.6)  # to the last content chunk, not to [DONE] at 0.65
    assert rec.itl == pytest.approx([0.1, 0.3])
    assert rec.itl_per_token == pytest.approx([0.1, 0.1, 0.1, 0.1])  # 0.3 s over the chunk's 3 tokens
    assert rec.tpot == pytest.approx((0.6 - 0.2) / (5 - 1))


def test_e2el_ends_at_the_last_frame_with_choices_even_without_text() -> None:
    # Text at 0.2 and 0.3; a finish frame with empty text at 0.5; the usage frame and [DONE] at 0.6.
    rec = make_record(0.0, [0.2, 0.3], usage=2, last_frame=0.5, done=0.6)
    assert rec.e2el == pytest.approx(0.5)
    assert rec.ttft == pytest.approx(0.2)
    assert rec.tpot == pytest.approx((0.5 - 0.2) / (2 - 1))
    assert rec.itl == pytest.approx([0.1])


def test_single_token_has_no_tpot_and_non_streamed_has_no_ttft_tpot_or_itl() -> None:
    assert make_record(0.0, [0.5], usage=1).tpot is None
    rec = make_record(0.0, [0.8], usage=7, streamed=False, last_frame=0.8, done=0.8)
    assert rec.ttft is None  # the text arrives with the whole body: there is no first token to time
    assert rec.itl == [] and rec.itl_per_token == [] and rec.tpot is None
    assert rec.e2el == pytest.approx(0.8)


def test_tpot_leaves_out_single_token_requests_but_goodput_counts_them_as_zero() -> None:
    records = [
        make_record(0.0, [0.1, 0.3], usage=2),  # tpot 200 ms
        make_record(0.0, [0.1, 0.5], usage=2),  # tpot 400 ms
        make_record(0.0, [0.2], usage=1),  # one token: no TPOT
    ]
    m = compute_metrics(records, duration=1.0, t0=T0, slo=GoodputSLO.parse(["tpot:300"]))
    tpot = m.stats["tpot"]
    assert tpot is not None and tpot.count == 2
    assert tpot.mean == pytest.approx(300.0) and tpot.min == pytest.approx(200.0)
    assert m.good == 2  # the 200 ms one and the single-token one (TPOT 0 for goodput, as vLLM)


def test_non_streamed_run_reports_no_ttft_tpot_or_itl() -> None:
    records = [make_record(0.0, [0.4], usage=5, streamed=False), make_record(0.0, [0.6], usage=5, streamed=False)]
    d = compute_metrics(records, duration=1.0, t0=T0).to_dict()
    for name in ("ttft", "tpot", "itl", "itl_per_token"):
        assert d[f"mean_{name}_ms"] is None and d[f"p99_{name}_ms"] is None, name
    assert d["mean_e2el_ms"] == pytest.approx(500.0)
    slo = GoodputSLO.parse(["ttft:1000", "e2el:1000"])
    assert slo.streaming_metrics == ["ttft"]
    assert GoodputSLO.parse(["e2el:1000"]).streaming_metrics == []


def test_percentiles_only_for_the_selected_metrics() -> None:
    m = compute_metrics([make_record(0.0, [0.1, 0.2], usage=2)], duration=1.0, t0=T0, percentiles=(50.0, 99.0))
    d = m.to_dict((50.0, 99.0), ("ttft", "e2el"))
    assert d["p99_ttft_ms"] == pytest.approx(100.0) and "p50_e2el_ms" in d
    assert "p99_itl_ms" not in d and "p50_tpot_ms" not in d
    assert d["mean_itl_ms"] == pytest.approx(100.0)  # mean, median, std, min and max for every metric
    assert parse_percentile_metrics("ttft,tpot,itl,e2el") == ("ttft", "tpot", "itl", "e2el")
    with pytest.raises(ValueError, match="percentile-metrics"):
        parse_percentile_metrics("ttft,latency")


def test_aggregates_over_successful_requests_only() -> None:
    records = [
        make_record(0.0, [0.1, 0.2, 0.4], usage=3, prompt=10),  # ttft 100 ms, e2el 400, tpot 150
        make_record(0.5, [0.8, 1.0], usage=2, prompt=20),  # ttft 300 ms, e2el 500, tpot 200
        make_record(1.0, [1.2, 1.3, 1.4, 1.5], usage=4, prompt=30),  # ttft 200, e2el 500, tpot 100
        make_record(1.1, [], outcome=Outcome.FAILED, code="HTTP 503", done=1.15),
        make_record(1.2, [], outcome=Outcome.FAILED, code="HTTP 503", done=1.25),
        make_record(0.2, [0.3], outcome=Outcome.ABORTED, done=0.35),
    ]
    m = compute_metrics(records, duration=2.0, t0=T0)
    assert (m.completed, m.failed, m.aborted) == (3, 2, 1)
    assert m.total_input_tokens == 60
    assert m.total_output_tokens == 9
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(4.5)
    assert m.total_token_throughput == pytest.approx(34.5)
    assert m.error_rate == pytest.approx(2 / 5)
    assert m.error_codes == {"HTTP 503": 2}
    ttft = m.stats["ttft"]
    assert ttft is not None
    assert ttft.mean == pytest.approx(200.0)
    assert ttft.median == pytest.approx(200.0)
    assert ttft.min == pytest.approx(100.0) and ttft.max == pytest.approx(300.0)
    assert ttft.std == pytest.approx((20000 / 3) ** 0.5)  # population std, as numpy's default
    assert ttft.percentiles[90.0] == pytest.approx(280.0)  # linear interpolation between 200 and 300
    tpot = m.stats["tpot"]
    assert tpot is not None and tpot.mean == pytest.approx(150.0)
    itl = m.stats["itl"]
    # gaps: 100, 200 | 200 | 100, 100, 100 (ms)
    assert itl is not None and itl.count == 6 and itl.mean == pytest.approx(800 / 6)
    e2el = m.stats["e2el"]
    assert e2el is not None and e2el.median == pytest.approx(500.0)
    assert m.good is None and m.request_goodput is None


def test_result_keys_follow_vllm() -> None:
    m = compute_metrics([make_record(0.0, [0.1, 0.2], usage=2)], duration=1.0, t0=T0,
                        percentiles=(50.0, 99.0, 99.9))
    d = m.to_dict((50.0, 99.0, 99.9))
    for key in ("duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
                "request_throughput", "request_goodput", "output_throughput", "total_token_throughput"):
        assert key in d
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p50", "p99", "p99.9"):
            assert f"{stat}_{name}_ms" in d
    assert d["p99.9_ttft_ms"] == pytest.approx(100.0)
    assert percentile_key(99.0) == "p99" and percentile_key(99.9) == "p99.9" and percentile_key(50) == "p50"


def test_queue_time_is_lateness_against_the_schedule_in_open_loop_only() -> None:
    records = [make_record(0.00, [0.1], due=0.00), make_record(0.25, [0.3], due=0.20),
               make_record(0.45, [0.5], due=0.40)]
    open_m = compute_metrics(records, duration=1.0, t0=T0, open_loop=True)
    q = open_m.stats["queue"]
    assert q is not None and q.mean == pytest.approx(100 / 3) and q.max == pytest.approx(50.0)
    assert compute_metrics(records, duration=1.0, t0=T0, open_loop=False).stats["queue"] is None


def test_peak_concurrency_and_peak_tokens_per_second() -> None:
    records = [
        make_record(0.0, [0.5, 0.9, 1.5], usage=3, done=1.6),
        make_record(0.2, [0.6, 0.7], [1, 4], usage=5, done=0.8),
        make_record(0.7, [1.1, 2.4], usage=2, done=2.5),
        make_record(1.7, [], outcome=Outcome.FAILED, done=1.8),
    ]
    # in flight: [0, 1.6], [0.2, 0.8], [0.7, 2.5], [1.7, 1.8] -> three at once during [0.7, 0.8]
    steps = concurrency_steps(records, T0)
    assert max(level for _, level in steps) == 3
    assert steps[-1] == (pytest.approx(2.5), 0)
    # tokens per 1 s bucket: [0,1): 0.5, 0.9, 0.6, 0.7 x4 -> 7; [1,2): 1.5, 1.1 -> 2; [2,3): 2.4 -> 1
    assert tokens_per_bucket(records, T0) == [7, 2, 1]
    m = compute_metrics(records, duration=2.5, t0=T0)
    assert m.max_output_tokens_per_s == 7.0
    assert m.max_concurrent_requests == 3


def test_concurrency_counts_an_end_before_a_start_at_the_same_instant() -> None:
    records = [make_record(0.0, [0.5], done=1.0), make_record(1.0, [1.5], done=2.0)]
    assert max(level for _, level in concurrency_steps(records, T0)) == 1


def test_goodput_counts_requests_meeting_every_slo() -> None:
    slo = GoodputSLO.parse(["ttft:250", "e2el:450"])
    records = [
        make_record(0.0, [0.1, 0.2, 0.4], usage=3),  # ttft 100, e2el 400: good
        make_record(0.5, [0.8, 1.0], usage=2),  # ttft 300: bad
        make_record(1.0, [1.2, 1.5], usage=2),  # ttft 200, e2el 500: bad
    ]
    m = compute_metrics(records, duration=2.0, t0=T0, slo=slo)
    assert m.good == 1
    assert m.request_goodput == pytest.approx(0.5)
    tpot_only = GoodputSLO.parse(["tpot:250"])
    assert compute_metrics(records, duration=2.0, t0=T0, slo=tpot_only).good == 2  # tpot 150, 200, 300


@pytest.mark.parametrize("items", [["ttft"], ["latency:5"], ["ttft:abc"], ["ttft:-1"]])
def test_goodput_rejects_bad_specs(items: list[str]) -> None:
    with pytest.raises(ValueError):
        GoodputSLO.parse(items)


def test_summarize_empty_is_none() -> None:
    assert summarize([]) is None
    m = compute_metrics([make_record(0.0, [], outcome=Outcome.FAILED, code="timeout")], duration=1.0, t0=T0)
    d = m.to_dict()
    assert d["completed"] == 0 and d["mean_ttft_ms"] is None and d["error_codes"] == {"timeout": 1}


@pytest.mark.parametrize(("total", "weights", "expected"), [
    (5, [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
    (7, [1, 1, 1], [3, 2, 2]),  # 4 spare split evenly, the remainder to the first
    (10, [1, 3], [3, 7]),  # 8 spare in proportion 1:3
    (6, [0, 5], [1, 5]),  # every chunk carried at least one token
    (2, [4, 4, 4], [1, 1, 0]),  # fewer tokens than chunks
])
def test_allocate_splits_a_total_over_chunks(total: int, weights: list[int], expected: list[int]) -> None:
    out = allocate(total, weights)
    assert out == expected
    assert sum(out) == total
