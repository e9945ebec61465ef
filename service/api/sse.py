"""Server-sent events in the shape OpenAI clients expect: `data: <json>\\n\\n` frames, an error frame on a
mid-stream failure, and `data: [DONE]\\n\\n` at the end, always.

Every write is one send() on the socket, a large part of a streamed request's cost: the end of a stream (the
last frames, `[DONE]` and the chunked-encoding terminator) goes out in one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from service.api.context import ERROR_TYPE
from service.engine.async_engine import RequestHandle
from service.engine.output_stream import RequestDelta
from service.errors import ServiceError

DONE = b"data: [DONE]\n\n"


class SSEWriter:
    def __init__(self, request: web.Request, headers: dict[str, str] | None = None) -> None:
        self._request = request
        self.response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "Connection": "keep-alive",
                "X-Accel-Buffering": "no",
                **(headers or {}),
            },
        )

    async def prepare(self) -> None:
        await self.response.prepare(self._request)

    async def send(self, payload: dict[str, Any]) -> None:
        await self.response.write(frame(payload))

    async def done(self, *last: dict[str, Any]) -> web.StreamResponse:
        """End the stream: the `last` frames, if any, then `[DONE]`, in a single write."""
        await self.response.write_eof(b"".join(map(frame, last)) + DONE)
        return self.response

    async def fail(self, exc: BaseException) -> web.StreamResponse:
        """End the stream on a mid-stream failure: an OpenAI error object as the last frame, then `[DONE]`.

        The status (200) went out with the headers, so the access log learns of the failure from the request's
        ERROR_TYPE, set here to the error's type, as the error middleware sets it for a failed non-stream request.
        """
        err = exc if isinstance(exc, ServiceError) else ServiceError(str(exc))
        self._request[ERROR_TYPE] = err.type
        return await self.done(err.to_dict())


@dataclass(frozen=True, slots=True)
class StreamChunks:
    """The chunks of one streamed response: OpenAI's envelope around one choice, or the final usage chunk.

    `field` is the choice's payload key: "text" for completions, "delta" for chat.
    """

    response_id: str
    object_type: str  # OpenAI's "object" field
    created: int
    model: str
    field: str
    include_usage: bool
    with_token_ids: bool

    def choice(self, index: int, value: Any, logprobs: Any = None, finish_reason: str | None = None,
               stop_reason: int | str | None = None, token_ids: list[int] | None = None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, self.field: value, "logprobs": logprobs,
                                  "finish_reason": finish_reason, "stop_reason": stop_reason}
        if self.with_token_ids:
            choice["token_ids"] = token_ids or []
        body: dict[str, Any] = {"id": self.response_id, "object": self.object_type, "created": self.created,
                                "model": self.model, "choices": [choice]}
        if self.include_usage:
            body["usage"] = None  # OpenAI sends null here; the counts come once, in usage()
        return body

    def usage(self, counts: dict[str, object]) -> dict[str, Any]:
        return {"id": self.response_id, "object": self.object_type, "created": self.created, "model": self.model,
                "choices": [], "usage": counts}


def frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class TextChunkSink:
    """Writes a stream's tokens straight to the connection, from the engine's output processing.

    A streamed token otherwise costs a wake-up of the handler task and an awaited write; attached to the
    request's OutputStream (attach_sink), this writes each token's frame synchronously instead. It declines
    (and the token waits for the handler, which then writes with aiohttp's own flow control) when the
    connection is closing or its send buffer is past `buffer_limit` bytes. The final delta always goes to the
    handler.

    Each frame is `prefix + json(text) + suffix`: the pre-encoded bytes of a chunk around its text field. A
    token whose text is still incomplete (part of a character) is counted and writes nothing.
    """

    def __init__(self, request: web.Request, response: web.StreamResponse, prefix: bytes, suffix: bytes,
                 buffer_limit: int = 64 * 1024) -> None:
        if not response.prepared:
            raise RuntimeError("attach the sink after the response's headers are sent")
        self._transport = request.transport
        self._chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self._prefix = prefix
        self._suffix = suffix
        self._limit = buffer_limit
        self.num_tokens = 0

    @classmethod
    def around(cls, request: web.Request, response: web.StreamResponse, chunk: dict[str, Any],
               path: tuple[str | int, ...]) -> TextChunkSink:
        """A sink whose frames are `chunk` with the text at `path` (e.g. ("choices", 0, "text"))."""
        prefix, suffix = split_frame(chunk, path)
        return cls(request, response, prefix, suffix)

    def frame(self, text: str) -> bytes:
        return self._prefix + orjson.dumps(text) + self._suffix

    def __call__(self, text: str) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size() > self._limit:
            return False
        self.num_tokens += 1
        if text:
            data = self.frame(text)
            transport.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)
        return True


async def stream_text(request: web.Request, sse: SSEWriter, handle: RequestHandle, chunk: dict[str, Any],
                      path: tuple[str | int, ...]) -> tuple[RequestDelta, int]:
    """Stream one choice's text, each token's frame written from the engine's output step (TextChunkSink).

    `chunk` is the frame of one text delta, its text at `path`. The handler only wakes for the end, or to write
    what the sink declined while the client was slow to read. Returns the final delta (not yet sent) and the
    number of tokens generated.
    """
    stream = handle.stream
    assert stream is not None
    sink = TextChunkSink.around(request, sse.response, chunk, path)
    stream.attach_sink(sink)
    num_tokens = 0
    while True:
        delta = await stream.get()
        num_tokens += len(delta.token_ids)
        if delta.finished:
            return delta, num_tokens + sink.num_tokens
        if delta.text:
            await sse.response.write(sink.frame(delta.text))


_MARK = "\x00"  # the text's placeholder: no other field of a chunk holds it, and orjson writes it as \u0000
_MARK_JSON = b'"\\u0000"'


def split_frame(chunk: dict[str, Any], path: tuple[str | int, ...]) -> tuple[bytes, bytes]:
    """The SSE frame of `chunk` cut around the string at `path`: frame = prefix + json(text) + suffix."""
    inner: Any = chunk
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = _MARK
    encoded = orjson.dumps(chunk)
    cut = encoded.index(_MARK_JSON)
    return b"data: " + encoded[:cut], encoded[cut + len(_MARK_JSON):] + b"\n\n"


async def iterate_deltas(handles: list[RequestHandle]) -> AsyncIterator[tuple[int, RequestDelta]]:
    """Yield (choice index, delta) from every handle's stream as they arrive, until all have finished."""
    if len(handles) == 1:
        stream = handles[0].stream
        assert stream is not None
        while True:
            delta = await stream.get()
            yield 0, delta
            if delta.finished:
                return
    pending: dict[asyncio.Future[RequestDelta], int] = {}
    try:
        for i, h in enumerate(handles):
            assert h.stream is not None
            pending[asyncio.ensure_future(h.stream.get())] = i
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: pending[t]):
                i = pending.pop(task)
                delta = task.result()
                yield i, delta
                if not delta.finished:
                    stream = handles[i].stream
                    assert stream is not None
                    pending[asyncio.ensure_future(stream.get())] = i
    finally:
        for task in pending:
            task.cancel()
