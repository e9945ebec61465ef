"""What the completions and chat handlers share: turning a validated body into engine requests, collecting
results, and always aborting what is left when the handler exits (finished, failed, or cancelled because the
client went away)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.api.context import ServerContext
from service.api.schemas.sampling import SamplingFields
from service.engine.async_engine import RequestHandle
from service.engine.output_stream import RequestResult


@asynccontextmanager
async def submitted(
    ctx: ServerContext,
    prompts: list[list[int]],
    fields: SamplingFields,
    *,
    max_tokens: list[int],
    logprobs: int | None,
    want_prompt_logprobs: bool = False,
) -> AsyncIterator[list[RequestHandle]]:
    """Queue n requests per prompt; on exit, abort any that has not finished.

    `max_tokens[i]` is the budget of prompt i. Choice j of a seeded request uses seed + j, so the n choices
    differ but each is reproducible.
    """
    handles: list[RequestHandle] = []
    client_gone = False
    try:
        for i, ids in enumerate(prompts):
            for j in range(fields.n):
                params = fields.to_sampling_params(max_tokens[i], logprobs, seed_offset=j)
                handles.append(ctx.engine.add_request(
                    ids, params, stream=fields.stream, priority=fields.priority,
                    timeout_s=ctx.timeout_for(fields.request_timeout),
                    want_prompt_logprobs=want_prompt_logprobs,
                ))
        yield handles
    except (asyncio.CancelledError, ConnectionResetError):
        # The handler is cancelled when the client disconnects (handler_cancellation), or a write to the
        # closed stream fails: either way nobody is listening any more.
        client_gone = True
        raise
    finally:
        unfinished = [h for h in handles if ctx.engine.is_live(h.request_id)]
        if client_gone and unfinished:
            ctx.engine.stats.client_disconnects += 1
        for h in unfinished:
            ctx.engine.abort(h.request_id)


async def gather_results(handles: list[RequestHandle]) -> list[RequestResult]:
    return list(await asyncio.gather(*(h.result() for h in handles)))


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return body
