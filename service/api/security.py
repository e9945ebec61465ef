"""Who may call the API: an optional bearer key, and CORS for browsers (off unless origins are listed)."""

from __future__ import annotations

import hmac

import aiohttp_cors
from aiohttp import web
from aiohttp.typedefs import Handler

from service.api.context import CONTEXT
from service.errors import AuthenticationError

# Public unless --protect-metrics: load balancers and scrapers should not need the key.
OPERATIONAL_PATHS = frozenset({"/health", "/metrics"})
ALWAYS_PUBLIC_PATHS = frozenset({"/openapi.json"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    config = request.app[CONTEXT].config
    key = config.api_key
    if key is None or request.method == "OPTIONS" or request.path in ALWAYS_PUBLIC_PATHS:
        return await handler(request)  # no key configured, or a CORS preflight (which never carries one)
    if request.path in OPERATIONAL_PATHS and not config.protect_metrics:
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # compare_digest takes the same time whatever prefix matches; keys are case-sensitive.
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise AuthenticationError("Missing or invalid API key. Send 'Authorization: Bearer <key>'.",
                                  code="invalid_api_key")
    return await handler(request)


def setup_cors(app: web.Application, origins: tuple[str, ...]) -> None:
    """Allow browsers on the listed origins to call every route; no origins, no CORS headers at all."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(
        allow_credentials=False,
        expose_headers=("X-Request-Id", "Retry-After"),
        allow_headers=("Authorization", "Content-Type", "X-Request-Id"),
        allow_methods=("GET", "POST", "OPTIONS"),
        max_age=600,
    )
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    for route in list(app.router.routes()):
        cors.add(route)
