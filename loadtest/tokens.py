"""Counting tokens: with the target's own `/tokenize` when it has one, else with a local tokenizer.

The server's `usage` is always preferred for a request's counts; these counters size the prompts before a run
and stand in for `usage` where a server sends none.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson

from loadtest.config import TargetConfig


class TokenCounter(Protocol):
    source: str  # said in the result, e.g. "server /tokenize" or "local tokenizer models/default"

    async def count(self, text: str, add_special_tokens: bool = True) -> int: ...


async def count_many(counter: TokenCounter, texts: list[str], add_special_tokens: bool = True,
                     concurrency: int = 16) -> list[int]:
    sem = asyncio.Semaphore(concurrency)

    async def one(text: str) -> int:
        async with sem:
            return await counter.count(text, add_special_tokens)

    return list(await asyncio.gather(*(one(t) for t in texts)))


class RemoteTokenizer:
    """vLLM's `POST /tokenize` shape: {"model", "prompt"} in; {"count"} or {"tokens"} out."""

    def __init__(self, session: aiohttp.ClientSession, target: TargetConfig, model: str | None,
                 close_connection: bool = False) -> None:
        self._session = session
        self._target = target
        self._model = model
        self._close = close_connection
        self.source = "server /tokenize"

    async def count(self, text: str, add_special_tokens: bool = True) -> int:
        body: dict[str, Any] = {"prompt": text, "add_special_tokens": add_special_tokens}
        if self._model is not None:
            body["model"] = self._model
        headers = self._target.http_headers()
        if self._close:
            headers = {**headers, "Connection": "close"}
        async with self._session.post(self._target.url("/tokenize"), data=orjson.dumps(body),
                                      headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"/tokenize answered {resp.status}: {(await resp.text())[:200]}")
            payload = orjson.loads(await resp.read())
        if not isinstance(payload, dict):
            raise RuntimeError(f"/tokenize answered with no JSON object: {str(payload)[:200]}")
        if isinstance(payload.get("count"), int):
            return int(payload["count"])
        if isinstance(payload.get("tokens"), list):
            return len(payload["tokens"])
        raise RuntimeError(f"/tokenize gave neither 'count' nor 'tokens': {str(payload)[:200]}")


class LocalTokenizer:
    """A Hugging Face tokenizer from a local directory (transformers if installed, else `tokenizers`)."""

    def __init__(self, path: str) -> None:
        self.source = f"local tokenizer {path}"
        self._encode = _load_encoder(path)

    async def count(self, text: str, add_special_tokens: bool = True) -> int:
        return self.count_now(text, add_special_tokens)

    def count_now(self, text: str, add_special_tokens: bool = True) -> int:
        return len(self._encode(text, add_special_tokens))


def check_tokenizer_path(path: str) -> Path:
    """`--tokenizer`'s path, or a ValueError naming it when nothing is there."""
    where = Path(path)
    if not where.exists():
        raise ValueError(f"--tokenizer {path}: no such file or directory (it takes a local tokenizer directory)")
    return where


def _load_encoder(path: str) -> Any:
    """An encode function from a local tokenizer directory (or tokenizer.json); ValueError, naming the path,
    when there is none to load."""
    where = check_tokenizer_path(path)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        from tokenizers import Tokenizer

        file = where / "tokenizer.json" if where.is_dir() else where
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as exc:  # noqa: BLE001  (tokenizers raises its own exception types)
            raise ValueError(f"--tokenizer {path}: cannot load a tokenizer from {file}: {exc}") from None
        return lambda text, special: tok.encode(text, add_special_tokens=special).ids
    try:
        hf = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # noqa: BLE001  (transformers raises OSError, ValueError, KeyError, ...)
        raise ValueError(f"--tokenizer {path}: cannot load a tokenizer from it: {exc}") from None
    return lambda text, special: hf.encode(text, add_special_tokens=special)


async def probe_remote(session: aiohttp.ClientSession, target: TargetConfig,
                       model: str | None) -> RemoteTokenizer | None:
    """The target's /tokenize if it answers sensibly, else None.

    The probe asks for its connection to be closed: some servers (uvicorn behind `transformers serve`) drop a
    keep-alive connection after a 404, and the next request on it would then fail.
    """
    try:
        n = await RemoteTokenizer(session, target, model, close_connection=True).count("hello world")
    except (aiohttp.ClientError, RuntimeError, ValueError, TimeoutError):
        return None
    return RemoteTokenizer(session, target, model) if n > 0 else None


async def resolve_counter(session: aiohttp.ClientSession, target: TargetConfig, model: str | None,
                          tokenizer_path: str | None) -> TokenCounter | None:
    remote = await probe_remote(session, target, model)
    if remote is not None:
        return remote
    if tokenizer_path:
        return LocalTokenizer(tokenizer_path)
    return None
