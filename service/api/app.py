"""The aiohttp application factory: routes, middlewares, and the engine's lifetime tied to the app's."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from service.api import completions, health
from service.api.context import CONTEXT, ServerContext
from service.api.errors import error_middleware
from service.api.middleware import access_log_middleware


def create_app(ctx: ServerContext) -> web.Application:
    app = web.Application(
        client_max_size=ctx.config.max_body_bytes,
        middlewares=[access_log_middleware, error_middleware],
    )
    app[CONTEXT] = ctx
    app.router.add_post("/v1/completions", completions.create_completion)
    app.router.add_get("/health", health.health)
    app.router.add_get("/v1/models", health.list_models)
    app.cleanup_ctx.append(_engine_lifetime)
    return app


async def _engine_lifetime(app: web.Application) -> AsyncIterator[None]:
    engine = app[CONTEXT].engine
    await engine.start()
    yield
    await engine.stop()
