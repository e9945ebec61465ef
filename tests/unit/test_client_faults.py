"""The SDK against a fault-injecting aiohttp server: retries (and when not to), Retry-After, resets, timeouts,
mid-stream errors. The server scripts one behaviour per attempt, so each test states exactly what the wire does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

import service.client.retry as retry_module
from service.client import (
    AsyncClient,
    BadRequestError,
    CompletionStream,
    ConnectionError,
    OverloadedError,
    RetryPolicy,
    ServerError,
    TimeoutError,
)

Behaviour = Callable[[web.Request], Awaitable[web.StreamResponse]]

OK_COMPLETION = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                 "choices": [{"index": 0, "text": "hello", "finish_reason": "stop", "logprobs": None}],
                 "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}


def chunk(text: str, finish: str | None = None) -> bytes:
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE_CHUNK = b'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"


def error_json(status: int, message: str, etype: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": param, "code": status}}


async def ok(request: web.Request) -> web.StreamResponse:
    return web.json_response(OK_COMPLETION)


def status(code: int, etype: str, headers: dict[str, str] | None = None) -> Behaviour:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.json_response(error_json(code, f"injected {code}", etype), status=code, headers=headers)
    return respond


async def reset(request: web.Request) -> web.StreamResponse:
    """Hang up without answering, as a crashed or restarted server would."""
    assert request.transport is not None
    request.transport.abort()
    await asyncio.sleep(0.05)
    return web.Response()


def sse(*frames: bytes, then: Callable[[], Awaitable[None]] | None = None, cut: bool = False) -> Behaviour:
    """A 200 event stream of `frames`; then optionally await `then()`, or hang up (`cut`) instead of ending."""
    async def respond(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Request-Id": "req-1"})
        await resp.prepare(request)
        for frame in frames:
            await resp.write(frame)
        if then is not None:
            await then()
        if cut:
            assert request.transport is not None
            request.transport.abort()
            return resp
        await resp.write_eof()
        return resp
    return respond


@dataclass
class FaultServer:
    """Serves /v1/completions with scripted behaviours, one per attempt; the last one repeats."""

    script: list[Behaviour] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)  # arrival times (monotonic)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.attempts.append(time.monotonic())
        self.bodies.append(await request.json())
        behaviour = self.script[min(len(self.attempts), len(self.script)) - 1]
        try:
            return await behaviour(request)
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise


@pytest.fixture
async def fault(aiohttp_server):
    """(FaultServer, base URL); set `.script` before calling."""
    server = FaultServer()
    app = web.Application(handler_args={"handler_cancellation": True})  # so a hang-up cancels the handler
    app.router.add_post("/v1/completions", server.handle)
    test_server = await aiohttp_server(app)
    return server, str(test_server.make_url(""))


async def read_into(stream: CompletionStream, texts: list[str]) -> None:
    """Read a stream to its end, keeping each delta's text, so a test sees what arrived before a failure."""
    async for delta in stream:
        texts.append(delta.text)


def fast_client(base_url: str, **kw: Any) -> AsyncClient:
    kw.setdefault("retry_policy", RetryPolicy(max_retries=2, backoff_base_s=0.01, backoff_max_s=0.02))
    return AsyncClient(base_url, **kw)


async def test_503_with_retry_after_is_retried_after_that_delay(fault):
    server, url = fault
    # A backoff of 5 s would make this test slow; Retry-After must replace it.
    server.script = [status(503, "service_unavailable", {"Retry-After": "0.3"}), ok]
    async with fast_client(url, retry_policy=RetryPolicy(max_retries=2, backoff_base_s=5, backoff_max_s=5)) as c:
        result = await c.complete("hi", max_tokens=1)
    assert result.text == "hello"
    assert len(server.attempts) == 2
    assert 0.3 <= server.attempts[1] - server.attempts[0] < 2.0


async def test_429_retries_are_logged_then_the_error_surfaces(fault, monkeypatch):
    server, url = fault
    server.script = [status(429, "overloaded", {"Retry-After": "0"})]
    logged: list[dict[str, Any]] = []

    class Recorder:
        def warning(self, event: str, **kw: Any) -> None:
            logged.append({"event": event, **kw})

    monkeypatch.setattr(retry_module, "log", Recorder())
    async with fast_client(url) as c:
        with pytest.raises(OverloadedError) as info:
            await c.complete("hi")
    assert len(server.attempts) == 3  # the first try and max_retries=2 retries
    assert info.value.status == 429 and info.value.retry_after_s == 0 and info.value.type == "overloaded"
    assert [e["attempt"] for e in logged] == [1, 2]
    assert all(e["event"] == "retrying" and e["status"] == 429 for e in logged)


@pytest.mark.parametrize("code", [502, 504])
async def test_gateway_errors_are_retried(fault, code):
    server, url = fault
    server.script = [status(code, "bad_gateway"), ok]
    async with fast_client(url) as c:
        assert (await c.complete("hi")).text == "hello"
    assert len(server.attempts) == 2


async def test_400_is_not_retried_and_carries_the_servers_error(fault):
    server, url = fault
    server.script = [lambda r: _json(error_json(400, "temperature=-3: must be >= 0", "invalid_request_error",
                                                "temperature"), 400), ok]
    async with fast_client(url) as c:
        with pytest.raises(BadRequestError) as info:
            await c.complete("hi", temperature=-3)
    assert len(server.attempts) == 1
    err = info.value
    assert (err.status, err.param, err.type, err.code) == (400, "temperature", "invalid_request_error", 400)
    assert err.body == error_json(400, "temperature=-3: must be >= 0", "invalid_request_error", "temperature")
    assert "temperature=-3" in str(err)


async def test_500_is_not_retried(fault):
    server, url = fault
    server.script = [status(500, "internal_error"), ok]
    async with fast_client(url) as c:
        with pytest.raises(ServerError):
            await c.complete("hi")
    assert len(server.attempts) == 1


async def test_a_connection_reset_is_retried(fault):
    server, url = fault
    server.script = [reset, ok]
    async with fast_client(url) as c:
        assert (await c.complete("hi")).text == "hello"
    assert len(server.attempts) == 2


async def test_an_unreachable_server_raises_connection_error_after_retries(unused_tcp_port_factory):
    url = f"http://127.0.0.1:{unused_tcp_port_factory()}"
    async with fast_client(url) as c:
        with pytest.raises(ConnectionError) as info:
            await c.models()
    assert isinstance(info.value, OSError)  # also the builtin, for callers that catch that


async def test_a_stream_reset_before_its_first_delta_is_retried(fault):
    server, url = fault
    server.script = [sse(cut=True), sse(chunk("a"), chunk("b", "stop"), USAGE_CHUNK, DONE)]
    async with fast_client(url) as c, c.stream_complete("hi") as stream:
        texts = [d.text async for d in stream]
    assert texts == ["a", "b"] and stream.finish_reason == "stop"
    assert stream.usage is not None and stream.usage.total_tokens == 4
    assert len(server.attempts) == 2
    assert server.bodies[0]["stream"] is True and server.bodies[0]["stream_options"] == {"include_usage": True}


async def test_a_stream_reset_after_data_raises_and_is_not_retried(fault):
    server, url = fault
    async def pause() -> None:
        await asyncio.sleep(0.05)  # so the first delta reaches the caller before the hang-up
    server.script = [sse(chunk("a"), then=pause, cut=True), sse(chunk("x", "stop"), DONE)]
    received = []
    async with fast_client(url) as c:
        with pytest.raises(ConnectionError):
            await read_into(c.stream_complete("hi"), received)
    assert received == ["a"]
    assert len(server.attempts) == 1


async def test_a_slow_stream_trips_the_idle_timeout_and_hangs_up(fault):
    server, url = fault
    server.script = [sse(chunk("a"), then=lambda: asyncio.sleep(5))]
    received = []
    t0 = time.monotonic()
    async with fast_client(url, idle_timeout=0.2, timeout=10) as c:
        with pytest.raises(TimeoutError, match="idle timeout"):
            await read_into(c.stream_complete("hi"), received)
    assert received == ["a"]
    assert time.monotonic() - t0 < 2.0
    assert len(server.attempts) == 1  # timeouts are not retried
    await asyncio.wait_for(server.disconnected.wait(), 2)  # the server saw the connection go


async def test_the_total_timeout_bounds_a_stream_that_keeps_sending(fault):
    server, url = fault

    async def trickle() -> None:
        await asyncio.sleep(5)

    frames = [chunk(str(i)) for i in range(3)]
    server.script = [sse(*frames, then=trickle)]
    async with fast_client(url, idle_timeout=None, timeout=0.3) as c:
        with pytest.raises(TimeoutError, match="total timeout"):
            await read_into(c.stream_complete("hi"), [])


async def test_the_total_timeout_cuts_retries_short(fault):
    server, url = fault
    server.script = [status(503, "service_unavailable", {"Retry-After": "2"})]
    t0 = time.monotonic()
    async with fast_client(url, timeout=0.5) as c:
        with pytest.raises(OverloadedError):
            await c.complete("hi")
    assert len(server.attempts) == 1  # waiting 2 s would overrun the 0.5 s budget, so it raises at once
    assert time.monotonic() - t0 < 0.5


async def test_a_mid_stream_error_event_raises_after_the_deltas_before_it(fault):
    server, url = fault
    failure = b"data: " + orjson.dumps(error_json(500, "model step failed", "internal_error")) + b"\n\n"
    server.script = [sse(chunk("a"), failure, DONE), ok]
    received = []
    async with fast_client(url) as c:
        with pytest.raises(ServerError, match="model step failed") as info:
            await read_into(c.stream_complete("hi"), received)
    assert received == ["a"]
    assert info.value.code == 500 and info.value.type == "internal_error" and info.value.request_id == "req-1"
    assert len(server.attempts) == 1


async def test_a_stream_cut_before_done_without_a_finish_reason_raises(fault):
    server, url = fault
    server.script = [sse(chunk("a"))]  # a clean end of body, but no finish reason and no [DONE]
    async with fast_client(url, max_retries=0) as c:
        with pytest.raises(ConnectionError, match=r"before \[DONE\]"):
            await read_into(c.stream_complete("hi"), [])


async def test_a_stream_without_done_but_finished_ends_normally(fault):
    server, url = fault
    server.script = [sse(chunk("a"), chunk("", "length"))]
    async with fast_client(url) as c:
        stream = c.stream_complete("hi")
        assert [d.finish_reason async for d in stream] == [None, "length"]


async def _json(body: dict[str, Any], code: int) -> web.StreamResponse:
    return web.json_response(body, status=code)
