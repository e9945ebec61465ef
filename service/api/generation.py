"""What the completions and chat handlers share: turning a validated body into engine requests, collecting
results, and always aborting what is left when the handler exits (finished, failed, or cancelled because the
client went away)."""

from __future__ import annotations

import asyncio
from types import TracebackType

from aiohttp import web

from service.api.context import USAGE, ServerContext
from service.api.schemas.sampling import SamplingFields
from service.engine.async_engine import RequestHandle
from service.engine.output_stream import RequestResult
from service.errors import InvalidParameterError


class Submission:
    """The engine requests of one HTTP request, as an async context manager that yields their handles and, on
    exit, aborts any that has not finished.

    On exit it also gives the access log the request's token counts when the handler did not (the request
    ended in an error: a 408, a stream's error frame, a client gone): the prompt tokens, and the tokens
    generated before the end.

    A plain class rather than @asynccontextmanager: it is entered once per request, and this way costs no
    generator.
    """

    __slots__ = ("_ctx", "_http", "_prompts", "handles")

    def __init__(self, http: web.Request, ctx: ServerContext, handles: list[RequestHandle],
                 prompts: list[list[int]]) -> None:
        self._http = http
        self._ctx = ctx
        self.handles = handles
        self._prompts = prompts

    async def __aenter__(self) -> list[RequestHandle]:
        return self.handles

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        # The handler is cancelled when the client disconnects (handler_cancellation), or a write to the
        # closed stream fails: either way nobody is listening any more.
        client_gone = exc_type is not None and issubclass(exc_type, (asyncio.CancelledError, ConnectionResetError))
        abort_unfinished(self._ctx, self.handles, client_gone)
        if USAGE not in self._http:
            self._http[USAGE] = usage(sum(map(len, self._prompts)), sum(h.num_output_tokens for h in self.handles))


def submitted(
    http: web.Request,
    ctx: ServerContext,
    prompts: list[list[int]],
    fields: SamplingFields,
    *,
    max_tokens: list[int],
    logprobs: int | None,
    want_prompt_logprobs: bool = False,
) -> Submission:
    """Queue n requests per prompt (`async with submitted(...) as handles`); see Submission.

    `max_tokens[i]` is the budget of prompt i. Choice j of a seeded request uses seed + j, so the n choices
    differ but each is reproducible. Every prompt is checked, and the queue's room for all of them, before any
    is queued; if one still cannot be queued, those already queued are aborted.
    """
    if fields.priority and ctx.engine.config.scheduler.policy != "priority":
        raise InvalidParameterError("priority", fields.priority, "needs the priority scheduling policy; this server "
                                    "runs fcfs (--scheduling-policy)")
    jobs = [(ids, fields.to_sampling_params(max_tokens[i], logprobs, seed_offset=j, defaults=ctx.sampling_defaults))
            for i, ids in enumerate(prompts) for j in range(fields.n)]
    # A prompt that can never run fails the whole request (400) before any is queued. (Choices of one prompt
    # differ only in their seed, so its first choice answers for the rest.) Then admission (429) is decided once,
    # for all of the request's prompts and choices against the queue before it.
    for ids, params in jobs[::fields.n]:
        ctx.engine.check_request(ids, params)
    ctx.engine.check_admission(len(jobs), sum(len(ids) for ids, _ in jobs))
    handles: list[RequestHandle] = []
    try:
        for k, (ids, params) in enumerate(jobs):
            handles.append(ctx.engine.add_request(
                ids, params, stream=fields.stream, priority=fields.priority,
                timeout_s=ctx.timeout_for(fields.request_timeout),
                # Only a prompt's first choice computes its prompt logprobs; the response lists them for every
                # choice (api/completions.py), and the others may prefill from the prefix cache.
                want_prompt_logprobs=want_prompt_logprobs and k % fields.n == 0, checked=True,
            ))
    except BaseException:
        abort_unfinished(ctx, handles, client_gone=False)
        raise
    return Submission(http, ctx, handles, prompts)


def abort_unfinished(ctx: ServerContext, handles: list[RequestHandle], client_gone: bool) -> None:
    unfinished = [h for h in handles if ctx.engine.is_live(h.request_id)]
    if client_gone and unfinished:
        ctx.engine.stats.client_disconnects += 1
    for h in unfinished:
        ctx.engine.abort(h.request_id)


async def gather_results(handles: list[RequestHandle]) -> list[RequestResult]:
    return list(await asyncio.gather(*(h.result() for h in handles)))


def cached_tokens(handles: list[RequestHandle], n: int) -> int:
    """Prompt tokens found in the prefix cache, counted once per prompt (on its first choice, as prompt_tokens
    counts each prompt once), over the requests whose results are in; the usage of full and streamed
    responses alike."""
    futures = [h.future for h in handles[::n]]
    return sum(f.result().num_cached_tokens for f in futures if f.done() and not f.cancelled() and not f.exception())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return body
