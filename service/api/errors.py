"""Every error leaves the server as OpenAI's shape:
{"error": {"message": str, "type": str, "param": str | null, "code": int | str}}."""

from __future__ import annotations

import re
from typing import Any

import orjson
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from service.api.context import CONTEXT, ERROR_TYPE
from service.errors import (
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
    short_repr,
)

log = structlog.get_logger("api")

_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
# Union-branch tags that look like field names (pydantic's loc for `str | list[...]` starts a branch with "str").
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none"})
# Statuses counted as `rejected{reason="invalid"}`; every 429 counts as "overloaded" (generation queue or
# embedding queue); timeouts are counted by the engine, which also sees those of streams.
_INVALID_STATUSES = frozenset({400, 404, 405, 413, 415, 422})

def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers=headers)


def error_response(err: ServiceError) -> web.Response:
    headers = None
    if isinstance(err, OverloadedError):
        headers = {"Retry-After": str(err.retry_after_s)}
    return json_response(err.to_dict(), status=err.status, headers=headers)


def _param_path(loc: tuple[int | str, ...]) -> str:
    """Field path of a pydantic error location, without the union-branch tags pydantic inserts."""
    return ".".join(str(p) for p in loc if isinstance(p, int) or (_FIELD.fullmatch(p) and p not in _TYPE_TAGS))


def validation_error(exc: ValidationError) -> BadRequestError:
    """One readable 400 from pydantic's errors, naming the parameter and never echoing a large value.

    A value that matches no branch of a union (say `prompt`) yields one error per branch; their messages are
    joined so the client sees what forms were allowed.
    """
    errors = exc.errors()
    # Of the first field's errors, the deepest: when a value matches no branch of a union, the branch that got
    # furthest into it says best what is wrong (`prompt: [-1]` is a token id below 0, not "not a string").
    field = errors[0]["loc"][:1]
    paths = [(_param_path(e["loc"]), e) for e in errors if e["loc"][:1] == field]
    param, first = max(paths, key=lambda pe: len(pe[0].split(".")) if pe[0] else 0)
    messages: list[str] = []
    for path, e in paths:
        if path == param and e["msg"] not in messages:
            messages.append(e["msg"])
    text = "; ".join(messages[:3])
    if "input" in first and first["type"] != "missing":
        text = f"{text} (got {short_repr(first['input'])})"
    return BadRequestError(f"{param or 'body'}: {text}", param=param or None)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ServiceError as exc:
        return _client_error(request, exc)
    except ValidationError as exc:
        return _client_error(request, validation_error(exc))
    except web.HTTPRequestEntityTooLarge:
        return _client_error(request, PayloadTooLargeError("The request body is larger than the server's limit."))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = _client_error(request, _from_http_exception(request, exc))
        for name in ("Allow", "Retry-After", "WWW-Authenticate"):
            if name in exc.headers:
                resp.headers[name] = exc.headers[name]
        return resp
    except ConnectionResetError:
        # The client went away mid-response (its request was aborted on the way out). Nobody is left to answer:
        # a 499 for the access log, which aiohttp fails to send quietly, instead of a logged traceback.
        request[ERROR_TYPE] = "client_disconnected"
        return web.Response(status=499)
    except Exception:  # the client gets a JSON 500, the log gets the traceback
        log.exception("unhandled error", path=request.path)
        return _client_error(request, ServiceError("Internal server error."))


def _client_error(request: web.Request, err: ServiceError) -> web.Response:
    request[ERROR_TYPE] = err.type
    if CONTEXT in request.app:
        if err.status in _INVALID_STATUSES:
            request.app[CONTEXT].engine.record_rejection("invalid")
        elif err.status == 429:
            request.app[CONTEXT].engine.record_rejection("overloaded")
    return error_response(err)


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ServiceError:
    if exc.status == 404:
        return NotFoundError(f"No route for {request.method} {short_repr(request.path)}.")
    if exc.status == 405:
        return MethodNotAllowedError(f"Method {request.method} is not allowed on {short_repr(request.path)}.")
    return ServiceError(exc.reason or "error", status=exc.status, error_type="invalid_request_error")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, or a 415/400 that says what is wrong with it.

    A body sent without a Content-Type is read as JSON, as vLLM does (aiohttp reports a missing header as
    application/octet-stream, so the header itself is looked at)."""
    if hdrs.CONTENT_TYPE in request.headers:
        ctype = request.content_type
        if ctype != "application/json" and not ctype.endswith("+json"):
            raise UnsupportedMediaTypeError(
                f"Content-Type must be application/json, got {short_repr(request.headers[hdrs.CONTENT_TYPE])}.")
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:  # e.g. a Content-Encoding the body does not match
        raise BadRequestError(f"The body could not be read: {exc}.") from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"The body is not valid JSON: {exc.msg} at position {exc.pos}.") from None
    if not isinstance(body, dict):
        raise BadRequestError(f"The body must be a JSON object, got {type(body).__name__}.")
    return body
