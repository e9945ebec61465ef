"""POST /v1/completions: OpenAI's legacy completions, streaming (SSE) or not."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from service.api.context import CONTEXT, REQUEST_ID, USAGE, ServerContext
from service.api.errors import json_response, read_json_object
from service.api.generation import cached_tokens, gather_results, submitted, usage
from service.api.logprobs import completion_logprobs
from service.api.schemas.completions import CompletionRequest
from service.api.sse import SSEWriter, StreamChunks, iterate_deltas, stream_text
from service.engine.async_engine import RequestHandle
from service.engine.output_stream import RequestDelta, RequestResult
from service.engine.outputs import TokenLogprobs
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
        body = await _full_response(ctx, req, prompts, results, response_id, cached_tokens(handles, req.n))
        request[USAGE] = body["usage"]
        return json_response(body, headers={"X-Request-Id": response_id})


def _echo_text(ctx: ServerContext, req: CompletionRequest, ids: list[int], index: int) -> str:
    if not req.echo:
        return ""
    original = req.prompts()[index]
    return original if isinstance(original, str) else ctx.tokenizer.decode(ids)


async def _full_response(ctx: ServerContext, req: CompletionRequest, prompts: list[list[int]],
                         results: list[RequestResult], response_id: str, num_cached: int) -> dict[str, Any]:
    choices = []
    # An echoed prompt's logprobs, listed once per prompt and shared by its choices (only its first choice computed
    # them: api/generation.py). Listing is the costly part of a large response (~3 µs a token with 5
    # alternatives), so the loop also serves others between choices.
    echoed: dict[int, dict[str, list[Any]]] = {}
    for i, r in enumerate(results):
        prompt_index = i // req.n
        prefix = _echo_text(ctx, req, prompts[prompt_index], prompt_index)
        logprobs = None
        if req.logprobs is not None:
            if req.echo:
                if prompt_index not in echoed:
                    echoed[prompt_index] = completion_logprobs(
                        results[prompt_index * req.n].prompt_logprobs or [None], ctx.tokenizer.token_text,
                        first_prompt_token=prompts[prompt_index][0])
                listed_prompt = echoed[prompt_index]
                # Offsets run on from the prompt's listed tokens, as in a stream (_StreamedLogprobs).
                offset = listed_prompt["text_offset"][-1] + len(listed_prompt["tokens"][-1])
                generated = completion_logprobs(r.logprobs, ctx.tokenizer.token_text, text_offset=offset)
                logprobs = {key: listed_prompt[key] + generated[key] for key in listed_prompt}
            else:
                logprobs = completion_logprobs(r.logprobs, ctx.tokenizer.token_text)
            await asyncio.sleep(0)
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
    # With logprobs, each frame lists exactly the tokens of its text, and text_offset runs on across frames as in
    # the full response. An echoed prompt then waits for its logprobs: it goes out as the choice's first frame.
    logprobs_of = [_StreamedLogprobs(ctx.tokenizer.token_text, prompts[i // req.n][0], [] if req.echo else None)
                   for i in range(len(handles))] if req.logprobs is not None else []
    if req.echo and req.logprobs is None:
        for i in range(len(handles)):
            await sse.send(chunk(i, _echo_text(ctx, req, prompts[i // req.n], i // req.n)))
    unfinished = len(handles)
    last: list[dict[str, Any]] = []  # the final frames, sent in one write with [DONE]
    if len(handles) == 1 and req.logprobs is None and not req.return_token_ids:
        # The common case: each token's frame is written by the engine's output step itself.
        delta, completion_tokens = await stream_text(request, sse, handles[0], chunk(0, ""), ("choices", 0, "text"))
        if delta.error is not None:
            return await sse.fail(delta.error)
        last.append(chunk(0, delta.text, None, delta.finish_reason, delta.stop_reason))
    else:
        async for index, delta in iterate_deltas(handles):
            if delta.error is not None:
                return await sse.fail(delta.error)
            if delta.finished:
                unfinished -= 1
            completion_tokens += len(delta.token_ids)
            payloads: list[dict[str, Any]] = []
            logprobs = None
            if req.logprobs is not None:
                listed = logprobs_of[index]
                echoed = listed.echoed_prompt(delta)
                if echoed is not None:
                    payloads.append(chunk(index, _echo_text(ctx, req, prompts[index // req.n], index // req.n),
                                          echoed))
                logprobs = listed.take(delta.logprobs)
            if delta.text or delta.finished or (delta.token_ids and (logprobs is not None or req.return_token_ids)):
                payloads.append(chunk(index, delta.text, logprobs, delta.finish_reason, delta.stop_reason,
                                      delta.token_ids))
            if unfinished:
                for payload in payloads:
                    await sse.send(payload)
            else:
                last.extend(payloads)
    request[USAGE] = usage(sum(len(p) for p in prompts), completion_tokens, cached_tokens(handles, req.n))
    if req.include_usage:
        last.append(StreamChunks(response_id, "text_completion", created, ctx.model_name, "text", True,
                                 False).usage(request[USAGE]))
    return await sse.done(*last)


@dataclass(slots=True)
class _StreamedLogprobs:
    """One streamed choice's logprobs, in frames that each list exactly the tokens of the frame's text.

    With echo, the prompt's logprobs are gathered (a long prompt prefilled in chunks sends them over several
    deltas) until the choice's first token or its end, when all are there: they go out with the echoed prompt,
    the first prompt token's logprob null, as in OpenAI's and vLLM's streams.
    """

    token_text: Callable[[int], str]
    first_prompt_token: int
    prompt: list[TokenLogprobs | None] | None  # the echoed prompt's logprobs so far; None: not echoed, or sent
    offset: int = 0  # the text offset of the next listed token: the length of the tokens' texts so far

    def echoed_prompt(self, delta: RequestDelta) -> dict[str, Any] | None:
        """The echoed prompt's logprobs, once, on the delta that completes them; None before and after."""
        if self.prompt is None:
            return None
        self.prompt += delta.prompt_logprobs or []
        if not (delta.token_ids or delta.finished):
            return None
        # Starts with the first token's None; a one-token prompt has no other, and no prompt logprobs.
        entries, self.prompt = self.prompt or [None], None
        return self.take(entries)

    def take(self, entries: list[TokenLogprobs | None]) -> dict[str, Any]:
        listed = completion_logprobs(entries, self.token_text, self.offset, first_prompt_token=self.first_prompt_token)
        self.offset += sum(map(len, listed["tokens"]))
        return listed
