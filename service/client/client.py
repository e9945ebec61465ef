"""AsyncClient: the public face of the SDK, one method per endpoint of an OpenAI-compatible server.

Sampling parameters are passed through as keyword arguments under their HTTP API names (max_tokens, top_k,
stop, logprobs, ...); the server validates them, so the client never lags behind what a server accepts.
Arguments left as None are not sent, and the server's defaults apply.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import aiohttp

from service.client.errors import ServerError
from service.client.retry import RetryPolicy
from service.client.stream import ChatStream, CompletionStream
from service.client.transport import Reply, Timeouts, Transport
from service.client.types import ChatCompletion, Completion, Embeddings, Health, Model, Tokenized

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
BASE_URL_ENV = "SERVICE_BASE_URL"
API_KEY_ENVS = ("HFSERVE_API_KEY", "OPENAI_API_KEY")

T = TypeVar("T")

Prompt = str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]]
Message = Mapping[str, Any]

_STREAM_ONLY = frozenset({"stream", "stream_options"})


def default_base_url() -> str:
    return os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL


def default_api_key() -> str | None:
    return next((os.environ[k] for k in API_KEY_ENVS if os.environ.get(k)), None)


class AsyncClient:
    """An async client for an OpenAI-compatible inference server.

        async with AsyncClient("http://127.0.0.1:8000") as client:
            print((await client.complete("def fib(n):", max_tokens=32)).text)

    One aiohttp session (one connection pool of `limit` connections, `limit_per_host` per host, 0 = no
    per-host cap) serves every call; close it with `await client.close()` or by leaving `async with`. A closed
    client raises RuntimeError, and so does one used in an event loop other than the first it ran in. With
    `session=`, yours serves instead (you close it), and the client's api_key, headers and User-Agent still go
    with every request.
    `base_url` defaults to $SERVICE_BASE_URL, else http://127.0.0.1:8000; `api_key` is sent as a Bearer token.
    `timeout` bounds a whole call, retries and stream included; `idle_timeout` bounds each wait for a stream's
    next chunk; either may be None for no limit. `retry_policy`, if given, replaces `max_retries`.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float | None = 600.0,
                 idle_timeout: float | None = 60.0, connect_timeout: float | None = 10.0, max_retries: int = 2,
                 limit: int = 100, limit_per_host: int = 0, model: str | None = None,
                 headers: Mapping[str, str] | None = None, session: aiohttp.ClientSession | None = None,
                 retry_policy: RetryPolicy | None = None) -> None:
        self.model = model
        retry = retry_policy or RetryPolicy(max_retries=max_retries)
        self._transport = Transport(base_url or default_base_url(), api_key,
                                    Timeouts(timeout, idle_timeout, connect_timeout), retry,
                                    limit=limit, limit_per_host=limit_per_host, headers=headers, session=session)

    @property
    def base_url(self) -> str:
        return self._transport.base_url

    async def __aenter__(self) -> Self:
        self._transport.session()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._transport.close()

    # --- generation -------------------------------------------------------------------------------------------

    async def complete(self, prompt: Prompt, *, model: str | None = None, **sampling: Any) -> Completion:
        """POST /v1/completions. Pass return_token_ids=True for token ids, logprobs=N for logprobs."""
        body = self._body(model, {"prompt": _jsonable_prompt(prompt)}, sampling, stream=False)
        reply = await self._transport.request("POST", "/v1/completions", body)
        return _parse(reply, lambda d: Completion.from_json(d, reply.request_id))

    def stream_complete(self, prompt: Prompt, *, model: str | None = None, include_usage: bool = True,
                        **sampling: Any) -> CompletionStream:
        """A streamed /v1/completions call. Nothing is sent until the stream is iterated or entered.

        Use `async with client.stream_complete(...) as stream:` to keep the stream object (for `stream.usage`
        after the loop), or iterate `client.stream_complete(...)` directly."""
        body = self._body(model, {"prompt": _jsonable_prompt(prompt)}, sampling, stream=True,
                          include_usage=include_usage)
        return CompletionStream(self._transport, "/v1/completions", body)

    async def chat(self, messages: Sequence[Message], *, model: str | None = None, **sampling: Any) -> ChatCompletion:
        """POST /v1/chat/completions. `messages` are OpenAI-style dicts: {"role": ..., "content": ...}."""
        body = self._body(model, {"messages": [dict(m) for m in messages]}, sampling, stream=False)
        reply = await self._transport.request("POST", "/v1/chat/completions", body)
        return _parse(reply, lambda d: ChatCompletion.from_json(d, reply.request_id))

    def stream_chat(self, messages: Sequence[Message], *, model: str | None = None, include_usage: bool = True,
                    **sampling: Any) -> ChatStream:
        """A streamed /v1/chat/completions call; used like `stream_complete`."""
        body = self._body(model, {"messages": [dict(m) for m in messages]}, sampling, stream=True,
                          include_usage=include_usage)
        return ChatStream(self._transport, "/v1/chat/completions", body)

    # --- everything else --------------------------------------------------------------------------------------

    async def embed(self, texts: str | Sequence[str], *, model: str | None = None,
                    encoding_format: str | None = None, **extra: Any) -> Embeddings:
        """POST /v1/embeddings: one vector per text, as lists (`.vectors`) or a numpy array (`.numpy()`).

        encoding_format="base64" makes the response about four times smaller; the client decodes it."""
        body = self._body(model, {"input": texts if isinstance(texts, str) else list(texts),
                                  "encoding_format": encoding_format}, extra, stream=None)
        reply = await self._transport.request("POST", "/v1/embeddings", body)
        return _parse(reply, Embeddings.from_json)

    async def models(self) -> list[Model]:
        reply = await self._transport.request("GET", "/v1/models")
        return _parse(reply, lambda d: [Model.from_json(m) for m in d["data"]])

    async def health(self) -> Health:
        """GET /health, once and without retries: an unhealthy answer (503) is returned, not raised, since it
        is the information asked for. A server that cannot be reached raises ConnectionError."""
        reply = await self._transport.request("GET", "/health", retry=False, check=False)
        return Health(ok=reply.status == 200, status=reply.status, body=reply.body)

    async def tokenize(self, prompt: str | None = None, *, messages: Sequence[Message] | None = None,
                       model: str | None = None, **extra: Any) -> Tokenized:
        """POST /tokenize, with either a text prompt or chat messages (rendered by the server's template)."""
        if (prompt is None) == (messages is None):
            raise TypeError("tokenize() takes exactly one of prompt or messages")
        fields: dict[str, Any] = {"prompt": prompt} if messages is None else {"messages": [dict(m) for m in messages]}
        reply = await self._transport.request("POST", "/tokenize", self._body(model, fields, extra, stream=None))
        return _parse(reply, Tokenized.from_json)

    async def detokenize(self, tokens: Sequence[int], *, model: str | None = None) -> str:
        """POST /detokenize: the text of `tokens`."""
        reply = await self._transport.request("POST", "/detokenize",
                                              self._body(model, {"tokens": list(tokens)}, {}, stream=None))
        return _parse(reply, lambda d: str(d["prompt"]))

    def _body(self, model: str | None, fields: dict[str, Any], extra: dict[str, Any], *, stream: bool | None,
              include_usage: bool = True) -> dict[str, Any]:
        clash = [k for k in _STREAM_ONLY if extra.get(k)] if stream is False else []
        if clash:
            raise TypeError(f"{sorted(clash)}: use the stream_* method for a streamed response")
        body = {k: v for k, v in {**extra, **fields}.items() if v is not None}
        model = model or self.model
        if model is not None:
            body["model"] = model
        if stream:
            body["stream"] = True
            body.setdefault("stream_options", {"include_usage": include_usage})
        return body


def _jsonable_prompt(prompt: Prompt) -> Any:
    if isinstance(prompt, str):
        return prompt
    return [p if isinstance(p, (str, int)) else list(p) for p in prompt]


def _parse(reply: Reply, parse: Callable[[Any], T]) -> T:
    """`parse(reply.body)`, with a malformed body reported as the server's fault."""
    try:
        return parse(reply.body)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ServerError(f"malformed response from the server ({exc!r}): {str(reply.body)[:200]}",
                          status=reply.status, body=reply.body, request_id=reply.request_id) from exc
