from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.sampler import Sampler, SamplingState
from service.engine.sampling_params import SamplingParams


def state(**kw) -> SamplingState:
    return SamplingState(SamplingParams(max_tokens=8, **kw), prompt_token_ids=[1, 2, 3])


def seeded(seed: int, **kw) -> SamplingState:
    s = state(seed=seed, **kw)
    s.generator = torch.Generator().manual_seed(seed)
    return s


def logits_for(n: int, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    sampler = Sampler(50, torch.device("cpu"), seed=0)
    logits = logits_for(4)
    tokens, _ = sampler.sample(logits.clone(), [state(temperature=0.0) for _ in range(4)])
    assert tokens == logits.argmax(-1).tolist()


def test_temperatures_too_small_to_divide_by_are_greedy():
    """Below 1e-5 (vLLM's threshold) a temperature samples greedily, alone or beside sampled rows: dividing the
    logits by 1e-39 would overflow float32."""
    sampler = Sampler(50, torch.device("cpu"), seed=0)
    logits = logits_for(4)
    tiny = [state(temperature=t) for t in (1e-39, 5e-324, 9e-6)]
    tokens, _ = sampler.sample(logits[:3].clone(), tiny)
    assert tokens == logits[:3].argmax(-1).tolist()
    tokens, _ = sampler.sample(logits.clone(), [*tiny, state(temperature=1.0)])
    assert tokens[:3] == logits[:3].argmax(-1).tolist()


def test_seeds_that_differ_only_in_high_bits_draw_differently():
    sampler = Sampler(50, torch.device("cpu"), seed=0)
    seeds = [0, 2**32, 2**40, 2**63, 2**64 - 1, 2**63 - 1, 2**32 - 1]
    draws = {tuple(torch.rand(4, generator=sampler.new_generator(s)).tolist()) for s in seeds}
    assert len(draws) == len(seeds)
    again = sampler.new_generator(2**63)
    assert torch.equal(torch.rand(4, generator=again), torch.rand(4, generator=sampler.new_generator(2**63)))


def test_a_tiny_repetition_penalty_keeps_the_exact_order_of_seen_tokens():
    """1e-45 divided seen tokens' logits into inf, so the first seen token won; the right winner is the seen token
    with the largest positive logit, as any penalty small enough to lift it over the unseen ones gives."""
    sampler = Sampler(50, torch.device("cpu"), seed=0)
    logits = torch.full((1, 50), -1.0)
    logits[0, 7] = 30.0  # unseen
    logits[0, 3], logits[0, 4] = 1.0, 2.0  # seen (in the prompt)
    s = SamplingState(SamplingParams(max_tokens=8, temperature=0.0, repetition_penalty=1e-45),
                      prompt_token_ids=[3, 4])
    tokens, _ = sampler.sample(logits.clone(), [s])
    assert tokens == [4]


def test_seeded_row_is_batch_invariant():
    """One request's seeded draws do not depend on what its batch mates are or ask for."""
    logits = logits_for(1)[0]
    alone_sampler = Sampler(50, torch.device("cpu"), seed=0)
    s_alone = seeded(42)
    alone = [alone_sampler.sample(logits[None].clone(), [s_alone])[0][0] for _ in range(20)]

    busy_sampler = Sampler(50, torch.device("cpu"), seed=123)
    s_busy = seeded(42)
    busy = []
    for step in range(20):
        mates = [state(temperature=0.7, top_k=5), state(temperature=0.0), seeded(step, top_p=0.5, min_p=0.1),
                 state(temperature=1.3, repetition_penalty=1.2)]
        batch = torch.cat([logits_for(2, seed=step + 1), logits[None], logits_for(2, seed=step + 50)])
        tokens, _ = busy_sampler.sample(batch.clone(), [mates[0], mates[1], s_busy, mates[2], mates[3]])
        busy.append(tokens[2])
    assert busy == alone


def test_top_k_1_is_greedy_and_top_p_tiny_is_greedy():
    sampler = Sampler(50, torch.device("cpu"), seed=0)
    logits = logits_for(2)
    tokens, _ = sampler.sample(logits.clone(), [state(temperature=1.0, top_k=1), state(temperature=1.0, top_p=1e-6)])
    assert tokens == logits.argmax(-1).tolist()


def test_top_k_restricts_support():
    sampler = Sampler(50, torch.device("cpu"), seed=0)
    logits = logits_for(1)
    top3 = set(torch.topk(logits[0], 3).indices.tolist())
    seen = {sampler.sample(logits.clone(), [state(temperature=2.0, top_k=3)])[0][0] for _ in range(200)}
    assert seen <= top3 and len(seen) >= 2


def test_top_k_above_the_vocabulary_keeps_it_all():
    """A k past the vocabulary (even past int64, for a caller of the engine API) is the whole vocabulary: it must
    not fail the step, which would fail every request in the batch."""
    logits = logits_for(3)
    plain = [seeded(7, temperature=1.0), seeded(8, temperature=1.0), state(temperature=0.0)]
    huge = [seeded(7, temperature=1.0, top_k=51), seeded(8, temperature=1.0, top_k=2**64), state(temperature=0.0)]
    expected, _ = Sampler(50, torch.device("cpu"), seed=0).sample(logits.clone(), plain)
    tokens, _ = Sampler(50, torch.device("cpu"), seed=0).sample(logits.clone(), huge)
    assert tokens == expected


def test_min_tokens_masks_stop_ids_and_logit_bias_applies():
    sampler = Sampler(50, torch.device("cpu"), seed=0)
    logits = torch.zeros(1, 50)
    logits[0, 7] = 10.0
    s = state(temperature=0.0, min_tokens=2)
    s.stop_ids = frozenset({7})
    assert sampler.sample(logits.clone(), [s])[0][0] != 7
    biased = state(temperature=0.0, logit_bias=((3, 100.0),))
    assert sampler.sample(logits.clone(), [biased])[0][0] == 3


def test_logprobs_report_chosen_token_and_top_k():
    sampler = Sampler(50, torch.device("cpu"), seed=0)
    logits = logits_for(1)
    tokens, lps = sampler.sample(logits.clone(), [state(temperature=0.0, logprobs=3)])
    lp = lps[0]
    assert lp is not None and lp.token_id == tokens[0]
    expected = torch.log_softmax(logits[0], -1)
    assert abs(lp.logprob - expected[tokens[0]].item()) < 1e-5
    assert [t for t, _ in lp.top] == torch.topk(expected, 3).indices.tolist()


def test_penalties_discourage_repeats():
    sampler = Sampler(50, torch.device("cpu"), seed=0)
    logits = torch.zeros(1, 50)
    logits[0, 5] = 1.0
    logits[0, 6] = 0.9
    s = state(temperature=0.0, presence_penalty=2.0)
    s.output_token_ids = [5]
    assert sampler.sample(logits.clone(), [s])[0][0] == 6


VOCAB = 200

# Every SamplingParams that validates, extremes included: whatever a request may ask, a step must sample it. (A
# sampler error fails the whole step, every request in the batch with it.)
_valid_params = st.builds(
    SamplingParams,
    max_tokens=st.just(64),
    min_tokens=st.integers(0, 64),
    temperature=st.one_of(st.sampled_from([0.0, 1e-39, 1e-5, 2.0]), st.floats(0.0, 2.0)),
    top_p=st.one_of(st.sampled_from([1e-300, 1.0]), st.floats(0.0, 1.0, exclude_min=True)),
    top_k=st.one_of(st.integers(0, VOCAB + 1), st.just(2**64)),
    min_p=st.floats(0.0, 1.0),
    repetition_penalty=st.one_of(st.sampled_from([5e-324, 1e-6, 2.0]), st.floats(0.0, 2.0, exclude_min=True)),
    presence_penalty=st.floats(-2.0, 2.0),
    frequency_penalty=st.floats(-2.0, 2.0),
    seed=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    logprobs=st.one_of(st.none(), st.integers(0, 20)),
    logit_bias=st.lists(st.tuples(st.integers(0, VOCAB - 1), st.floats(-100.0, 100.0)), max_size=300).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(
    params=st.lists(_valid_params, min_size=1, max_size=4),
    history=st.lists(st.integers(0, VOCAB - 1), max_size=20),
    stop_ids=st.frozensets(st.integers(0, VOCAB - 1), max_size=65),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
)
def test_any_valid_parameters_sample_a_token_in_the_vocabulary(params, history, stop_ids, scale):
    sampler = Sampler(VOCAB, torch.device("cpu"), seed=0)
    states = []
    for p in params:
        s = SamplingState(p, prompt_token_ids=[1, 2, 3], output_token_ids=list(history), stop_ids=stop_ids)
        if p.seed is not None:
            s.generator = sampler.new_generator(p.seed)
        states.append(s)
    logits = torch.randn(len(states), VOCAB, generator=torch.Generator().manual_seed(1)) * scale
    tokens, logprobs = sampler.sample(logits, states)
    assert all(0 <= t < VOCAB for t in tokens)
    for t, lp, p in zip(tokens, logprobs, params, strict=True):
        if p.logprobs is None:
            assert lp is None
        else:
            assert lp is not None and lp.token_id == t and len(lp.top) == p.logprobs
