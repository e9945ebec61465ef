"""Request ids and the access log: one structured line per request, with timings and token counts."""

from __future__ import annotations

import itertools
import os
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from service.api.context import ERROR_TYPE, REQUEST_ID, USAGE

log = structlog.get_logger("access")

# A client may send its own id; we log it (its first 128 characters, so that no client can bloat every line)
# but never use it as an engine key.
CLIENT_REQUEST_ID_HEADER = "X-Request-Id"
MAX_LOGGED_CLIENT_ID = 128

# Server request ids: a random per-process prefix and a counter, so that ids are unique across restarts
# without a getrandom() system call per request.
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count()


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    t0 = time.perf_counter()
    status = 500
    # Server-generated; generation handlers replace it with their response id (cmpl-..., chatcmpl-...).
    request[REQUEST_ID] = f"req-{_ID_PREFIX}{next(_ID_COUNTER):08x}"
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers.setdefault("X-Request-Id", request[REQUEST_ID])
        return response
    except BaseException:
        status = 499 if request.transport is None or request.transport.is_closing() else 500
        raise
    finally:
        usage = request.get(USAGE) or {}
        client_id = request.headers.get(CLIENT_REQUEST_ID_HEADER)
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            request_id=request.get(REQUEST_ID),
            client_request_id=client_id[:MAX_LOGGED_CLIENT_ID] if client_id is not None else None,
            duration_ms=round((time.perf_counter() - t0) * 1000, 2),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            error_type=request.get(ERROR_TYPE),
        )
