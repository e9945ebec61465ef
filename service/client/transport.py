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
from multidict import CIMultiDict, CIMultiDictProxy

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
    """Shared by a client and its streams: one session, bound to the event loop that first used it.

    The client's headers (User-Agent, Authorization, `headers=`) go with every request, whoever made the session;
    a session passed in keeps its own defaults for the rest, and its own User-Agent unless `headers` sets one.
    """

    def __init__(self, base_url: str, api_key: str | None, timeouts: Timeouts, retry: RetryPolicy, *,
                 limit: int = 100, limit_per_host: int = 0, headers: Mapping[str, str] | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = normalize_base_url(base_url)
        self.timeouts = timeouts
        self.retry = retry
        self._limit, self._limit_per_host = limit, limit_per_host
        common: CIMultiDict[str] = CIMultiDict(headers or {})
        if "User-Agent" not in common and (session is None or "User-Agent" not in session.headers):
            common["User-Agent"] = USER_AGENT
        if api_key:
            common["Authorization"] = f"Bearer {api_key}"
        self._get_headers = CIMultiDictProxy(common)
        self._json_headers = _with(common, {"Content-Type": "application/json"})
        self._stream_headers = _with(common, {"Content-Type": "application/json", "Accept": "text/event-stream"})
        self._session = session
        self._owns_session = session is None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first call
        self._closed = False

    def session(self) -> aiohttp.ClientSession:
        """The shared session, made on first use. Raises RuntimeError once the client is closed, and in an event
        loop other than the first one used: a session and its pooled connections belong to one loop."""
        if self._closed:
            raise RuntimeError("this AsyncClient is closed: make a new one")
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("this AsyncClient was first used in another event loop (an earlier asyncio.run()?), "
                               "and its connections belong to that loop: make one client per event loop")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit_per_host)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s),
            )
        elif self._session.closed:  # only a session passed in can be closed behind the client's back
            raise RuntimeError("the aiohttp session passed to the client is closed")
        return self._session

    async def close(self) -> None:
        """Close the session if the client made it (one passed in is its owner's to close). Later calls raise."""
        self._closed = True
        session, self._session = self._session, None
        if not self._owns_session or session is None or session.closed:
            return
        if self._loop is not None and self._loop.is_closed():
            # Its loop is gone and nothing can be awaited on it: mark it closed. Any connection still open in it
            # is left to the garbage collector, which warns: close the client before its loop ends.
            session.detach()
            return
        await session.close()

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
        headers = self._get_headers if data is None else self._json_headers
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
        resp = await self.session().post(self.url(path), data=orjson.dumps(body), headers=self._stream_headers)
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


def _with(headers: CIMultiDict[str], extra: Mapping[str, str]) -> CIMultiDictProxy[str]:
    merged = headers.copy()
    merged.update(extra)
    return CIMultiDictProxy(merged)


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
