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
from service.api.logprobs import completion_logprobs, echoed_prompt_logprobs, spelled_length
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
    async with submitted(request, ctx, prompts, req, max_tokens=max_tokens, logprobs=req.logprobs,
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
    # Special tokens stay, as in vLLM: the text then reads as the prompt's tokens do in logprobs, and as a string
    # prompt that holds them is echoed.
    return original if isinstance(original, str) else ctx.tokenizer.decode(ids, skip_special_tokens=False)


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
                    echoed[prompt_index] = echoed_prompt_logprobs(results[prompt_index * req.n].prompt_logprobs,
                                                                  ctx.tokenizer.token_text, prompts[prompt_index][0])
                listed_prompt = echoed[prompt_index]
                # Offsets run on from the prompt's listed tokens, as in a stream (_StreamedLogprobs).
                generated = completion_logprobs(r.logprobs, ctx.tokenizer.token_text,
                                                text_offset=spelled_length(listed_prompt))
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
    logprobs_of = [_StreamedLogprobs(ctx.tokenizer.token_text, prompts[i // req.n][0])
                   for i in range(len(handles))] if req.logprobs is not None else []
    echoes = EchoedPrompts(prompts, req.n, ctx.tokenizer.token_text) if req.echo and req.logprobs is not None \
        else None
    if req.echo and req.logprobs is None:
        for i in range(len(handles)):
            await sse.send(chunk(i, _echo_text(ctx, req, prompts[i // req.n], i // req.n)))

    def frames(index: int, delta: RequestDelta) -> list[dict[str, Any]]:
        payloads: list[dict[str, Any]] = []
        logprobs = None
        if req.logprobs is not None:
            listed = logprobs_of[index]
            if echoes is not None and not listed.echoed:  # the choice's first frame: the echoed prompt
                listing = echoes.listing(index // req.n)
                listed.echoed = True
                listed.offset = spelled_length(listing)
                payloads.append(chunk(index, _echo_text(ctx, req, prompts[index // req.n], index // req.n), listing))
            logprobs = listed.take(delta.logprobs)
        if delta.text or delta.finished or (delta.token_ids and (logprobs is not None or req.return_token_ids)):
            payloads.append(chunk(index, delta.text, logprobs, delta.finish_reason, delta.stop_reason,
                                  delta.token_ids))
        return payloads

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
            ready = echoes.arrive(index, delta) if echoes is not None else [(index, delta)]
            for k, (i, d) in enumerate(ready):
                if k:
                    await asyncio.sleep(0)  # a prompt's held choices, each with a long echoed frame: let others in
                payloads = frames(i, d)
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


class EchoedPrompts:
    """The echoed prompts' logprobs in a stream with `n` choices per prompt, in the order deltas arrive.

    Only a prompt's first choice computes them (api/generation.py), and they come in over its deltas (a long
    prompt is prefilled in chunks) until its first token or its end. Until then every choice of that prompt is
    held back (its deltas merged), since its first frame is the echoed prompt with those logprobs. The scheduler
    admits a prompt's first choice ahead of the others and preempts it last, so they sample with it or after it;
    the hold keeps each stream right whatever order their deltas come in.
    """

    def __init__(self, prompts: list[list[int]], n: int, token_text: Callable[[int], str]) -> None:
        self._prompts = prompts
        self._n = n
        self._token_text = token_text
        self._entries: list[list[TokenLogprobs | None]] = [[] for _ in prompts]
        self._complete = [False] * len(prompts)
        self._held: dict[int, RequestDelta] = {}
        self._listings: dict[int, dict[str, Any]] = {}

    def arrive(self, index: int, delta: RequestDelta) -> list[tuple[int, RequestDelta]]:
        """Choice `index`'s new delta in; out, the (choice, delta) pairs that can be sent now, in order."""
        prompt = index // self._n
        if self._complete[prompt]:
            return [(index, delta)]
        first = prompt * self._n
        if index == first:
            self._entries[prompt] += delta.prompt_logprobs or []
            self._complete[prompt] = bool(delta.token_ids or delta.finished)
        if index in self._held:
            self._held[index].merge(delta)
        else:
            self._held[index] = delta
        if not self._complete[prompt]:
            return []
        return [(i, self._held.pop(i)) for i in range(first, first + self._n) if i in self._held]

    def listing(self, prompt: int) -> dict[str, Any]:
        """A complete prompt's logprobs as its choices' echoed frames list them, from the first token's null (a
        one-token prompt has no other). Listed once and shared: it is the costly part of a long prompt's frame."""
        assert self._complete[prompt]
        if prompt not in self._listings:
            self._listings[prompt] = echoed_prompt_logprobs(self._entries[prompt], self._token_text,
                                                            self._prompts[prompt][0])
        return self._listings[prompt]


@dataclass(slots=True)
class _StreamedLogprobs:
    """One streamed choice's logprobs, in frames that each list exactly the tokens of the frame's text. With
    echo, the prompt's go first, with the echoed prompt, the first prompt token's logprob null, as in OpenAI's
    and vLLM's streams."""

    token_text: Callable[[int], str]
    first_prompt_token: int
    echoed: bool = False  # the echoed prompt's frame went out
    offset: int = 0  # the text offset of the next listed token: the length of the tokens' texts so far

    def take(self, entries: list[TokenLogprobs | None]) -> dict[str, Any]:
        listed = completion_logprobs(entries, self.token_text, self.offset, first_prompt_token=self.first_prompt_token)
        self.offset += spelled_length(listed)
        return listed
