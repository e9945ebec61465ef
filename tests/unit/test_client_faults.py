"""The SDK against a fault-injecting aiohttp server: retries (and when not to), Retry-After, resets, timeouts,
mid-stream errors. The server scripts one behaviour per attempt, so each test states exactly what the wire does.
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
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


def chunk(text: str, finish: str | None = None, index: int = 0, **extra: Any) -> bytes:
    body = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
            "choices": [{"index": index, "text": text, "finish_reason": finish, "logprobs": None, **extra}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE_CHUNK = b'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"


def error_json(status: int, message: str, etype: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": param, "code": status}}


async def ok(request: web.Request) -> web.StreamResponse:
    return web.json_response(OK_COMPLETION)


async def models(request: web.Request) -> web.StreamResponse:
    return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})


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
    """Serves /v1/completions (and chat, and GET /v1/models) with scripted behaviours, one per attempt; the last
    one repeats."""

    script: list[Behaviour] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)  # arrival times (monotonic)
    bodies: list[dict[str, Any] | None] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.attempts.append(time.monotonic())
        self.bodies.append(await request.json() if request.can_read_body else None)
        self.headers.append(dict(request.headers))
        behaviour = self.script[min(len(self.attempts), len(self.script)) - 1]
        try:
            return await behaviour(request)
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnected.set()
            raise


async def start_fault_server(aiohttp_server) -> tuple[FaultServer, str]:
    """(FaultServer, base URL); set `.script` before calling."""
    server = FaultServer()
    app = web.Application(handler_args={"handler_cancellation": True})  # so a hang-up cancels the handler
    app.router.add_post("/v1/completions", server.handle)
    app.router.add_post("/v1/chat/completions", server.handle)
    app.router.add_get("/v1/models", server.handle)
    test_server = await aiohttp_server(app)
    return server, str(test_server.make_url(""))


@pytest.fixture
async def fault(aiohttp_server):
    return await start_fault_server(aiohttp_server)


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
    body = server.bodies[0]
    assert body is not None and body["stream"] is True and body["stream_options"] == {"include_usage": True}


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


async def test_a_stream_without_done_but_every_choice_finished_ends_normally(fault):
    server, url = fault
    server.script = [sse(chunk("a", index=0), chunk("b", index=1), chunk("", "stop", index=1),
                         chunk("", "length", index=0))]
    async with fast_client(url) as c, c.stream_complete("hi", n=2) as stream:
        assert len([d async for d in stream]) == 4
    assert stream.finish_reasons == {0: "length", 1: "stop"}


async def test_a_stream_without_done_with_a_choice_unfinished_raises(fault):
    """n=2: choice 0 finished, choice 1 was cut short. A clean end of body must not pass for a complete stream."""
    server, url = fault
    server.script = [sse(chunk("a", index=0), chunk("b", index=1), chunk("", "stop", index=0))]
    received: list[str] = []
    async with fast_client(url, max_retries=0) as c:
        with pytest.raises(ConnectionError, match=r"before \[DONE\] \(choice 1 unfinished\)"):
            await read_into(c.stream_complete("hi", n=2), received)
    assert received == ["a", "b", ""]


# --- the client's own headers, whoever made the session --------------------------------------------------------


async def test_a_session_passed_in_still_sends_the_clients_headers(fault):
    server, url = fault
    async with aiohttp.ClientSession(headers={"X-Session": "s"}) as session:
        async with fast_client(url, api_key="sk-1", headers={"X-Tenant": "t"}, session=session) as c:
            server.script = [ok]
            await c.complete("hi")
            server.script = [sse(chunk("a", "stop"), DONE)]
            assert [d.text async for d in c.stream_complete("hi")] == ["a"]
            server.script = [models]
            assert [m.id for m in await c.models()] == ["m"]
        assert not session.closed  # the client closes only a session it made
    assert len(server.headers) == 3
    for headers in server.headers:
        assert headers["Authorization"] == "Bearer sk-1"
        assert headers["X-Tenant"] == "t" and headers["X-Session"] == "s"
        assert headers["User-Agent"].startswith("hfserve-client/")
    assert server.headers[1]["Accept"] == "text/event-stream"


@pytest.mark.parametrize(("session_ua", "client_headers", "expected"), [
    (None, {}, "hfserve-client/"),
    ("mine/1", {}, "mine/1"),  # the session's own User-Agent beats the client's default
    ("mine/1", {"user-agent": "given/2"}, "given/2"),  # but not one given to the client
])
async def test_which_user_agent_a_request_carries(fault, session_ua, client_headers, expected):
    server, url = fault
    server.script = [ok]
    session_headers = {"User-Agent": session_ua} if session_ua else None
    async with aiohttp.ClientSession(headers=session_headers) as session, \
            fast_client(url, headers=client_headers, session=session) as c:
        await c.complete("hi")
    assert server.headers[0]["User-Agent"].startswith(expected)


# --- a closed client, another event loop --------------------------------------------------------------------


async def test_a_closed_client_raises_and_opens_no_new_session(fault):
    server, url = fault
    server.script = [ok]
    client = fast_client(url)
    async with client:
        await client.complete("hi")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="closed"):
            await client.complete("hi")
        with pytest.raises(RuntimeError, match="closed"):
            await client.models()
        with pytest.raises(RuntimeError, match="closed"):
            await read_into(client.stream_complete("hi"), [])
        with pytest.raises(RuntimeError, match="closed"):
            async with client:
                pass
        await client.close()  # closing again is harmless
        gc.collect()
    assert len(server.attempts) == 1
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


async def test_a_closed_client_with_a_session_of_yours_raises_too(fault):
    server, url = fault
    server.script = [ok]
    async with aiohttp.ClientSession() as session:
        client = fast_client(url, session=session)
        await client.close()
        with pytest.raises(RuntimeError, match="closed"):
            await client.complete("hi")
    assert server.attempts == []


def test_a_client_reused_in_a_second_event_loop_says_so():
    client = AsyncClient("http://127.0.0.1:9")  # nothing is sent: the check comes first
    asyncio.run(client.__aenter__())  # the first loop makes the session, and ends
    with pytest.raises(RuntimeError, match="another event loop"):
        asyncio.run(client.models())
    asyncio.run(client.close())  # closing from elsewhere, after the loop ended, still works


# --- stopping early: what break does, and does not do ----------------------------------------------------------


def endless() -> Behaviour:
    return sse(chunk("a"), chunk("b"), then=lambda: asyncio.sleep(30))


async def test_break_inside_async_with_hangs_up_at_the_blocks_exit(fault):
    server, url = fault
    server.script = [endless()]
    async with fast_client(url) as c:
        async with c.stream_complete("hi") as stream:
            async for delta in stream:
                assert delta.text == "a"
                break
            await asyncio.sleep(0.1)
            assert not server.disconnected.is_set()  # break alone tells the stream nothing...
            assert (await anext(stream)).text == "b"  # ...and it can be read on
        await asyncio.wait_for(server.disconnected.wait(), 2)  # the block's exit hangs up


async def test_aclose_hangs_up_a_stream_held_in_a_variable(fault):
    server, url = fault
    server.script = [endless()]
    async with fast_client(url) as c:
        stream = c.stream_complete("hi")
        async for _ in stream:
            break
        await stream.aclose()
        await asyncio.wait_for(server.disconnected.wait(), 2)  # while `stream` is still referenced
        assert [d async for d in stream] == []


# --- fields the client does not model, on streamed deltas ------------------------------------------------------


async def test_streamed_deltas_keep_the_fields_the_client_does_not_model(fault):
    server, url = fault
    tool = {"index": 0, "id": "call-1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    server.script = [sse(chat_chunk({"role": "assistant", "reasoning_content": "think"}),
                         chat_chunk({"tool_calls": [tool]}, "tool_calls"), DONE)]
    async with fast_client(url) as c:
        deltas = [d async for d in c.stream_chat([{"role": "user", "content": "hi"}])]
        assert deltas[0].raw["delta"]["reasoning_content"] == "think"
        assert deltas[1].raw["delta"]["tool_calls"] == [tool] and deltas[1].finish_reason == "tool_calls"
        server.script = [sse(chunk("a", "stop", matched_stop=7), DONE)]
        [delta] = [d async for d in c.stream_complete("hi")]
        assert delta.raw["matched_stop"] == 7 and delta.raw["text"] == "a"


async def _json(body: dict[str, Any], code: int) -> web.StreamResponse:
    return web.json_response(body, status=code)
