"""The official `openai` package, unchanged, against our server: completions, chat, streaming, n, logprobs,
stop strings, seeds, usage, models and embeddings."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import openai
import pytest

FIXTURES = Path(__file__).parent.parent / "fixtures" / "minilm_reference.json"


@pytest.fixture
async def oai(make_client):
    client = await make_client(embeddings=True)
    api = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    yield api
    await api.close()


async def test_completion_non_streaming(oai):
    resp = await oai.completions.create(model="tiny", prompt="def add(a, b):", max_tokens=8, temperature=0)
    choice = resp.choices[0]
    assert choice.finish_reason in ("length", "stop")
    assert isinstance(choice.text, str)
    assert resp.usage.completion_tokens <= 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


async def test_completion_streaming_matches_non_streaming_and_sends_usage_once(oai):
    full = await oai.completions.create(model="tiny", prompt="import os", max_tokens=12, temperature=0)
    stream = await oai.completions.create(model="tiny", prompt="import os", max_tokens=12, temperature=0,
                                          stream=True, stream_options={"include_usage": True})
    text, usage_chunks, finish = [], [], None
    async for chunk in stream:
        if chunk.usage is not None:
            usage_chunks.append(chunk)
            assert chunk.choices == []
            continue
        text.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    assert "".join(text) == full.choices[0].text
    assert finish == full.choices[0].finish_reason
    assert len(usage_chunks) == 1
    assert usage_chunks[0].usage.completion_tokens == full.usage.completion_tokens


async def test_chat_non_streaming_and_streaming(oai):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    full = await oai.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert full.choices[0].message.role == "assistant"
    stream = await oai.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                               stream=True)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == full.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


async def test_n_choices_are_distinct_and_reproducible_with_a_seed(oai):
    kw = {"model": "tiny", "prompt": "class A:", "max_tokens": 12, "temperature": 1.0, "n": 3, "seed": 1234}
    first = await oai.completions.create(**kw)
    second = await oai.completions.create(**kw)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert len(set(texts)) > 1  # different seeds per choice
    assert texts == [c.text for c in second.choices]
    assert 3 <= first.usage.completion_tokens <= 36


async def test_logprobs_completions_and_chat(oai):
    resp = await oai.completions.create(model="tiny", prompt="x = 1", max_tokens=5, temperature=0, logprobs=3)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for token, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert chosen <= 0.0
        assert len(top) <= 3  # the chosen token is among the top 3, as greedy picks the most likely
        assert top[token] == chosen and max(top.values()) == pytest.approx(chosen, abs=1e-6)
    sampled = await oai.completions.create(model="tiny", prompt="x = 1", max_tokens=8, temperature=2.0, seed=5,
                                           logprobs=0)
    lp = sampled.choices[0].logprobs
    assert [list(top) for top in lp.top_logprobs] == [[token] for token in lp.tokens]  # the chosen token alone
    assert [top[t] for t, top in zip(lp.tokens, lp.top_logprobs, strict=True)] == lp.token_logprobs
    chat = await oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                             max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(c.top_logprobs) == 2 for c in content)


async def test_stop_string_is_excluded_and_reported(oai):
    base = await oai.completions.create(model="tiny", prompt="def f():", max_tokens=20, temperature=0)
    text = base.choices[0].text
    assert len(text) > 4
    stop = text[2:4]
    cut = await oai.completions.create(model="tiny", prompt="def f():", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = await oai.completions.create(model="tiny", prompt="def f():", max_tokens=20, temperature=0,
                                            stop=[stop], stream=True)
    parts = [c.choices[0].text async for c in streamed if c.choices]
    assert "".join(parts) == cut.choices[0].text


async def test_seeded_sampling_is_reproducible(oai):
    kw = {"model": "tiny", "prompt": "for i in", "max_tokens": 16, "temperature": 0.9, "top_p": 0.9, "seed": 7}
    a = await oai.completions.create(**kw)
    b = await oai.completions.create(**kw)
    assert a.choices[0].text == b.choices[0].text


async def test_models_lists_both(oai):
    models = await oai.models.list()
    assert {m.id for m in models.data} == {"tiny", "all-MiniLM-L6-v2"}


async def test_models_retrieve_each_and_404_for_others(oai):
    listed = {m.id: m for m in (await oai.models.list()).data}
    for name, card in listed.items():
        assert await oai.models.retrieve(name) == card
    with pytest.raises(openai.NotFoundError) as info:
        await oai.models.retrieve("gpt-9")
    assert info.value.code == "model_not_found"


async def test_embeddings_with_the_generation_models_name_says_which_model_serves_them(oai):
    with pytest.raises(openai.NotFoundError, match="is the generation model; /v1/embeddings serves"):
        await oai.embeddings.create(input="x", model="tiny")


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
async def test_embeddings_match_sentence_transformers(oai, encoding_format):
    ref = json.loads(FIXTURES.read_text())
    resp = await oai.embeddings.create(model="all-MiniLM-L6-v2", input=ref["sentences"],
                                       encoding_format=encoding_format)
    if encoding_format == "base64":  # asked for explicitly, the package hands back the raw base64 text
        got = np.array([np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in resp.data])
    else:
        got = np.array([d.embedding for d in resp.data], dtype=np.float64)
    want = np.array(ref["embeddings"])
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5
    assert resp.usage.prompt_tokens > len(ref["sentences"])


async def test_embeddings_default_format_decodes_to_the_fixture(oai):
    """Without encoding_format the package asks for base64 itself and decodes it: the vectors must survive."""
    ref = json.loads(FIXTURES.read_text())
    resp = await oai.embeddings.create(model="all-MiniLM-L6-v2", input=ref["sentences"][:2])
    got = np.array([d.embedding for d in resp.data])
    assert np.abs(got - np.array(ref["embeddings"][:2])).max() < 1e-5


async def test_embeddings_from_token_ids_equal_text(make_client):
    ref = json.loads(FIXTURES.read_text())
    client = await make_client(embeddings=True)
    tok = await client.post("/v1/embeddings", json={"input": ref["sentences"][0]})
    text_vec = (await tok.json())["data"][0]["embedding"]
    from service.api.context import CONTEXT
    ids = client.app[CONTEXT].embeddings.tokenizer.encode_now(ref["sentences"][0])
    by_ids = await client.post("/v1/embeddings", json={"input": ids})
    assert np.allclose((await by_ids.json())["data"][0]["embedding"], text_vec, atol=1e-6)
