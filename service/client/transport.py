"""HTTP under the client: one pooled aiohttp session, auth headers, time limits, retries, error mapping.

Time limits are deadlines on the event loop's clock rather than aiohttp's ClientTimeout, so that one total
budget covers every retry and backoff sleep of a call, and a stream's idle limit can restart at every chunk.
aiohttp keeps only the connect limit (a slow connect is a connection error, and so retried).
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from service.client.errors import APIError, ConnectionError, ServerError, TimeoutError, error_for_status
from service.client.retry import Retrier, RetryPolicy, parse_retry_after

T = TypeVar("T")

USER_AGENT = "hfserve-client/0.1"
REQUEST_ID_HEADER = "X-Request-Id"


@dataclass(frozen=True)
class Timeouts:
    """Seconds; None means no limit. `total_s` bounds a whole call: all attempts, backoff and, for a stream,
    reading it to the end. `idle_s` bounds each wait for a stream's next bytes (its headers first)."""

    total_s: float | None = 600.0
    idle_s: float | None = 60.0
    connect_s: float | None = 10.0

    def __post_init__(self) -> None:
        for name in ("total_s", "idle_s", "connect_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}={value}: must be > 0 or None")


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any  # parsed JSON, or the text when the body is not JSON

    @property
    def request_id(self) -> str | None:
        return self.headers.get(REQUEST_ID_HEADER)


def normalize_base_url(url: str) -> str:
    """The server root. An OpenAI-style ".../v1" base URL is accepted too: the client adds /v1 itself, because
    /health, /tokenize and /detokenize live outside it."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        raise ValueError(f"base_url={url!r}: must start with http:// or https://")
    return url.removesuffix("/v1")


def translate(exc: aiohttp.ClientError | OSError, what: str) -> ConnectionError:
    """An aiohttp or socket failure as the client's ConnectionError (a slow connect included: it is retried)."""
    detail = str(exc) or type(exc).__name__
    return ConnectionError(f"{what}: connection failed: {detail}")


class Transport:
    def __init__(self, base_url: str, api_key: str | None, timeouts: Timeouts, retry: RetryPolicy, *,
                 limit: int = 100, limit_per_host: int = 0, headers: Mapping[str, str] | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = normalize_base_url(base_url)
        self.timeouts = timeouts
        self.retry = retry
        self._limit, self._limit_per_host = limit, limit_per_host
        self._headers = {"User-Agent": USER_AGENT, **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session = session
        self._owns_session = session is None

    def session(self) -> aiohttp.ClientSession:
        """The shared session, made on first use (it must be made inside a running event loop)."""
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the aiohttp session passed to the client is closed")
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit_per_host)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s),
            )
        return self._session

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    def url(self, path: str) -> str:
        return self.base_url + path

    def deadline(self) -> float | None:
        total = self.timeouts.total_s
        return None if total is None else asyncio.get_running_loop().time() + total

    async def within(self, aw: Awaitable[T], what: str, deadline: float | None, *, idle: bool = False) -> T:
        """Await `aw` under the call's deadline and, if `idle`, the idle limit too. Raises the client's errors."""
        idle_at = None
        if idle and self.timeouts.idle_s is not None:
            idle_at = asyncio.get_running_loop().time() + self.timeouts.idle_s
        when = min((t for t in (deadline, idle_at) if t is not None), default=None)
        try:
            async with asyncio.timeout_at(when):
                return await aw
        except APIError:
            raise
        except aiohttp.ClientError as exc:  # before TimeoutError: aiohttp's connect timeout is both
            raise translate(exc, what) from exc
        except builtins.TimeoutError:
            if idle_at is not None and when == idle_at:
                raise TimeoutError(f"{what}: no data from the server for {self.timeouts.idle_s}s "
                                   "(idle timeout)") from None
            raise TimeoutError(f"{what}: exceeded the total timeout of {self.timeouts.total_s}s") from None
        except OSError as exc:
            raise translate(exc, what) from exc

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                      retry: bool = True, check: bool = True) -> Reply:
        """One JSON call, retried per the policy; with `check`, an HTTP error status raises."""
        what = f"{method} {path}"
        deadline = self.deadline()
        retrier = Retrier(self.retry if retry else RetryPolicy(max_retries=0), what, deadline)
        while True:
            try:
                reply = await self.within(self._request_once(method, path, body), what, deadline)
                if check and reply.status >= 400:
                    raise error_from_reply(reply)
                return reply
            except APIError as err:
                if not await retrier.wait_before_retry(err):
                    raise

    async def _request_once(self, method: str, path: str, body: dict[str, Any] | None) -> Reply:
        data = None if body is None else orjson.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else None
        async with self.session().request(method, self.url(path), data=data, headers=headers) as resp:
            raw = await resp.read()
            return Reply(resp.status, resp.headers, parse_body(raw, resp.reason or ""))

    async def open_stream(self, path: str, body: dict[str, Any], retrier: Retrier) -> aiohttp.ClientResponse:
        """POST and wait for a 200 with an event stream; the caller owns (and must close) the response."""
        what = f"POST {path}"
        while True:
            try:
                return await self.within(self._open_once(path, body, what, retrier.deadline), what,
                                         retrier.deadline, idle=True)
            except APIError as err:
                if not await retrier.wait_before_retry(err):
                    raise

    async def _open_once(self, path: str, body: dict[str, Any], what: str,
                         deadline: float | None) -> aiohttp.ClientResponse:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        resp = await self.session().post(self.url(path), data=orjson.dumps(body), headers=headers)
        try:
            if resp.status >= 400:
                raise error_from_reply(Reply(resp.status, resp.headers, parse_body(await resp.read(), resp.reason)))
            if resp.content_type != "text/event-stream":
                raise ServerError(f"{what}: expected an event stream, got {resp.content_type!r}",
                                  status=resp.status, request_id=resp.headers.get(REQUEST_ID_HEADER))
        except BaseException:
            resp.close()
            raise
        return resp


def parse_body(raw: bytes, reason: str | None) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", errors="replace") or reason


def error_from_reply(reply: Reply) -> APIError:
    return error_for_status(reply.status, reply.body, request_id=reply.request_id,
                            retry_after_s=parse_retry_after(reply.headers.get("Retry-After")))
