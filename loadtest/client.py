"""The harness's own thin HTTP layer: one request, timed chunk by chunk, never retried.

Each content-bearing SSE frame is stamped with `time.perf_counter()` the moment its line is read, so TTFT and
ITL are measured at the client socket with nothing in between. Frames without content (a chat role header,
the usage frame, `[DONE]`) are read but not timed as tokens; the end of the response (E2EL) is the last frame
with any choices, as vLLM takes it, so a closing frame that carries only `finish_reason` counts.

A frame or body of the wrong shape (not a JSON object, `choices` not a list of objects, ...) fails that request
with "bad response: ..."; it never stops the run.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import aiohttp
import orjson

from loadtest.config import EndpointKind, TargetConfig


class Outcome(Enum):
    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    ABORTED = "aborted"  # the harness disconnected on purpose (--abort-fraction)


class TokenSource(Enum):
    """Where a request's output token count came from."""

    USAGE = "usage"  # the server's `usage.completion_tokens`
    TOKENIZER = "tokenizer"  # the server gave none: we counted the text with the tokenizer
    CHUNKS = "chunks"  # neither: one token per content chunk (an estimate)


@dataclass
class RequestRecord:
    """Everything measured about one request. Times are `time.perf_counter()` seconds."""

    index: int
    prompt: str
    prompt_len: int  # the harness's own measure; the server's usage replaces it when present
    max_tokens: int
    due: float = 0.0  # when the arrival schedule wanted it sent
    sent: float = 0.0
    done: float = 0.0  # response fully read, failed, or disconnected by us
    abort_after: int | None = None  # disconnect after this many content chunks
    outcome: Outcome = Outcome.PENDING
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int | None] = field(default_factory=list)  # None: the chunk did not say
    chunk_texts: list[str] = field(default_factory=list)
    last_frame: float | None = None  # the last frame with choices, content or not (None: none came)
    usage_prompt_tokens: int | None = None
    usage_completion_tokens: int | None = None
    output_tokens: int = 0
    token_source: TokenSource = TokenSource.USAGE
    http_status: int | None = None
    error: str = ""
    error_code: str = ""
    streamed: bool = True

    @property
    def text(self) -> str:
        return "".join(self.chunk_texts)

    @property
    def input_tokens(self) -> int:
        return self.usage_prompt_tokens if self.usage_prompt_tokens is not None else self.prompt_len

    @property
    def ttft(self) -> float | None:
        """First content chunk minus send; None without streaming (the text comes with the whole body)."""
        if not self.streamed or not self.chunk_times:
            return None
        return self.chunk_times[0] - self.sent

    @property
    def e2el(self) -> float:
        """Send to the last frame with choices, whether it carried text or only a finish_reason (as vLLM
        measures it), so not to `[DONE]` or a usage-only frame; to the end of the body without streaming."""
        if self.last_frame is not None:
            end = self.last_frame
        else:
            end = self.chunk_times[-1] if self.chunk_times else self.done
        return end - self.sent

    @property
    def itl(self) -> list[float]:
        """Gaps between successive content chunks."""
        t = self.chunk_times
        return [b - a for a, b in itertools.pairwise(t)] if self.streamed else []

    @property
    def itl_per_token(self) -> list[float]:
        """Each chunk's gap split evenly over the tokens it carried. Extra tokens in the first chunk arrive
        with the first token and have no gap of their own."""
        out: list[float] = []
        if not self.streamed:
            return out
        for gap, n in zip(self.itl, self.chunk_tokens[1:], strict=False):
            k = max(n or 1, 1)
            out.extend([gap / k] * k)
        return out

    @property
    def tpot(self) -> float | None:
        """(E2EL - TTFT) / (output tokens - 1); None without streaming or for a single token, which has no
        time per output token (vLLM leaves it out of TPOT too, and counts it as 0 only for goodput)."""
        ttft = self.ttft
        if ttft is None or self.output_tokens <= 1:
            return None
        return (self.e2el - ttft) / (self.output_tokens - 1)

    def fail(self, code: str, message: str) -> None:
        self.outcome = Outcome.FAILED
        self.error_code = code
        self.error = message[:500]


def build_body(target: TargetConfig, prompt: str, max_tokens: int, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "stream": target.stream}
    if target.kind is EndpointKind.CHAT:
        body["messages"] = [{"role": "user", "content": prompt}]
        body["max_completion_tokens"] = max_tokens
    else:
        body["prompt"] = prompt
        body["max_tokens"] = max_tokens
    if target.stream:
        body["stream_options"] = {"include_usage": True}
    if target.ignore_eos:
        body["ignore_eos"] = True
    for key, value in (("temperature", target.temperature), ("top_p", target.top_p), ("top_k", target.top_k)):
        if value is not None:
            body[key] = value
    body.update(target.extra_body)
    return body


class BadResponseError(ValueError):
    """A response frame or body of a shape no OpenAI-compatible server sends."""


def _snippet(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _content(kind: EndpointKind, choice: object) -> str:
    if not isinstance(choice, dict):
        raise BadResponseError(f"bad response: a choice is not a JSON object: {_snippet(choice)}")
    if kind is EndpointKind.CHAT:
        delta = choice.get("delta") or choice.get("message") or {}
        if not isinstance(delta, dict):
            raise BadResponseError(f"bad response: a choice's delta/message is not a JSON object: {_snippet(delta)}")
        return str(delta.get("content") or delta.get("reasoning_content") or "")
    return str(choice.get("text") or "")


def _count(value: object) -> int | None:
    """A usage count if it is one (an integer, not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _error_of(payload: dict[str, Any]) -> tuple[str, str] | None:
    err = payload.get("error")
    if err is None:
        return None
    if isinstance(err, dict):
        return str(err.get("code") or err.get("type") or "error"), str(err.get("message", err))
    return "error", str(err)


class _Reader:
    """Applies parsed response payloads to a record."""

    def __init__(self, record: RequestRecord, kind: EndpointKind) -> None:
        self.record = record
        self.kind = kind

    def apply(self, payload: object, now: float) -> bool:
        """Record one payload; False if it was an error frame. Raises BadResponseError for a payload of the
        wrong shape."""
        rec = self.record
        if not isinstance(payload, dict):
            raise BadResponseError(f"bad response: expected a JSON object, got {_snippet(payload)}")
        err = _error_of(payload)
        if err is not None:
            rec.fail(*err)
            return False
        choices = payload.get("choices")
        if choices is not None and not isinstance(choices, list):
            raise BadResponseError(f"bad response: 'choices' is not a list: {_snippet(choices)}")
        usage = payload.get("usage")
        if isinstance(usage, dict):
            if (n := _count(usage.get("prompt_tokens"))) is not None:
                rec.usage_prompt_tokens = n
            if (n := _count(usage.get("completion_tokens"))) is not None:
                rec.usage_completion_tokens = n
        if choices:
            rec.last_frame = now
        for choice in choices or []:
            text = _content(self.kind, choice)
            if not text:
                continue
            ids = choice.get("token_ids")
            rec.chunk_times.append(now)
            rec.chunk_texts.append(text)
            rec.chunk_tokens.append(len(ids) if isinstance(ids, list) else None)
        return True


async def send_request(session: aiohttp.ClientSession, target: TargetConfig, model: str,
                       record: RequestRecord) -> RequestRecord:
    """Send `record`'s request and fill in its timings and outcome. Never raises for a server's fault."""
    body = orjson.dumps(build_body(target, record.prompt, record.max_tokens, model))
    reader = _Reader(record, target.kind)
    record.streamed = target.stream
    timeout = aiohttp.ClientTimeout(total=target.request_timeout_s)
    record.sent = time.perf_counter()
    try:
        async with session.post(target.endpoint_url, data=body, headers=target.http_headers(),
                                timeout=timeout) as resp:
            record.http_status = resp.status
            if resp.status != 200:
                text = await resp.text(errors="replace")
                record.fail(f"HTTP {resp.status}", text)
            elif target.stream:
                await _read_stream(resp, reader)
            else:
                payload = orjson.loads(await resp.read())
                reader.apply(payload, time.perf_counter())
            if record.outcome is Outcome.ABORTED:
                resp.close()  # drop the connection mid-stream, as a vanished client would
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        record.fail("timeout", f"no complete response within {target.request_timeout_s}s")
    except aiohttp.ClientError as exc:
        record.fail(type(exc).__name__, str(exc) or type(exc).__name__)
    except BadResponseError as exc:
        record.fail("bad_response", str(exc))
    except ValueError as exc:  # orjson.JSONDecodeError among them
        record.fail("bad_response", f"bad response: {exc}")
    record.done = time.perf_counter()
    if record.outcome is Outcome.PENDING:
        if record.chunk_times:
            record.outcome = Outcome.SUCCESS
        else:
            record.fail("no_content", "the response carried no generated text")
    return record


async def _read_stream(resp: aiohttp.ClientResponse, reader: _Reader) -> None:
    rec = reader.record
    async for raw in resp.content:
        now = time.perf_counter()
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # blank separators, comments, `event:` lines
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        if not reader.apply(orjson.loads(data), now):
            return
        if rec.abort_after is not None and len(rec.chunk_times) >= rec.abort_after:
            rec.outcome = Outcome.ABORTED
            return
