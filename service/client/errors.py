"""The client's exceptions: one class per way a call can fail, each carrying the server's error JSON.

    APIError
    ├── BadRequestError        4xx not listed below (400, 405, 413, 415, 422, ...)
    │   └── AuthenticationError    401, 403
    ├── NotFoundError          404 (unknown route or model)
    ├── OverloadedError        429, 503: try again later (retried, honouring Retry-After)
    ├── ServerError            500, 502, 504 and other 5xx; a malformed response or stream
    ├── ConnectionError        refused, reset, or cut mid-response (also a builtins.ConnectionError)
    └── TimeoutError           the total or idle timeout ran out, or a 408 (also a builtins.TimeoutError)

ConnectionError and TimeoutError shadow the builtins on purpose, as in `requests`: they are subclasses of them,
so `except TimeoutError` catches ours too.
"""

from __future__ import annotations

import builtins
from typing import Any


class APIError(Exception):
    """Base of every error the client raises. Fields the failure did not produce are None.

    `body` is the parsed JSON body (or the raw text) of the failed response; `error` is its `error` object
    when the server used OpenAI's `{"error": {...}}` shape, from which `type`, `param` and `code` are taken.
    """

    def __init__(self, message: str, *, status: int | None = None, body: Any = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.request_id = request_id
        err = body.get("error") if isinstance(body, dict) else None
        self.error: dict[str, Any] | None = err if isinstance(err, dict) else None
        self.type: str | None = _str_or_none(self.error.get("type")) if self.error else None
        self.param: str | None = _str_or_none(self.error.get("param")) if self.error else None
        self.code: str | int | None = self.error.get("code") if self.error else None

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status})" if self.status is not None else self.message


class BadRequestError(APIError):
    pass


class AuthenticationError(BadRequestError):
    pass


class NotFoundError(APIError):
    pass


class OverloadedError(APIError):
    def __init__(self, message: str, *, status: int | None = None, body: Any = None,
                 request_id: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, status=status, body=body, request_id=request_id)
        self.retry_after_s = retry_after_s


class ServerError(APIError):
    pass


class ConnectionError(APIError, builtins.ConnectionError):  # shadows the builtin on purpose; see above
    pass


class TimeoutError(APIError, builtins.TimeoutError):
    pass


def error_message(body: Any, fallback: str) -> str:
    """The human-readable message of an error body, whatever shape the server chose."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        for key in ("message", "detail"):  # FastAPI-based servers use {"detail": ...}
            if isinstance(body.get(key), str):
                return str(body[key])
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return fallback


def error_for_status(status: int, body: Any, *, request_id: str | None = None,
                     retry_after_s: float | None = None, reason: str = "") -> APIError:
    """The exception for an HTTP error response."""
    message = error_message(body, reason or f"HTTP {status}")
    kw: dict[str, Any] = {"status": status, "body": body, "request_id": request_id}
    if status in (429, 503):
        return OverloadedError(message, retry_after_s=retry_after_s, **kw)
    if status == 404:
        return NotFoundError(message, **kw)
    if status in (401, 403):
        return AuthenticationError(message, **kw)
    if status == 408:
        return TimeoutError(message, **kw)
    if 400 <= status < 500:
        return BadRequestError(message, **kw)
    return ServerError(message, **kw)


def error_from_event(body: dict[str, Any], *, request_id: str | None = None) -> APIError:
    """The exception for a `data: {"error": {...}}` frame in a stream (the HTTP status was already 200).

    The error's `code` is the HTTP status the failure would have had, where the server says so (ours and
    vLLM's do); otherwise its `type` decides.
    """
    err = body.get("error")
    code = err.get("code") if isinstance(err, dict) else None
    etype = err.get("type") if isinstance(err, dict) else None
    status: int | None = code if isinstance(code, int) and 400 <= code < 600 else None
    if status is None:
        status = {"invalid_request_error": 400, "not_found_error": 404, "overloaded": 429,
                  "timeout": 408, "service_unavailable": 503}.get(str(etype), 500)
    exc = error_for_status(status, body, request_id=request_id)
    exc.status = None  # the response itself was a 200; the status above only chose the class
    return exc


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
