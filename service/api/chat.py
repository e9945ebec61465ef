"""POST /v1/chat/completions: the prompt comes from the tokenizer's chat template (or --chat-template)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from service.api.context import CONTEXT, REQUEST_ID, USAGE, ServerContext
from service.api.errors import json_response, read_json_object
from service.api.generation import cached_tokens, gather_results, submitted, usage
from service.api.logprobs import chat_logprobs
from service.api.schemas.chat import ChatCompletionRequest
from service.api.sse import SSEWriter, StreamChunks, iterate_deltas, stream_text
from service.engine.async_engine import RequestHandle
from service.engine.output_stream import RequestResult
from service.errors import ContextLengthExceededError


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    req = ChatCompletionRequest.model_validate(await read_json_object(request))
    ctx.check_model(req.model)
    prompt = await ctx.tokenizer.encode_chat(req.template_messages(), req.add_generation_prompt,
                                              req.chat_template_kwargs, req.continue_final_message)
    room = ctx.engine.max_model_len - len(prompt)
    if room < 1:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {ctx.engine.max_model_len} tokens, and the messages "
            f"alone take {len(prompt)}.", param="messages")
    # OpenAI's chat default: generate until the context is full.
    max_tokens = req.requested_max_tokens or room
    async with submitted(request, ctx, [prompt], req, max_tokens=[max_tokens], logprobs=req.num_logprobs) as handles:
        response_id = f"chatcmpl-{handles[0].request_id}"
        request[REQUEST_ID] = response_id
        if req.stream:
            return await _stream(request, ctx, req, prompt, handles, response_id)
        results = await gather_results(handles)
        body = await _full_response(ctx, req, prompt, results, response_id, cached_tokens(handles, req.n))
        request[USAGE] = body["usage"]
        return json_response(body, headers={"X-Request-Id": response_id})


async def _full_response(ctx: ServerContext, req: ChatCompletionRequest, prompt: list[int],
                         results: list[RequestResult], response_id: str, num_cached: int) -> dict[str, Any]:
    choices = []
    for i, r in enumerate(results):
        logprobs = None
        if req.logprobs:
            logprobs = chat_logprobs(r.logprobs, ctx.tokenizer.token_text)
            await asyncio.sleep(0)  # listing logprobs is the costly part of a large response: let others in
        choice: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": r.text},
            "logprobs": logprobs,
            "finish_reason": r.finish_reason,
            "stop_reason": r.stop_reason,
        }
        if req.return_token_ids:
            choice["token_ids"] = r.token_ids
        choices.append(choice)
    body: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": ctx.model_name,
        "choices": choices,
        "usage": usage(len(prompt), sum(len(r.token_ids) for r in results), num_cached),
    }
    if req.return_token_ids:
        body["prompt_token_ids"] = prompt
    return body


async def _stream(request: web.Request, ctx: ServerContext, req: ChatCompletionRequest, prompt: list[int],
                  handles: list[RequestHandle], response_id: str) -> web.StreamResponse:
    created = int(time.time())
    sse = SSEWriter(request, {"X-Request-Id": response_id})
    await sse.prepare()

    chunks = StreamChunks(response_id, "chat.completion.chunk", created, ctx.model_name, "delta",
                          req.include_usage, req.return_token_ids)
    chunk = chunks.choice

    # The role comes first, on its own, as OpenAI sends it.
    for i in range(len(handles)):
        await sse.send(chunk(i, {"role": "assistant", "content": ""}))
    completion_tokens = 0
    last: list[dict[str, Any]] = []  # the final frames, sent in one write with [DONE]
    if len(handles) == 1 and not req.logprobs and not req.return_token_ids:
        # The common case: each token's frame is written by the engine's output step itself.
        d, completion_tokens = await stream_text(request, sse, handles[0], chunk(0, {"content": ""}),
                                                 ("choices", 0, "delta", "content"))
        if d.error is not None:
            return await sse.fail(d.error)
        last.append(chunk(0, {"content": d.text} if d.text else {}, None, d.finish_reason, d.stop_reason))
    else:
        async for index, d in iterate_deltas(handles):
            if d.error is not None:
                return await sse.fail(d.error)
            completion_tokens += len(d.token_ids)
            logprobs = chat_logprobs(d.logprobs, ctx.tokenizer.token_text) if req.logprobs and d.logprobs else None
            if d.text or logprobs or d.finished or (req.return_token_ids and d.token_ids):
                delta: dict[str, Any] = {"content": d.text} if d.text else {}
                await sse.send(chunk(index, delta, logprobs, d.finish_reason, d.stop_reason, d.token_ids))
    request[USAGE] = usage(len(prompt), completion_tokens, cached_tokens(handles, req.n))
    if req.include_usage:
        last.append(chunks.usage(request[USAGE]))
    return await sse.done(*last)
