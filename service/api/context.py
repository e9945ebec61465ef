"""What the route handlers share, stored on the aiohttp app under one typed key."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from service.config import ServerConfig
from service.embeddings.service import EmbeddingService
from service.engine.async_engine import AsyncEngine
from service.engine.tokenizer import Tokenizer
from service.errors import NotFoundError, short_repr
from service.metrics import Metrics


@dataclass
class ServerContext:
    engine: AsyncEngine
    tokenizer: Tokenizer
    model_name: str
    config: ServerConfig
    embeddings: EmbeddingService | None = None
    # The model's values for sampling parameters a request leaves out (api/sampling_defaults.py).
    sampling_defaults: Mapping[str, float | int] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise NotFoundError(f"The model {short_repr(name)} does not exist.", param="model",
                                code="model_not_found")

    def timeout_for(self, requested: float | None) -> float:
        if requested is None:
            return self.config.request_timeout_s
        return min(requested, self.config.max_request_timeout_s)


CONTEXT = web.AppKey("context", ServerContext)
METRICS = web.AppKey("metrics", Metrics)

# Per-request values the access log reads after the handler ran.
REQUEST_ID = web.RequestKey("request_id", str)
USAGE = web.RequestKey("usage", dict)
ERROR_TYPE = web.RequestKey("error_type", str)
