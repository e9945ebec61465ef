"""The harness's HTTP layer against a small in-process fake server whose frames arrive at known times: where
E2EL ends, and what a frame or body of the wrong shape does (fails that request, never the run).

`FakeServer` and `serve` are reused by test_loadtest_cli.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from loadtest.client import Outcome, RequestRecord, _Reader, send_request
from loadtest.config import EndpointKind, TargetConfig

USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def text(t: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": t, "finish_reason": finish}]}


@dataclass
class Stream:
    """SSE frames, each sent `delay` seconds after the one before; then `data: [DONE]`. bytes go out as they are
    (after `data: `), anything else as JSON."""

    frames: list[tuple[float, object]]


@dataclass
class Body:
    """A non-streamed answer."""

    payload: object


@dataclass
class Status:
    code: int


Script = Stream | Body | Status


def ok_stream() -> Stream:
    return Stream([(0.0, text("a")), (0.0, text("b")), (0.0, text("", "length")), (0.0, USAGE)])


def as_chat(frame: object) -> object:
    """A completions frame made from `text(...)` in the chat shape: its text as the delta's content."""
    if not isinstance(frame, dict) or not isinstance(frame.get("choices"), list):
        return frame
    choices = [{**{k: v for k, v in c.items() if k != "text"}, "delta": {"content": c["text"]}}
               if isinstance(c, dict) and "text" in c else c for c in frame["choices"]]
    return {**frame, "choices": choices}


@dataclass
class FakeServer:
    """A bare OpenAI-style /v1/completions (and chat) server: the n-th POST (1-based, the harness's test request
    included) gets `script(n)`. GET /v1/models names "fake"; /tokenize answers only if `tokenize`."""

    script: Callable[[int], Script] = lambda n: ok_stream()
    tokenize: bool = False  # serve vLLM's /tokenize, counting one token per word
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def count(self, request: web.Request) -> web.Response:
        if not self.tokenize:
            raise web.HTTPNotFound()
        return web.json_response({"count": len(str((await request.json())["prompt"]).split())})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        script = self.script(len(self.requests))
        if isinstance(script, Status):
            return web.json_response({"error": {"message": "scripted", "code": script.code}}, status=script.code)
        if isinstance(script, Body):
            return web.Response(body=orjson.dumps(script.payload), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chat = request.path.endswith("chat/completions")
        for delay, frame in script.frames:
            if delay:
                await asyncio.sleep(delay)
            data = frame if isinstance(frame, bytes) else orjson.dumps(as_chat(frame) if chat else frame)
            await resp.write(b"data: " + data + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake"}]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/tokenize", self.count)
        return app


async def serve(aiohttp_server: Any, server: FakeServer) -> str:
    """Start `server` and return its base URL."""
    return str((await aiohttp_server(server.app())).make_url("")).rstrip("/")


async def send(base_url: str, kind: EndpointKind = EndpointKind.COMPLETIONS, stream: bool = True) -> RequestRecord:
    endpoint = "/v1/chat/completions" if kind is EndpointKind.CHAT else "/v1/completions"
    target = TargetConfig(base_url, endpoint=endpoint, kind=kind, stream=stream, request_timeout_s=10)
    async with aiohttp.ClientSession() as session:
        return await send_request(session, target, "fake", RequestRecord(0, "hi", 1, 8))


async def test_e2el_ends_at_a_trailing_finish_frame_not_at_the_usage_frame(aiohttp_server) -> None:
    # text at ~0, text at ~0.05, the empty finish frame at ~0.20, then the usage frame at ~0.30 and [DONE].
    url = await serve(aiohttp_server, FakeServer(lambda n: Stream(
        [(0.0, text("a")), (0.05, text("b")), (0.15, text("", "length")), (0.1, USAGE)])))
    rec = await send(url)
    assert rec.outcome is Outcome.SUCCESS and rec.text == "ab"
    last_text = rec.chunk_times[-1] - rec.sent
    assert rec.e2el >= 0.19 and rec.e2el - last_text >= 0.14  # the finish frame counts ...
    assert rec.done - rec.sent - rec.e2el >= 0.09  # ... the usage-only frame after it does not
    assert rec.ttft is not None and rec.ttft <= last_text  # TTFT: still the first frame with text


async def test_chat_ttft_skips_the_role_frame_and_e2el_takes_the_finish_frame(aiohttp_server) -> None:
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    url = await serve(aiohttp_server, FakeServer(lambda n: Stream(
        [(0.0, role), (0.1, {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}), (0.1, finish)])))
    rec = await send(url, EndpointKind.CHAT)
    assert rec.outcome is Outcome.SUCCESS and rec.text == "Hi"
    assert rec.ttft is not None and rec.ttft >= 0.09
    assert rec.e2el - rec.ttft >= 0.09


@pytest.mark.parametrize("frame", [
    b"[1, 2]",
    b'"just a string"',
    b"null",
    b'{"choices": [null]}',
    b'{"choices": "x"}',
    b'{"choices": [1, 2]}',
])
async def test_a_frame_of_the_wrong_shape_fails_only_that_request(aiohttp_server, frame: bytes) -> None:
    url = await serve(aiohttp_server, FakeServer(lambda n: Stream([(0.0, text("a")), (0.0, frame)])))
    rec = await send(url)
    assert rec.outcome is Outcome.FAILED
    assert rec.error_code == "bad_response" and rec.error.startswith("bad response: "), rec.error


async def test_a_chat_delta_of_the_wrong_shape_fails_the_request(aiohttp_server) -> None:
    url = await serve(aiohttp_server, FakeServer(lambda n: Stream([(0.0, {"choices": [{"delta": "Hi"}]})])))
    rec = await send(url, EndpointKind.CHAT)
    assert rec.outcome is Outcome.FAILED and rec.error_code == "bad_response"


@pytest.mark.parametrize("payload", [[1, 2], "text", {"choices": [None]}, {"choices": {"text": "a"}}])
async def test_a_non_streamed_body_of_the_wrong_shape_fails_the_request(aiohttp_server, payload: object) -> None:
    url = await serve(aiohttp_server, FakeServer(lambda n: Body(payload)))
    rec = await send(url, stream=False)
    assert rec.outcome is Outcome.FAILED
    assert rec.error_code == "bad_response" and rec.error.startswith("bad response: "), rec.error


async def test_non_streamed_body_has_an_e2el_and_no_ttft(aiohttp_server) -> None:
    body = {"choices": [{"index": 0, "text": "abc", "finish_reason": "length"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 3}}
    url = await serve(aiohttp_server, FakeServer(lambda n: Body(body)))
    rec = await send(url, stream=False)
    assert rec.outcome is Outcome.SUCCESS and rec.text == "abc" and rec.usage_completion_tokens == 3
    assert rec.ttft is None and rec.tpot is None and rec.itl == []
    assert 0 < rec.e2el <= rec.done - rec.sent


def test_reader_ignores_usage_counts_that_are_not_integers() -> None:
    rec = RequestRecord(0, "p", 3, 8)
    reader = _Reader(rec, EndpointKind.COMPLETIONS)
    assert reader.apply({"choices": [{"text": "a"}], "usage": {"prompt_tokens": [1], "completion_tokens": "x"}}, 1.0)
    assert rec.usage_prompt_tokens is None and rec.usage_completion_tokens is None and rec.text == "a"


def test_reader_stamps_the_end_at_every_frame_with_choices() -> None:
    rec = RequestRecord(0, "p", 3, 8)
    rec.sent = 0.5
    reader = _Reader(rec, EndpointKind.COMPLETIONS)
    reader.apply(text("a"), 1.0)
    reader.apply(text("", "stop"), 2.0)
    reader.apply(USAGE, 3.0)  # no choices: not the end of generation
    assert rec.chunk_times == [1.0] and rec.last_frame == 2.0
    assert rec.e2el == pytest.approx(1.5)
