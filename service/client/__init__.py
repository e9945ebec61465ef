"""hfserve's Python client: an aiohttp SDK for any OpenAI-compatible server, and the `hfserve-client` CLI.

Imports only aiohttp (and multidict, which comes with it), orjson and structlog (numpy optionally, for
Embeddings.numpy()), never the server's modules, so importing it loads no torch or transformers. Installing the
package still installs the server's dependencies, torch included: the `client` extra adds to them, it does not
replace them. See docs/client.md.
"""

from __future__ import annotations

from service.client.client import AsyncClient
from service.client.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConnectionError,
    NotFoundError,
    OverloadedError,
    ServerError,
    TimeoutError,
)
from service.client.retry import RetryPolicy
from service.client.stream import ChatStream, CompletionStream
from service.client.types import (
    ChatChoice,
    ChatCompletion,
    ChatDelta,
    ChatMessage,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionDelta,
    CompletionLogprobs,
    Embeddings,
    Health,
    Model,
    Tokenized,
    Usage,
)

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "ChatChoice",
    "ChatCompletion",
    "ChatDelta",
    "ChatMessage",
    "ChatStream",
    "ChatTokenLogprob",
    "Completion",
    "CompletionChoice",
    "CompletionDelta",
    "CompletionLogprobs",
    "CompletionStream",
    "ConnectionError",
    "Embeddings",
    "Health",
    "Model",
    "NotFoundError",
    "OverloadedError",
    "RetryPolicy",
    "ServerError",
    "TimeoutError",
    "Tokenized",
    "Usage",
]
