"""POST /v1/completions: OpenAI's legacy completions, streaming (SSE) or not."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from service.api.context import CONTEXT, REQUEST_ID, USAGE, ServerContext
from service.api.errors import json_response, read_json_object
from service.api.generation import cached_tokens, gather_results, submitted, usage
from service.api.logprobs import completion_logprobs
from service.api.schemas.completions import CompletionRequest
from service.api.sse import SSEWriter, StreamChunks, error_frame, iterate_deltas, stream_text
from service.engine.async_engine import RequestHandle
from service.engine.output_stream import RequestResult
from service.errors import BadRequestError

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint


async def create_completion(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    req = CompletionRequest.model_validate(await read_json_object(request))
    ctx.check_model(req.model)
    if req.suffix:
        raise BadRequestError("suffix is not supported.", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise BadRequestError(f"best_of={req.best_of}: only best_of equal to n is supported.", param="best_of")

    prompts = [await ctx.tokenizer.encode(p) if isinstance(p, str) else p for p in req.prompts()]
    max_tokens = [req.max_tokens or DEFAULT_MAX_TOKENS] * len(prompts)
    async with submitted(ctx, prompts, req, max_tokens=max_tokens, logprobs=req.logprobs,
                         want_prompt_logprobs=req.echo and req.logprobs is not None) as handles:
        response_id = f"cmpl-{handles[0].request_id}"
        request[REQUEST_ID] = response_id
        if req.stream:
            return await _stream(request, ctx, req, prompts, handles, response_id)
        results = await gather_results(handles)
        body = _full_response(ctx, req, prompts, results, response_id, cached_tokens(handles, req.n))
        request[USAGE] = body["usage"]
        return json_response(body, headers={"X-Request-Id": response_id})


def _echo_text(ctx: ServerContext, req: CompletionRequest, ids: list[int], index: int) -> str:
    if not req.echo:
        return ""
    original = req.prompts()[index]
    return original if isinstance(original, str) else ctx.tokenizer.decode(ids)


def _full_response(ctx: ServerContext, req: CompletionRequest, prompts: list[list[int]],
                   results: list[RequestResult], response_id: str, num_cached: int) -> dict[str, Any]:
    choices = []
    for i, r in enumerate(results):
        prompt_index = i // req.n
        prefix = _echo_text(ctx, req, prompts[prompt_index], prompt_index)
        logprobs = None
        if req.logprobs is not None:
            entries = (r.prompt_logprobs or [None]) + r.logprobs if req.echo else r.logprobs
            logprobs = completion_logprobs(entries, ctx.tokenizer.token_text,
                                           first_prompt_token=prompts[prompt_index][0])
        choice: dict[str, Any] = {
            "index": i,
            "text": prefix + r.text,
            "logprobs": logprobs,
            "finish_reason": r.finish_reason,
            "stop_reason": r.stop_reason,
        }
        if req.return_token_ids:
            choice["prompt_token_ids"] = prompts[prompt_index]
            choice["token_ids"] = r.token_ids
        choices.append(choice)
    return {
        "id": response_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": ctx.model_name,
        "choices": choices,
        "usage": usage(sum(len(p) for p in prompts), sum(len(r.token_ids) for r in results), num_cached),
    }


async def _stream(request: web.Request, ctx: ServerContext, req: CompletionRequest, prompts: list[list[int]],
                  handles: list[RequestHandle], response_id: str) -> web.StreamResponse:
    created = int(time.time())
    sse = SSEWriter(request, {"X-Request-Id": response_id})
    await sse.prepare()

    chunk = StreamChunks(response_id, "text_completion", created, ctx.model_name, "text", req.include_usage,
                         req.return_token_ids).choice

    completion_tokens = 0
    # Per choice, the text offset of the next token in logprobs: the sum of the listed tokens' texts so far,
    # echoed prompt tokens first, as in the full response.
    offsets = [0] * len(handles)
    prompt_listed = [not req.echo] * len(handles)  # whether a choice's echoed prompt tokens are in logprobs yet
    if req.echo:
        for i in range(len(handles)):
            await sse.send(chunk(i, _echo_text(ctx, req, prompts[i // req.n], i // req.n)))
    unfinished = len(handles)
    last: list[dict[str, Any]] = []  # the final frames, sent in one write with [DONE]
    if len(handles) == 1 and req.logprobs is None and not req.return_token_ids:
        # The common case: each token's frame is written by the engine's output step itself.
        delta, completion_tokens = await stream_text(request, sse, handles[0], chunk(0, ""), ("choices", 0, "text"))
        if delta.error is not None:
            return await sse.done(error_frame(delta.error))
        last.append(chunk(0, delta.text, None, delta.finish_reason, delta.stop_reason))
    else:
        async for index, delta in iterate_deltas(handles):
            if delta.error is not None:
                return await sse.done(error_frame(delta.error))
            if delta.finished:
                unfinished -= 1
            completion_tokens += len(delta.token_ids)
            logprobs = None
            if req.logprobs is not None:
                entries = delta.logprobs
                if not prompt_listed[index]:
                    # Starts with the first token's None; a one-token prompt has no other, and no prompt logprobs.
                    entries = (delta.prompt_logprobs or [None]) + entries
                    prompt_listed[index] = True
                elif delta.prompt_logprobs is not None:  # the rest of a prompt prefilled in chunks
                    entries = delta.prompt_logprobs + entries
                logprobs = completion_logprobs(entries, ctx.tokenizer.token_text, offsets[index],
                                               first_prompt_token=prompts[index // req.n][0])
                offsets[index] += sum(map(len, logprobs["tokens"]))
            if delta.text or delta.finished or logprobs or (req.return_token_ids and delta.token_ids):
                payload = chunk(index, delta.text, logprobs, delta.finish_reason, delta.stop_reason,
                                delta.token_ids)
                if unfinished:
                    await sse.send(payload)
                else:
                    last.append(payload)
    request[USAGE] = usage(sum(len(p) for p in prompts), completion_tokens, cached_tokens(handles, req.n))
    if req.include_usage:
        last.append(StreamChunks(response_id, "text_completion", created, ctx.model_name, "text", True,
                                 False).usage(request[USAGE]))
    return await sse.done(*last)
