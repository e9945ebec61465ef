from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.api.app import create_app
from service.api.context import ServerContext
from service.embeddings.model import default_embedding_model_path
from service.embeddings.service import EmbeddingService
from service.engine.async_engine import AsyncEngine
from service.engine.factory import build_engine
from service.engine.tokenizer import Tokenizer
from tests.factories import engine_config, server_config

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_client(aiohttp_client, tiny_model_dir: Path) -> ClientFactory:
    """Start the real app on the tiny model (or on a given engine) and return a test client.

    `embeddings=True` also serves the real all-MiniLM-L6-v2 behind /v1/embeddings; `sampling_defaults` are the
    model's values for sampling parameters a request leaves out; `model_name` is the served model name.
    """

    async def factory(engine: AsyncEngine | None = None, tokenizer: Tokenizer | None = None,
                      server: dict[str, Any] | None = None, embeddings: bool = False,
                      sampling_defaults: dict[str, float | int] | None = None, model_name: str = "tiny",
                      **engine_kw: Any) -> TestClient[Any, Any]:
        if engine is None:
            engine_kw.setdefault("dtype", "float64")
            engine, tokenizer = build_engine(engine_config(tiny_model_dir, **engine_kw))
        assert tokenizer is not None
        embedder = EmbeddingService(default_embedding_model_path() or "") if embeddings else None
        ctx = ServerContext(engine, tokenizer, model_name, server_config(**(server or {})), embedder,
                            sampling_defaults or {})
        return await aiohttp_client(create_app(ctx))

    return factory
