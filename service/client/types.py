"""Typed results, parsed from OpenAI-shaped JSON.

Parsing is lenient: fields an OpenAI-compatible server may leave out get defaults, and fields we do not model
stay reachable through `raw`: every type parsed from a JSON object keeps that object there, as parsed (not a
copy, so a streamed delta costs nothing more). A response too malformed to parse raises ServerError at the call
site.
"""

from __future__ import annotations

import base64
import sys
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy is optional: imported only when asked for an array
    import numpy as np


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Usage | None:
        if not d:
            return None
        prompt, completion = int(d.get("prompt_tokens") or 0), int(d.get("completion_tokens") or 0)
        return cls(prompt, completion, int(d.get("total_tokens") or prompt + completion))


@dataclass(frozen=True)
class CompletionLogprobs:
    """The legacy completions logprobs: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> CompletionLogprobs | None:
        if not d:
            return None
        return cls(list(d.get("tokens") or []), list(d.get("token_logprobs") or []),
                   list(d.get("top_logprobs") or []), list(d.get("text_offset") or []))


@dataclass(frozen=True)
class CompletionChoice:
    index: int
    text: str
    finish_reason: str | None
    stop_reason: int | str | None = None
    logprobs: CompletionLogprobs | None = None
    token_ids: list[int] | None = None  # with return_token_ids=True
    prompt_token_ids: list[int] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the choice object

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CompletionChoice:
        return cls(int(d.get("index") or 0), d.get("text") or "", d.get("finish_reason"), d.get("stop_reason"),
                   CompletionLogprobs.from_json(d.get("logprobs")), d.get("token_ids"), d.get("prompt_token_ids"), d)


@dataclass(frozen=True)
class Completion:
    """A whole /v1/completions response. The shortcuts read the first choice."""

    id: str
    model: str
    created: int
    choices: list[CompletionChoice]
    usage: Usage | None
    request_id: str | None = None  # the X-Request-Id response header
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any], request_id: str | None = None) -> Completion:
        return cls(str(d.get("id", "")), str(d.get("model", "")), int(d.get("created") or 0),
                   [CompletionChoice.from_json(c) for c in d["choices"]], Usage.from_json(d.get("usage")),
                   request_id, d)

    @property
    def text(self) -> str:
        return self.choices[0].text

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason

    @property
    def token_ids(self) -> list[int] | None:
        return self.choices[0].token_ids

    @property
    def logprobs(self) -> CompletionLogprobs | None:
        return self.choices[0].logprobs


@dataclass(frozen=True)
class CompletionDelta:
    """One choice's piece of a completions stream. `finish_reason` is set on that choice's last delta."""

    index: int
    text: str
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: CompletionLogprobs | None = None
    token_ids: list[int] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the choice object of the stream chunk

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CompletionDelta:
        return cls(int(d.get("index") or 0), d.get("text") or "", d.get("finish_reason"), d.get("stop_reason"),
                   CompletionLogprobs.from_json(d.get("logprobs")), d.get("token_ids"), d)


@dataclass(frozen=True)
class ChatTokenLogprob:
    token: str
    logprob: float
    top_logprobs: list[tuple[str, float]]

    @classmethod
    def list_from_json(cls, d: dict[str, Any] | None) -> list[ChatTokenLogprob] | None:
        if not d or d.get("content") is None:
            return None
        return [cls(e["token"], float(e["logprob"]),
                    [(t["token"], float(t["logprob"])) for t in e.get("top_logprobs") or []])
                for e in d["content"]]


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # tool_calls, reasoning_content, ...

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChatMessage:
        return cls(str(d.get("role") or "assistant"), d.get("content"), d)


@dataclass(frozen=True)
class ChatChoice:
    index: int
    message: ChatMessage
    finish_reason: str | None
    logprobs: list[ChatTokenLogprob] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the choice; the message's fields: message.raw

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChatChoice:
        return cls(int(d.get("index") or 0), ChatMessage.from_json(d.get("message") or {}), d.get("finish_reason"),
                   ChatTokenLogprob.list_from_json(d.get("logprobs")), d)


@dataclass(frozen=True)
class ChatCompletion:
    id: str
    model: str
    created: int
    choices: list[ChatChoice]
    usage: Usage | None
    request_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any], request_id: str | None = None) -> ChatCompletion:
        return cls(str(d.get("id", "")), str(d.get("model", "")), int(d.get("created") or 0),
                   [ChatChoice.from_json(c) for c in d["choices"]], Usage.from_json(d.get("usage")), request_id, d)

    @property
    def message(self) -> ChatMessage:
        return self.choices[0].message

    @property
    def text(self) -> str:
        return self.choices[0].message.content or ""

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason


@dataclass(frozen=True)
class ChatDelta:
    """One choice's piece of a chat stream: the role arrives first, then content. `raw` is the choice object, so
    `raw["delta"]` holds what the client does not model (tool_calls, reasoning_content, ...)."""

    index: int
    content: str = ""
    role: str | None = None
    finish_reason: str | None = None
    logprobs: list[ChatTokenLogprob] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChatDelta:
        delta = d.get("delta") or {}
        return cls(int(d.get("index") or 0), delta.get("content") or "", delta.get("role"), d.get("finish_reason"),
                   ChatTokenLogprob.list_from_json(d.get("logprobs")), d)


@dataclass(frozen=True)
class Embeddings:
    """One vector per input, in input order."""

    vectors: list[list[float]]
    model: str
    usage: Usage | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the response, its data as sent (base64 or not)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Embeddings:
        items = sorted(d["data"], key=lambda e: int(e.get("index") or 0))
        return cls([_vector(e["embedding"]) for e in items], str(d.get("model", "")), Usage.from_json(d.get("usage")),
                   d)

    def numpy(self) -> np.ndarray:
        """The vectors as one (n, dim) float32 array. Needs numpy, which the client does not require."""
        try:
            import numpy as np
        except ImportError as exc:  # pragma: no cover - numpy is installed wherever the tests run
            raise ImportError("Embeddings.numpy() needs numpy: pip install numpy") from exc
        return np.asarray(self.vectors, dtype=np.float32)


def _vector(value: list[float] | str) -> list[float]:
    """A float list, or base64 of little-endian float32 (encoding_format="base64") decoded without numpy."""
    if isinstance(value, list):
        return value
    floats = array("f", base64.b64decode(value))
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()


@dataclass(frozen=True)
class Model:
    id: str
    owned_by: str | None = None
    created: int | None = None
    max_model_len: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Model:
        return cls(str(d["id"]), d.get("owned_by"), d.get("created"), d.get("max_model_len"), d)


@dataclass(frozen=True)
class Health:
    """The server's /health answer. `ok` is the HTTP status being 200; servers differ on the body."""

    ok: bool
    status: int
    body: Any = None


@dataclass(frozen=True)
class Tokenized:
    tokens: list[int]
    count: int
    max_model_len: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Tokenized:
        tokens = list(d["tokens"])
        return cls(tokens, int(d.get("count", len(tokens))), d.get("max_model_len"), d)
