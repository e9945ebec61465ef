"""Typed errors shared by the engine and the HTTP layer. Each ServiceError knows its HTTP status and OpenAI error
type; a StartupError stops the server before it serves."""

from __future__ import annotations

MAX_ECHO_CHARS = 64


def short_repr(value: object) -> str:
    """A repr that never echoes a large input back to the client."""
    text = repr(value)
    if len(text) > MAX_ECHO_CHARS:
        return text[: MAX_ECHO_CHARS - 3] + "..."
    return text


class StartupError(Exception):
    """The server cannot start with this model or configuration: `hfserve` prints the message and exits 2."""


class ServiceError(Exception):
    """Base of every error a client may see. `status` is the HTTP status, `type` the OpenAI error type."""

    status = 500
    type = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | int | None = None,
                 status: int | None = None, error_type: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status
        if error_type is not None:
            self.type = error_type
        self.code = code if code is not None else self.status

    def to_dict(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequestError(ServiceError):
    status = 400
    type = "invalid_request_error"


class InvalidParameterError(BadRequestError):
    def __init__(self, param: str, value: object, why: str) -> None:
        super().__init__(f"{param}={short_repr(value)}: {why}", param=param)


class ContextLengthExceededError(BadRequestError):
    def __init__(self, message: str, param: str = "max_tokens") -> None:
        super().__init__(message, param=param, code="context_length_exceeded")


class AuthenticationError(ServiceError):
    status = 401
    type = "authentication_error"


class NotFoundError(ServiceError):
    status = 404
    type = "not_found_error"


class RequestTimeoutError(ServiceError):
    status = 408
    type = "timeout"


class MethodNotAllowedError(ServiceError):
    status = 405
    type = "invalid_request_error"


class PayloadTooLargeError(ServiceError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaTypeError(ServiceError):
    status = 415
    type = "invalid_request_error"


class OverloadedError(ServiceError):
    status = 429
    type = "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineStepError(ServiceError):
    """A model step raised; the requests in that step fail with this error."""

    status = 500
    type = "internal_error"


class EngineDeadError(ServiceError):
    status = 503
    type = "service_unavailable"


class ShuttingDownError(ServiceError):
    status = 503
    type = "service_unavailable"
