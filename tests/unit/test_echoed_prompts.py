"""EchoedPrompts: in a stream with echo + logprobs, a prompt's choices wait for its first choice's prompt
logprobs, then go out in order."""

from __future__ import annotations

from service.api.completions import EchoedPrompts
from service.api.logprobs import completion_logprobs
from service.engine.output_stream import RequestDelta
from service.engine.outputs import TokenLogprobs


def lp(token: int) -> TokenLogprobs:
    return TokenLogprobs(token, -1.0, ())


def token_text(token: int) -> str:
    return f"<{token}>"


def echoes_of(num_prompts: int, n: int) -> EchoedPrompts:
    return EchoedPrompts([[100 + p] for p in range(num_prompts)], n, token_text)


def test_a_choice_that_samples_first_waits_for_the_first_choices_prompt_logprobs():
    echoes = echoes_of(num_prompts=1, n=3)
    early = RequestDelta("a", [7], [lp(7)])
    assert echoes.arrive(2, early) == []  # choice 2 prefilled from the cache and sampled first
    assert echoes.arrive(0, RequestDelta(prompt_logprobs=[None, lp(1)])) == []  # a first chunk of the prompt
    later = RequestDelta("b", [8], [lp(8)])
    assert echoes.arrive(2, later) == []
    completing = RequestDelta("c", [9], [lp(9)], prompt_logprobs=[lp(2)])
    ready = echoes.arrive(0, completing)
    assert [i for i, _ in ready] == [0, 2]
    assert ready[1][1].text == "ab" and ready[1][1].token_ids == [7, 8]  # held deltas merged, in order
    assert echoes.listing(0) == completion_logprobs([None, lp(1), lp(2)], token_text, first_prompt_token=100)
    assert echoes.listing(0)["tokens"] == ["<100>", "<1>", "<2>"]
    after = RequestDelta("d", [10], [lp(10)])
    assert echoes.arrive(1, after) == [(1, after)]  # the prompt is complete: no more waiting


def test_prompts_are_independent_and_a_first_choice_that_ends_completes_its_prompt():
    echoes = echoes_of(num_prompts=2, n=2)
    other = RequestDelta("x", [5], [lp(5)])
    assert echoes.arrive(3, other) == []
    held = RequestDelta("y", [6], [lp(6)])
    assert echoes.arrive(1, held) == []
    ended = RequestDelta(finish_reason="abort")
    assert echoes.arrive(2, ended) == [(2, ended), (3, other)]  # prompt 1: no tokens, yet complete
    assert echoes.listing(1)["tokens"] == ["<101>"]  # only the first prompt token, with null logprobs
    assert echoes.listing(1)["token_logprobs"] == [None]
    first = RequestDelta("z", [4], [lp(4)], prompt_logprobs=[None])
    assert echoes.arrive(0, first) == [(0, first), (1, held)]
