"""The SDK against the real server on the tiny model: every method, streamed and not, typed errors, and
hanging up mid-stream (break or task cancellation), after which the engine must show the request aborted.

Chat, embeddings and tokenize/detokenize skip, naming the route, on a server build that lacks the route.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest

from service.api.context import CONTEXT
from service.client import (
    AsyncClient,
    BadRequestError,
    ChatDelta,
    CompletionDelta,
    NotFoundError,
)

GREEDY = {"temperature": 0.0, "ignore_eos": True}


@pytest.fixture
async def served(make_client):
    """(aiohttp test client, AsyncClient on it)."""
    tc = await make_client()
    async with AsyncClient(str(tc.make_url("")), timeout=30, idle_timeout=10, max_retries=0) as client:
        yield tc, client


def require_route(tc, method: str, path: str) -> None:
    routes = {(r.method, r.resource.canonical) for r in tc.app.router.routes() if r.resource is not None}
    if (method, path) not in routes:
        pytest.skip(f"the server has no {method} {path} route yet")


async def wait_for_abort(engine, before: int) -> None:
    """Until the engine has finished one more request as "abort" and holds no live request (5 s at most)."""
    for _ in range(500):
        if engine.stats.requests_finished.get("abort", 0) > before and engine.num_live == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no abort: finished={engine.stats.requests_finished}, live={engine.num_live}")


async def test_complete_returns_text_token_ids_usage_and_logprobs(served):
    _, client = served
    result = await client.complete("def fib(n):", max_tokens=6, return_token_ids=True, logprobs=2, **GREEDY)
    assert result.finish_reason == "length"
    assert result.token_ids is not None and len(result.token_ids) == 6
    assert result.choices[0].prompt_token_ids
    assert result.usage is not None and result.usage.completion_tokens == 6
    assert result.usage.total_tokens == result.usage.prompt_tokens + 6
    assert result.logprobs is not None and len(result.logprobs.tokens) == 6
    assert all(lp is not None and lp <= 0 for lp in result.logprobs.token_logprobs)
    assert result.text == "".join(result.logprobs.tokens)
    assert result.request_id is not None and result.id.endswith(result.request_id.removeprefix("cmpl-"))


async def test_stream_complete_matches_complete_and_reports_usage(served):
    _, client = served
    whole = await client.complete("import os", max_tokens=12, return_token_ids=True, **GREEDY)
    stream = client.stream_complete("import os", max_tokens=12, return_token_ids=True, **GREEDY)
    deltas = [d async for d in stream]
    assert all(isinstance(d, CompletionDelta) for d in deltas)
    assert "".join(d.text for d in deltas) == whole.text
    assert [t for d in deltas for t in d.token_ids or []] == whole.token_ids
    assert deltas[-1].finish_reason == "length" and stream.finish_reason == "length"
    assert stream.usage == whole.usage
    assert stream.request_id is not None and stream.id == stream.request_id


async def test_stream_with_several_choices_tracks_each_finish_reason(served):
    _, client = served
    async with client.stream_complete(["a = 1", "b = 2"], max_tokens=3, **GREEDY) as stream:
        texts: dict[int, str] = {}
        async for d in stream:
            texts[d.index] = texts.get(d.index, "") + d.text
    assert stream.finish_reasons == {0: "length", 1: "length"}
    assert set(texts) == {0, 1}
    assert stream.usage is not None and stream.usage.completion_tokens == 6


async def test_breaking_out_of_a_stream_aborts_the_request(served):
    tc, client = served
    engine = tc.app[CONTEXT].engine
    before = engine.stats.requests_finished.get("abort", 0)
    received = 0
    async for _ in client.stream_complete("while True:", max_tokens=400, **GREEDY):
        received += 1
        if received == 2:
            break
    await wait_for_abort(engine, before)
    assert engine.stats.requests_finished.get("length", 0) == 0  # it did not run to completion


async def test_breaking_inside_async_with_aborts_the_request_at_the_blocks_exit(served):
    tc, client = served
    engine = tc.app[CONTEXT].engine
    before = engine.stats.requests_finished.get("abort", 0)
    async with client.stream_complete("while True:", max_tokens=400, **GREEDY) as stream:
        async for _ in stream:
            break
    await wait_for_abort(engine, before)
    assert engine.stats.requests_finished.get("length", 0) == 0


async def test_cancelling_the_reading_task_aborts_the_request(served):
    tc, client = served
    engine = tc.app[CONTEXT].engine
    before = engine.stats.requests_finished.get("abort", 0)
    first = asyncio.Event()

    async def consume() -> None:
        async with client.stream_complete("for i in range(10):", max_tokens=400, **GREEDY) as stream:
            async for _ in stream:
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for_abort(engine, before)


async def test_aclose_aborts_and_the_client_stays_usable(served):
    tc, client = served
    engine = tc.app[CONTEXT].engine
    before = engine.stats.requests_finished.get("abort", 0)
    stream = client.stream_complete("class A:", max_tokens=400, **GREEDY)
    await anext(stream)
    await stream.aclose()
    assert [d async for d in stream] == []  # a closed stream is simply exhausted
    await wait_for_abort(engine, before)
    assert (await client.complete("x", max_tokens=2, **GREEDY)).usage.completion_tokens == 2


async def test_invalid_parameter_raises_bad_request_with_the_servers_error(served):
    _, client = served
    with pytest.raises(BadRequestError) as info:
        await client.complete("x", max_tokens=4, temperature=-3)
    err = info.value
    assert err.status == 400 and err.param == "temperature" and err.type == "invalid_request_error"
    assert err.error is not None and "temperature" in err.error["message"]
    with pytest.raises(BadRequestError):  # a stream fails the same way, when it is opened
        async with client.stream_complete("x", max_tokens=-1):
            pass


async def test_unknown_model_raises_not_found(served):
    _, client = served
    with pytest.raises(NotFoundError) as info:
        await client.complete("x", model="no-such-model", max_tokens=2)
    assert info.value.status == 404 and info.value.param == "model"


async def test_models_and_health(served):
    _, client = served
    [model] = await client.models()
    assert model.id == "tiny" and model.max_model_len is not None and model.max_model_len > 0
    health = await client.health()
    assert health.ok and health.status == 200 and health.body["status"] == "ok"


async def test_chat_and_stream_chat(served):
    tc, client = served
    require_route(tc, "POST", "/v1/chat/completions")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    whole = await client.chat(messages, max_tokens=8, **GREEDY)
    assert whole.message.role == "assistant" and whole.finish_reason == "length"
    assert whole.usage is not None and whole.usage.completion_tokens == 8
    async with client.stream_chat(messages, max_tokens=8, **GREEDY) as stream:
        deltas = [d async for d in stream]
    assert all(isinstance(d, ChatDelta) for d in deltas)
    assert stream.role == "assistant" and stream.finish_reason == "length"
    assert "".join(d.content for d in deltas) == whole.text
    assert stream.usage == whole.usage


async def test_tokenize_and_detokenize_round_trip(served):
    tc, client = served
    require_route(tc, "POST", "/tokenize")
    require_route(tc, "POST", "/detokenize")
    tokens = await client.tokenize("def fib(n):")
    assert tokens.count == len(tokens.tokens) > 0 and tokens.max_model_len
    assert await client.detokenize(tokens.tokens) == "def fib(n):"
    plain = await client.tokenize("hi")
    chat_tokens = await client.tokenize(messages=[{"role": "user", "content": "hi"}])
    assert chat_tokens.count > plain.count  # rendered through the chat template, which adds tokens
    assert "hi" in await client.detokenize(chat_tokens.tokens)


async def test_embed_as_lists_base64_and_numpy(make_client):
    if "embeddings" not in inspect.signature(make_client).parameters:
        pytest.skip("the make_client fixture cannot serve an embedding model yet")
    tc = await make_client(embeddings=True)
    require_route(tc, "POST", "/v1/embeddings")
    async with AsyncClient(str(tc.make_url("")), max_retries=0) as client:
        floats = await client.embed(["first text", "second text"])
        packed = await client.embed(["first text", "second text"], encoding_format="base64")
        single = await client.embed("first text")
    assert len(floats.vectors) == 2 and len(floats.vectors[0]) == len(floats.vectors[1]) > 0
    assert floats.numpy().shape == (2, len(floats.vectors[0]))
    assert packed.numpy() == pytest.approx(floats.numpy(), abs=1e-6)
    assert single.vectors[0] == pytest.approx(floats.vectors[0], abs=1e-6)
    assert floats.usage is not None and floats.usage.prompt_tokens > 0
