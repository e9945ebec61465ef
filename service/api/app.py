"""The aiohttp application factory: routes, middlewares, and the engine's lifetime tied to the app's."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from service import __version__
from service.api import chat, completions, embeddings, health, openapi, tokenize
from service.api.context import CONTEXT, METRICS, ServerContext
from service.api.errors import error_middleware
from service.api.middleware import access_log_middleware
from service.api.security import auth_middleware, setup_cors
from service.metrics import CONTENT_TYPE, Metrics


def create_app(ctx: ServerContext) -> web.Application:
    # Outermost first: the access log sees the final status; errors become JSON before it; auth runs inside,
    # so a 401 is JSON too.
    app = web.Application(
        client_max_size=ctx.config.max_body_bytes,
        middlewares=[access_log_middleware, error_middleware, auth_middleware],
    )
    app[CONTEXT] = ctx
    app[METRICS] = Metrics(ctx.engine, ctx.embeddings.batcher if ctx.embeddings else None)
    app.router.add_post("/v1/completions", completions.create_completion)
    app.router.add_post("/v1/chat/completions", chat.create_chat_completion)
    app.router.add_post("/v1/embeddings", embeddings.create_embeddings)
    app.router.add_post("/tokenize", tokenize.tokenize)
    app.router.add_post("/detokenize", tokenize.detokenize)
    app.router.add_get("/health", health.health)
    app.router.add_get("/v1/models", health.list_models)
    # `.+`: a served name may hold slashes (org/model), sent unencoded by curl and most clients.
    app.router.add_get("/v1/models/{model:.+}", health.retrieve_model)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.json", openapi.make_handler(__version__))
    setup_cors(app, ctx.config.allowed_origins)
    app.cleanup_ctx.append(_engine_lifetime)
    return app


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _engine_lifetime(app: web.Application) -> AsyncIterator[None]:
    ctx = app[CONTEXT]
    await ctx.engine.start()
    if ctx.embeddings is not None:
        await ctx.embeddings.start()
    yield
    if ctx.embeddings is not None:
        await ctx.embeddings.stop()
    await ctx.engine.stop()
