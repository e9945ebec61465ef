"""A streamed completion as an async iterator of typed deltas.

    open (POST, retried) ─► read bytes ─► SSE events ─► JSON chunks ─► deltas queued ─► handed out one by one
                                 ▲ idle limit per read, total limit per call

Invariants:
- The connection is closed, not returned to the pool, whenever the stream ends before `[DONE]`: on an error,
  on `aclose()`, on leaving `async with`, and on cancellation of the awaiting task. A closed connection is how
  the server learns to abort the request. `break` itself tells the stream nothing (an `async for` calls no
  method on its way out), so a stream held in `async with` closes at the block's exit and one held in a
  variable at `aclose()`; as a fallback, dropping the stream object closes it too (`break` out of
  `async for ... in client.stream_complete(...)` drops it at once under CPython). Closing on `break` would also
  forbid reading on after it, which a loop that stops at the first delta and resumes may want.
- A body that ends without `[DONE]` is complete only if every choice seen has its finish reason; otherwise it
  was cut, and raises ConnectionError.
- Retries happen only before the first delta is handed out; after that the caller has text that a new attempt
  would repeat, so failures raise.
- A mid-stream `data: {"error": ...}` frame is queued behind the deltas that came before it, and raised when the
  caller reaches it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Any, Generic, Self, TypeVar

import aiohttp
import orjson

from service.client.errors import APIError, ConnectionError, ServerError, error_from_event
from service.client.retry import Retrier
from service.client.sse import DONE, Event, SSEDecoder
from service.client.transport import REQUEST_ID_HEADER, Transport
from service.client.types import ChatDelta, CompletionDelta, Usage

D = TypeVar("D", CompletionDelta, ChatDelta)


class EventStream(Generic[D]):
    """Base of the typed streams; subclasses turn one JSON choice into a delta."""

    def __init__(self, transport: Transport, path: str, body: dict[str, Any]) -> None:
        self._transport = transport
        self._path = path
        self._body = body
        self._what = f"POST {path}"
        self._retrier: Retrier | None = None
        self._resp: aiohttp.ClientResponse | None = None
        self._decoder = SSEDecoder()
        self._pending: deque[D | APIError] = deque()
        self._done = False  # no more bytes will be read: [DONE] seen, or the stream ended or failed
        self._yielded = False
        # Filled in as the stream goes; complete once iteration has ended.
        self.id: str | None = None
        self.model: str | None = None
        self.request_id: str | None = None
        self.usage: Usage | None = None
        self.finish_reasons: dict[int, str] = {}
        self._choices: set[int] = set()  # the indexes of the choices seen so far

    def _parse_choice(self, choice: dict[str, Any]) -> D:
        raise NotImplementedError

    @property
    def finish_reason(self) -> str | None:
        """The first choice's finish reason, once its last delta has arrived."""
        return self.finish_reasons.get(0)

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except BaseException:
            self._close_connection()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> D:
        try:
            while not self._pending:
                if self._done:
                    raise StopAsyncIteration
                await self._read_more()
            item = self._pending.popleft()
            if isinstance(item, APIError):
                raise item
        except StopAsyncIteration:
            raise
        except BaseException:  # errors and cancellation alike: hang up so the server aborts
            self._close_connection()
            raise
        self._yielded = True
        return item

    async def aclose(self) -> None:
        """Stop reading; if the stream has not finished, the server sees the connection close and aborts."""
        self._close_connection()
        self._pending.clear()

    def __del__(self) -> None:
        resp = getattr(self, "_resp", None)
        if resp is not None and not resp.closed:
            with contextlib.suppress(RuntimeError):  # collected after its event loop closed: nothing to tell
                resp.close()

    async def _open(self) -> None:
        if self._resp is not None:
            return
        if self._retrier is None:
            self._retrier = Retrier(self._transport.retry, self._what, self._transport.deadline())
        self._resp = await self._transport.open_stream(self._path, self._body, self._retrier)
        self.request_id = self._resp.headers.get(REQUEST_ID_HEADER)

    async def _read_more(self) -> None:
        await self._open()  # retried inside, per the policy
        assert self._resp is not None and self._retrier is not None
        try:
            chunk = await self._transport.within(self._resp.content.readany(), self._what, self._retrier.deadline,
                                                 idle=True)
        except ConnectionError as err:
            if self._yielded or self._pending:
                raise
            # Cut before anything reached the caller, so a fresh attempt repeats nothing.
            self._reset()
            if not await self._retrier.wait_before_retry(err):
                raise
            return
        events = self._decoder.feed(chunk) if chunk else self._decoder.flush()
        for event in events:
            self._handle(event)
            if self._done:
                break
        if not chunk and not self._done:
            self._done = True
            self._close_connection()
            unfinished = sorted(self._choices - self.finish_reasons.keys())
            if unfinished or not self.finish_reasons:
                # Some servers omit [DONE]; a stream that ends after every choice's finish reason is complete anyway.
                which = f" (choice {', '.join(map(str, unfinished))} unfinished)" if unfinished else ""
                self._pending.append(ConnectionError(f"{self._what}: the stream ended before [DONE]{which}"))

    def _handle(self, event: Event) -> None:
        if event.data == DONE:
            self._done = True
            if self._resp is not None:
                self._resp.release()  # fully read: the connection may go back to the pool
                self._resp = None
            return
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            self._fail(ServerError(f"{self._what}: the stream sent invalid JSON: {event.data[:200]!r}"))
            return
        if not isinstance(chunk, dict):
            self._fail(ServerError(f"{self._what}: the stream sent a non-object chunk: {event.data[:200]!r}"))
            return
        if chunk.get("error") is not None and not chunk.get("choices"):
            self._fail(error_from_event(chunk, request_id=self.request_id))
            return
        self.id = chunk.get("id", self.id)
        self.model = chunk.get("model", self.model)
        try:
            usage = Usage.from_json(chunk.get("usage"))
            deltas = [self._parse_choice(c) for c in chunk.get("choices") or []]
        except (KeyError, TypeError, ValueError) as exc:
            self._fail(ServerError(f"{self._what}: malformed stream chunk ({exc!r}): {event.data[:200]!r}"))
            return
        if usage is not None:
            self.usage = usage
        for delta in deltas:
            self._choices.add(delta.index)
            if delta.finish_reason is not None:
                self.finish_reasons[delta.index] = delta.finish_reason
            self._pending.append(delta)

    def _fail(self, err: APIError) -> None:
        """Queue `err` behind the deltas already received; nothing after it is read."""
        self._pending.append(err)
        self._done = True

    def _reset(self) -> None:
        self._close_connection()
        self._decoder = SSEDecoder()
        self._done = False
        self.usage, self.finish_reasons, self._choices = None, {}, set()

    def _close_connection(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        self._done = True


class CompletionStream(EventStream[CompletionDelta]):
    """Deltas of a streamed /v1/completions call. After the last one, `usage` (if the server sent it) and
    `finish_reason(s)` are set."""

    def _parse_choice(self, choice: dict[str, Any]) -> CompletionDelta:
        return CompletionDelta.from_json(choice)


class ChatStream(EventStream[ChatDelta]):
    """Deltas of a streamed /v1/chat/completions call; `role` is set once the server has named it."""

    role: str | None = None

    def _parse_choice(self, choice: dict[str, Any]) -> ChatDelta:
        delta = ChatDelta.from_json(choice)
        if delta.role is not None and self.role is None:
            self.role = delta.role
        return delta
