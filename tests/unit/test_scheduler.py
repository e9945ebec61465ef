from __future__ import annotations

import pytest

from service.engine.request import RequestStatus
from service.errors import BadRequestError, ContextLengthExceededError
from tests.factories import make_request, make_scheduler, runner_output


def run_to_completion(sched, max_steps=1000, token=1):
    steps = []
    for _ in range(max_steps):
        if not sched.has_unfinished():
            break
        out = sched.schedule()
        steps.append(out)
        sched.update_from_output(out, runner_output(out, token))
    return steps


def test_decodes_first_then_fcfs_prefills_within_budget():
    s = make_scheduler(max_num_batched_tokens=20)
    a, b, c = make_request(8), make_request(8), make_request(8)
    for r in (a, b, c):
        s.add_request(r)
    out = s.schedule()
    # a and b fit whole; c gets the remaining 4 tokens as a first chunk.
    assert [(ch.request_id, ch.num_tokens) for ch in out.chunks] == [(a.request_id, 8), (b.request_id, 8),
                                                                     (c.request_id, 4)]
    assert [ch.sample for ch in out.chunks] == [True, True, False]
    s.update_from_output(out, runner_output(out))
    out2 = s.schedule()
    # Decodes of a and b come first, then the rest of c's prompt.
    assert [(ch.request_id, ch.num_tokens, ch.start) for ch in out2.chunks] == [
        (a.request_id, 1, 8), (b.request_id, 1, 8), (c.request_id, 4, 4)]
    assert out2.num_batched_tokens == 6


def test_chunked_prefill_spans_steps_and_samples_only_at_the_end():
    s = make_scheduler(max_num_batched_tokens=5)
    r = make_request(13, max_tokens=2)
    s.add_request(r)
    steps = run_to_completion(s)
    chunks = [(st.chunks[0].start, st.chunks[0].num_tokens, st.chunks[0].sample) for st in steps]
    assert chunks == [(0, 5, False), (5, 5, False), (10, 3, True), (13, 1, True)]
    assert r.status == RequestStatus.FINISHED_LENGTH
    assert r.output_token_ids == [1, 1]


def test_max_num_seqs_caps_the_running_batch():
    s = make_scheduler(max_num_seqs=2)
    reqs = [make_request(4) for _ in range(3)]
    for r in reqs:
        s.add_request(r)
    out = s.schedule()
    assert {c.request_id for c in out.chunks} == {reqs[0].request_id, reqs[1].request_id}
    assert s.num_waiting == 1


def test_stops_on_eos_stop_token_and_length():
    s = make_scheduler()
    eos = make_request(4, max_tokens=10, eos=frozenset({1}))
    stop_tok = make_request(4, max_tokens=10, stop_token_ids=(1,))
    ignore = make_request(4, max_tokens=3, eos=frozenset({1}), ignore_eos=True)
    min_tok = make_request(4, max_tokens=10, eos=frozenset({1}), min_tokens=2)
    for r in (eos, stop_tok, ignore, min_tok):
        s.add_request(r)
    run_to_completion(s, token=1)
    # stop_reason names a stop token the request asked for, not the model's own EOS (vLLM's convention).
    assert (eos.status, eos.stop_reason, eos.num_output_tokens) == (RequestStatus.FINISHED_STOPPED, None, 1)
    assert (stop_tok.status, stop_tok.stop_reason, stop_tok.num_output_tokens) == (RequestStatus.FINISHED_STOPPED, 1, 1)
    assert (ignore.status, ignore.num_output_tokens) == (RequestStatus.FINISHED_LENGTH, 3)
    assert (min_tok.status, min_tok.num_output_tokens) == (RequestStatus.FINISHED_STOPPED, 2)


def test_preemption_recomputes_youngest_and_everyone_finishes():
    # 10 blocks of 4 tokens; three requests of 8 prompt + 8 output need 4 blocks each at the end.
    s = make_scheduler(num_blocks=10, block_size=4, max_num_batched_tokens=64)
    reqs = [make_request(8, max_tokens=8) for _ in range(3)]
    for r in reqs:
        s.add_request(r)
    steps = run_to_completion(s)
    preempted = [rid for st in steps for rid in st.preempted_request_ids]
    assert preempted, "the cache is too small for all three: someone must be preempted"
    assert preempted[0] == reqs[2].request_id  # the most recently admitted
    assert all(r.status == RequestStatus.FINISHED_LENGTH and r.num_output_tokens == 8 for r in reqs)
    assert reqs[2].num_preemptions >= 1
    assert s.block_manager.num_free_blocks == 10
    # A preempted request is recomputed from scratch, outputs included.
    resumed = next(st for st in steps if any(c.request_id == reqs[2].request_id and c.start == 0 and c.num_tokens > 8
                                             for c in st.chunks))
    assert resumed is not None


def test_rejects_requests_that_can_never_fit():
    s = make_scheduler(num_blocks=4, block_size=4, max_model_len=100)
    with pytest.raises(ContextLengthExceededError):
        s.add_request(make_request(90, max_tokens=20))
    with pytest.raises(BadRequestError, match="KV cache"):
        s.add_request(make_request(10, max_tokens=10))  # 20 tokens > 16 slots


def test_abort_waiting_and_running_frees_blocks_and_reports_to_runner():
    s = make_scheduler(max_num_seqs=1)
    running, waiting = make_request(4), make_request(4)
    s.add_request(running)
    s.add_request(waiting)
    out = s.schedule()
    s.update_from_output(out, runner_output(out))
    s.finish_request(waiting.request_id, RequestStatus.FINISHED_ABORTED)
    s.finish_request(running.request_id, RequestStatus.FINISHED_ABORTED)
    assert not s.has_unfinished()
    assert s.num_waiting_tokens == 0
    assert s.block_manager.num_free_blocks == s.block_manager.num_blocks
    nxt = make_request(4)
    s.add_request(nxt)
    out = s.schedule()
    assert set(out.finished_request_ids) == {running.request_id, waiting.request_id}


def test_result_of_a_request_aborted_mid_step_is_dropped():
    s = make_scheduler()
    r = make_request(4)
    s.add_request(r)
    out = s.schedule()
    s.finish_request(r.request_id, RequestStatus.FINISHED_ABORTED)
    s.update_from_output(out, runner_output(out))
    assert r.output_token_ids == []
    assert r.num_computed_tokens == 0


def test_waiting_prefill_with_prefix_cache_hit_skips_cached_tokens():
    s = make_scheduler(prefix_caching=True, block_size=4)
    prompt = list(range(20, 32))  # 12 tokens = 3 blocks
    first = make_request(prompt=prompt, max_tokens=1)
    s.add_request(first)
    run_to_completion(s)
    second = make_request(prompt=prompt + [5, 6], max_tokens=1)
    s.add_request(second)
    out = s.schedule()
    assert out.chunks[0].start == 12 and out.chunks[0].num_tokens == 2
    assert second.num_cached_tokens == 12
    assert s.block_manager.stats.hits == 12


def test_priority_policy_orders_by_priority_then_arrival_and_preempts_least_urgent():
    s = make_scheduler(policy="priority", max_num_seqs=1, aging_s=1000.0)
    low = make_request(4, priority=5, arrival=0.0)
    high = make_request(4, priority=0, arrival=1.0)
    s.add_request(low)
    s.add_request(high)
    out = s.schedule()
    assert out.chunks[0].request_id == high.request_id


def test_priority_aging_lets_an_old_low_priority_request_run():
    s = make_scheduler(policy="priority", max_num_seqs=1, aging_s=1.0)
    old_low = make_request(4, priority=10, arrival=0.0)
    new_high = make_request(4, priority=0, arrival=20.0)  # 20 s later: the old one has aged 20 levels
    s.add_request(new_high)
    s.add_request(old_low)
    out = s.schedule()
    assert out.chunks[0].request_id == old_low.request_id


def test_priority_preemption_takes_the_least_urgent_running_request():
    # 6 blocks of 4; each request holds 2 blocks after its 8-token prompt and needs a third to decode past 12.
    s = make_scheduler(num_blocks=6, block_size=4, policy="priority", aging_s=1e6, max_num_batched_tokens=64)
    urgent = make_request(8, max_tokens=8, priority=0, arrival=0.0)
    lazy = make_request(8, max_tokens=8, priority=9, arrival=1.0)
    middle = make_request(8, max_tokens=8, priority=3, arrival=2.0)
    for r in (urgent, lazy, middle):
        s.add_request(r)
    steps = run_to_completion(s)
    preempted = [rid for st in steps for rid in st.preempted_request_ids]
    assert preempted[0] == lazy.request_id
    assert all(r.status == RequestStatus.FINISHED_LENGTH for r in (urgent, lazy, middle))
