"""The benchmarks' NullRunner drives a real AsyncEngine to completion, with the tokens its formula promises, so
that the overhead benchmarks (benchmarks/) cannot silently measure a broken runner."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from benchmarks.null_runner import NullRunner
from service.engine.async_engine import AsyncEngine
from service.engine.output_stream import RequestResult
from service.engine.sampling_params import SamplingParams
from tests.factories import CharTokenizer, engine_config


def make_engine(runner: NullRunner, **cfg) -> AsyncEngine:
    return AsyncEngine(engine_config(block_size=runner.block_size, **cfg), runner, CharTokenizer())


async def read_stream(handle) -> tuple[list[int], str, str | None]:
    tokens, text, finish = [], "", None
    while finish is None:
        delta = await handle.stream.get()
        assert delta.error is None
        tokens += delta.token_ids
        text += delta.text
        finish = delta.finish_reason
    return tokens, text, finish


@pytest.mark.parametrize("max_num_batched_tokens", [512, 7])  # 7: prompts are prefilled in several chunks
async def test_every_request_gets_max_tokens_tokens_from_the_position_formula(max_num_batched_tokens):
    runner = NullRunner(vocab_size=200, max_model_len=256, num_blocks=256, block_size=4,
                        token_ids=range(65, 91))  # A..Z
    engine = make_engine(runner, max_num_batched_tokens=max_num_batched_tokens)
    await engine.start()
    shapes = [(1, 1), (5, 16), (12, 3), (30, 40)]  # (prompt length, max_tokens)
    handles = [engine.add_request([70] * n, SamplingParams(max_tokens=m, ignore_eos=True), stream=i % 2 == 0)
               for i, (n, m) in enumerate(shapes)]
    streamed = {h.request_id: asyncio.ensure_future(read_stream(h)) for h in handles if h.stream is not None}
    results: list[RequestResult] = await asyncio.gather(*(h.result() for h in handles))
    for (n, m), handle, result in zip(shapes, handles, results, strict=True):
        expected = [runner.token_at(n + i) for i in range(m)]
        assert result.token_ids == expected
        assert result.text == "".join(chr(t) for t in expected)
        assert (result.finish_reason, result.num_prompt_tokens) == ("length", n)
        if handle.request_id in streamed:
            assert await streamed[handle.request_id] == (expected, result.text, "length")
    assert runner.steps >= max(m for _, m in shapes)
    assert engine.num_live == 0
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    await engine.stop()


def test_default_token_ids_are_the_vocabulary_and_bad_ids_are_refused():
    assert NullRunner(vocab_size=10).token_ids == tuple(range(10))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        NullRunner(vocab_size=10, token_ids=[3, 10])
    with pytest.raises(ValueError, match="empty"):
        NullRunner(vocab_size=10, token_ids=[])


async def test_null_engine_streams_one_text_event_per_token_with_a_real_tokenizer(tiny_model_dir: Path):
    from benchmarks.null_model import null_engine

    engine, tokenizer = null_engine(tiny_model_dir, max_num_seqs=8)
    await engine.start()
    prompt = tokenizer.encode_now("Hello, my name is")
    handle = engine.add_request(prompt, SamplingParams(max_tokens=16, ignore_eos=True), stream=True)
    deltas = []
    while not deltas or not deltas[-1].finished:
        deltas.append(await handle.stream.get())
    result = await handle.result()
    assert len(result.token_ids) == 16 and result.finish_reason == "length"
    assert sum(len(d.token_ids) for d in deltas) == 16 and all(d.text for d in deltas)
    assert "".join(d.text for d in deltas) == result.text == tokenizer.decode(result.token_ids)
    # The benchmark's event count relies on this: every token is a non-empty text of its own, so a reader that
    # keeps up gets one event per token.
    assert all(tokenizer.decode([t]) for t in result.token_ids)
    await engine.stop()
