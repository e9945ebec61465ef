"""What a request's caller receives: deltas on a per-request stream, and one final result on a future."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from service.engine.outputs import TokenLogprobs

# Takes one sampled token's text ("" while a character's bytes are incomplete) for direct delivery; returns
# False to decline it.
TokenSink = Callable[[str], bool]


@dataclass(slots=True)
class RequestDelta:
    """New output since the last delta the reader took. Consecutive deltas merge while the reader is slow."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def merge(self, later: RequestDelta) -> None:
        self.text += later.text
        self.token_ids.extend(later.token_ids)
        self.logprobs.extend(later.logprobs)
        if later.prompt_logprobs is not None:
            self.prompt_logprobs = (self.prompt_logprobs or []) + later.prompt_logprobs
        self.finish_reason = later.finish_reason
        self.stop_reason = later.stop_reason
        self.error = later.error


@dataclass(slots=True)
class RequestResult:
    """The whole generation, resolved on the request's future when it ends."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: int | str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    logprobs: list[TokenLogprobs | None]
    prompt_logprobs: list[TokenLogprobs | None] | None
    queue_time_s: float | None
    ttft_s: float | None
    e2e_s: float


class OutputStream:
    """One mailbox per streaming request: the engine puts without blocking, the handler awaits.

    Only the event-loop thread touches it. If the reader falls behind, deltas merge into one, so memory stays
    bounded by the request's own output. There is one reader, so a bare future is the wake-up: cheaper than an
    asyncio.Event, and it is paid once per streamed delta.
    """

    __slots__ = ("_closed", "_pending", "_sink", "_waiter")

    def __init__(self) -> None:
        self._pending: RequestDelta | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._sink: TokenSink | None = None

    def attach_sink(self, sink: TokenSink | None) -> None:
        """Let `sink` take tokens' text as they are put, instead of waking the reader for each one.

        The sink may refuse (return False); the token then waits for the reader as a delta, as usual. It is only
        offered a token when nothing is pending, so text reaches the client in order whichever path it takes.
        Tokens carrying prompt logprobs, and the final delta, always go to the reader.
        """
        self._sink = sink

    def put_token(self, text: str, token_id: int, logprobs: TokenLogprobs | None,
                  prompt_logprobs: list[TokenLogprobs | None] | None = None) -> None:
        """One sampled token (not the last): the per-token fast path of put()."""
        sink = self._sink
        if sink is not None and self._pending is None and prompt_logprobs is None and not self._closed \
                and sink(text):
            return
        self.put(RequestDelta(text, [token_id], [logprobs], prompt_logprobs))

    def put(self, delta: RequestDelta) -> None:
        if self._closed:
            return
        if delta.finished:
            self._closed = True
        if self._pending is None:
            self._pending = delta
        else:
            self._pending.merge(delta)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> RequestDelta:
        """Wait for the next (possibly merged) delta; a failed request ends with a delta carrying `error`."""
        while self._pending is None:
            assert self._waiter is None, "an OutputStream has one reader at a time"
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        delta, self._pending = self._pending, None
        return delta

    @property
    def closed(self) -> bool:
        return self._closed
