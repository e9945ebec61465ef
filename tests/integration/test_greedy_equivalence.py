"""Acceptance 1: greedy outputs through the HTTP server are token-identical to HF `generate`, whatever else
shares the batch: with default settings, with chunked prefill, and with preemption.

The tiny model runs in float64 and is initialised with a wide weight spread, so logits have no near-ties and
the comparison is exact rather than flaky.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from service.api.context import CONTEXT
from service.engine.tokenizer import Tokenizer
from service.model_builder import corpus_files

NUM_PROMPTS = 18


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    """The reference: HF's own model, eager attention, float64 (as the engine runs in these tests)."""
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64,
                                                attn_implementation="eager").eval()


def hf_greedy(model, ids: list[int], max_tokens: int) -> list[int]:
    with torch.no_grad():
        gen = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_tokens,
                             attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    return list(gen[0, len(ids):].tolist())


@pytest.fixture(scope="module")
def cases(tiny_model_dir, hf_model) -> list[tuple[list[int], int, list[int]]]:
    """(prompt ids, max_tokens, expected ids from HF generate) for prompts of mixed lengths."""
    tok = Tokenizer(str(tiny_model_dir))
    source = "".join(f.read_text() for f in corpus_files()[:10])
    rng = random.Random(7)
    out = []
    for _ in range(NUM_PROMPTS):
        start = rng.randrange(0, len(source) - 400)
        text = source[start : start + rng.choice([1, 5, 20, 60, 150, 300])]
        ids = tok.encode_now(text)[:70] or [5]
        max_tokens = rng.choice([4, 12, 24, 40])
        out.append((ids, max_tokens, hf_greedy(hf_model, ids, max_tokens)))
    return out


async def generate_all(client, cases, stream: bool) -> list[list[int]]:
    """Send every case concurrently and return each one's generated ids.

    Arrivals are paced by engine steps, not by the clock: the i-th request goes out once the engine has run
    i steps (or once every earlier request has finished), so each joins a batch that is already running
    however fast this machine steps.
    """
    engine = client.app[CONTEXT].engine
    steps = finished = 0

    def count_step(*_: object) -> None:
        nonlocal steps
        steps += 1

    async def one(i: int, ids: list[int], max_tokens: int) -> list[int]:
        nonlocal finished
        while steps < i and finished < i:
            await asyncio.sleep(0.001)
        body = {"prompt": ids, "max_tokens": max_tokens, "temperature": 0.0, "return_token_ids": True,
                "stream": stream}
        try:
            resp = await client.post("/v1/completions", json=body)
            assert resp.status == 200, await resp.text()
            if not stream:
                return (await resp.json())["choices"][0]["token_ids"]
            tokens: list[int] = []
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    tokens.extend(json.loads(line[6:])["choices"][0]["token_ids"] or [])
            return tokens
        finally:
            finished += 1

    engine.on_step.append(count_step)
    try:
        return list(await asyncio.gather(*(one(i, ids, mt) for i, (ids, mt, _) in enumerate(cases))))
    finally:
        engine.on_step.remove(count_step)


@pytest.mark.parametrize(
    ("label", "engine_kw"),
    [
        ("default", {}),
        ("chunked-prefill", {"max_num_batched_tokens": 7}),
        ("preemption", {"num_blocks": 40, "block_size": 4}),
        ("gather-decode", {"decode_mirror": False, "max_num_batched_tokens": 16}),
        ("tiny-mirror", {"num_blocks": 40, "block_size": 4, "max_num_batched_tokens": 9}),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_greedy_matches_hf_generate(make_client, cases, label, engine_kw, stream):
    client = await make_client(**engine_kw)
    engine = client.app[CONTEXT].engine
    steps = []
    engine.on_step.append(lambda sched, out, dt: steps.append(sched))

    got = await generate_all(client, cases, stream)

    for i, (g, (_, _, expected)) in enumerate(zip(got, cases, strict=True)):
        assert g == expected, f"{label}: prompt {i} diverged"
    assert max(len(s.chunks) for s in steps) > 1, "requests never shared a step"
    if label == "chunked-prefill":
        assert any(not c.sample for s in steps for c in s.chunks), "no prompt was split across steps"
        assert any(c.num_tokens == 1 for s in steps for c in s.chunks if len(s.chunks) > 1)
    if label == "preemption":
        assert engine.scheduler.num_preemptions_total > 0, "the small cache forced no preemption"
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


@pytest.fixture(scope="module")
def shared_prefix_cases(tiny_model_dir, hf_model) -> list[tuple[list[int], int, list[int]]]:
    """Prompts built from three long common prefixes with different tails, so most blocks are shared."""
    tok = Tokenizer(str(tiny_model_dir))
    source = "".join(f.read_text() for f in corpus_files()[:10])
    prefixes = [tok.encode_now(source[i : i + 400])[:48] for i in (1000, 9000, 20000)]
    out = []
    for i in range(12):
        tail = tok.encode_now(source[30000 + 37 * i : 30000 + 37 * i + 30])[: 1 + i % 7]
        ids = prefixes[i % 3] + tail
        out.append((ids, 16, hf_greedy(hf_model, ids, 16)))
    return out


@pytest.mark.parametrize("engine_kw", [{}, {"num_blocks": 48, "max_num_batched_tokens": 24}],
                         ids=["roomy", "tight-cache-chunked"])
async def test_prefix_cache_hits_stay_token_identical(make_client, shared_prefix_cases, engine_kw):
    client = await make_client(block_size=4, **engine_kw)
    engine = client.app[CONTEXT].engine
    first = await generate_all(client, shared_prefix_cases[:3], stream=False)  # warms the cache
    rest = await generate_all(client, shared_prefix_cases[3:], stream=True)
    for i, (g, (_, _, expected)) in enumerate(zip(first + rest, shared_prefix_cases, strict=True)):
        assert g == expected, f"prompt {i} diverged"
    stats = engine.block_manager.stats
    assert stats.hits >= 9 * 40, f"expected most of each shared 48-token prefix to hit, got {stats.hits}"
    engine.block_manager.check_invariants()


@pytest.mark.parametrize("decode_mirror", [True, False], ids=["mirror", "gather"])
async def test_prefix_written_in_the_same_step_is_read_after_it_is_written(make_client, cases, hf_model,
                                                                           decode_mirror):
    """Two copies of a prompt one token longer than whole blocks, admitted in one step: the second finds the
    first's blocks in the prefix cache while that same step is writing them, and computes only its last token,
    so it decodes from its first step on. Its context must be read after the step's writes."""
    client = await make_client(block_size=4, decode_mirror=decode_mirror)
    engine = client.app[CONTEXT].engine
    ids = next(c[0] for c in cases if len(c[0]) >= 9)
    ids = ids[: 4 * ((len(ids) - 1) // 4) + 1]
    expected = hf_greedy(hf_model, ids, 8)
    resp = await client.post("/v1/completions", json={"prompt": ids, "max_tokens": 8, "temperature": 0, "n": 2,
                                                      "return_token_ids": True})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert [c["token_ids"] for c in body["choices"]] == [expected, expected]
    assert engine.block_manager.stats.hits == len(ids) - 1  # the second copy did find the first's blocks


@pytest.mark.parametrize("engine_kw", [{}, {"max_num_batched_tokens": 7}, {"num_blocks": 24, "block_size": 4}],
                         ids=["roomy", "chunked-prefill", "preempting"])
async def test_logprobs_equal_hf_log_softmax(make_client, hf_model, cases, engine_kw):
    """The numbers themselves: every prompt and output token's logprob and its top alternatives are HF's
    log-softmax at that position (the sampler works in float32, hence the tolerance). Also with prompts
    prefilled in chunks, and with requests preempted and recomputed (sent together, so they compete)."""
    client = await make_client(**engine_kw)
    positions = compared = 0
    chosen_cases = cases[:6]
    responses = await asyncio.gather(*(
        client.post("/v1/completions", json={"prompt": ids, "max_tokens": max_tokens, "temperature": 0,
                                             "logprobs": 3, "echo": True})
        for ids, max_tokens, _ in chosen_cases))
    for resp, (ids, _, expected) in zip(responses, chosen_cases, strict=True):
        assert resp.status == 200, await resp.text()
        lp = (await resp.json())["choices"][0]["logprobs"]
        sequence = ids + expected
        with torch.no_grad():
            logsoftmax = torch.log_softmax(hf_model(torch.tensor([sequence])).logits[0], dim=-1)
        assert len(lp["token_logprobs"]) == len(sequence)
        assert lp["token_logprobs"][0] is None
        for pos in range(1, len(sequence)):
            row = logsoftmax[pos - 1]
            assert lp["token_logprobs"][pos] == pytest.approx(float(row[sequence[pos]]), abs=1e-4), pos
            # The entry holds the token itself and the 3 most likely: 4 values, or 3 when it is among them.
            expected = torch.topk(row, 3).values.tolist()
            chosen = float(row[sequence[pos]])
            if min(abs(chosen - v) for v in expected) > 1e-12:
                expected.append(chosen)
            top = sorted(lp["top_logprobs"][pos].values())
            positions += 1
            if len(top) == len(expected):  # fewer if two of them decode to the same text
                assert top == pytest.approx(sorted(expected), abs=1e-4), pos
                compared += 1
    assert compared >= 0.9 * positions
    if "num_blocks" in engine_kw:
        assert client.app[CONTEXT].engine.scheduler.num_preemptions_total > 0


async def test_blocks_of_a_failed_step_are_not_served_from_the_prefix_cache(make_client, cases):
    """A step that raises never wrote the KV of the blocks it was to fill, which the scheduler had already
    registered in the prefix cache; a later request with the same prompt must not reuse them."""
    client = await make_client(block_size=4)
    engine = client.app[CONTEXT].engine
    ids, max_tokens, expected = next(c for c in cases if len(c[0]) >= 12)
    execute = engine.runner.execute
    calls = 0

    def fail_first_step(sched):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected: the device fell over")
        return execute(sched)

    engine.runner.execute = fail_first_step
    body = {"prompt": ids, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
    failed = await client.post("/v1/completions", json=body)
    assert failed.status == 500
    retried = await client.post("/v1/completions", json=body)
    assert retried.status == 200, await retried.text()
    assert (await retried.json())["choices"][0]["token_ids"] == expected
