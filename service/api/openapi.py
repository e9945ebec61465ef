"""GET /openapi.json: the API described from the same pydantic models that validate requests, so the
document cannot drift from what the server accepts."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.api.errors import json_response
from service.api.schemas.chat import ChatCompletionRequest
from service.api.schemas.completions import CompletionRequest
from service.api.schemas.embeddings import EmbeddingRequest
from service.api.schemas.responses import (
    ChatCompletionResponse,
    CompletionResponse,
    DetokenizeResponse,
    EmbeddingResponse,
    ErrorResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    TokenizeResponse,
)
from service.api.schemas.tokenize import DetokenizeRequest, TokenizeRequest

REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"\{(\w+)\}")  # /v1/models/{model}

# (method, path, summary, request model, response model, streams, error statuses)
OPERATIONS: list[tuple[str, str, str, type[BaseModel] | None, type[BaseModel], bool, tuple[int, ...]]] = [
    ("post", "/v1/completions", "Create a completion", CompletionRequest, CompletionResponse, True,
     (400, 401, 404, 408, 413, 415, 429, 500, 503)),
    ("post", "/v1/chat/completions", "Create a chat completion", ChatCompletionRequest, ChatCompletionResponse,
     True, (400, 401, 404, 408, 413, 415, 429, 500, 503)),
    ("post", "/v1/embeddings", "Create embeddings", EmbeddingRequest, EmbeddingResponse, False,
     (400, 401, 404, 413, 415, 429, 500, 503)),
    ("get", "/v1/models", "List the served models", None, ModelList, False, (401,)),
    ("get", "/v1/models/{model}", "Retrieve one served model", None, ModelCard, False, (401, 404)),
    ("post", "/tokenize", "Tokenize text or chat messages", TokenizeRequest, TokenizeResponse, False,
     (400, 401, 404, 413, 415)),
    ("post", "/detokenize", "Turn token ids back into text", DetokenizeRequest, DetokenizeResponse, False,
     (400, 401, 404, 413, 415)),
    ("get", "/health", "Liveness of the engine (503 when it cannot serve)", None, HealthResponse, False,
     (401, 503)),
]

_DESCRIPTIONS = {
    400: "Invalid request",
    401: "Missing or wrong API key",
    404: "Unknown model",
    408: "The request passed its timeout",
    413: "Body too large",
    415: "Body is not JSON",
    429: "Overloaded; retry after Retry-After seconds",
    500: "The model step failed",
    503: "Shutting down, or the engine is not running",
}


def build_openapi(version: str) -> dict[str, Any]:
    models: list[type[BaseModel]] = [ErrorResponse]
    for _, _, _, req, resp, _, _ in OPERATIONS:
        models.extend(m for m in (req, resp) if m is not None)
    _, top = models_json_schema([(m, "validation" if m in _request_models() else "serialization")
                                 for m in models], ref_template=REF)
    paths: dict[str, Any] = {}
    for method, path, summary, req, resp, streams, errors in OPERATIONS:
        ok_content: dict[str, Any] = {"application/json": {"schema": {"$ref": REF.format(model=resp.__name__)}}}
        if streams:
            ok_content["text/event-stream"] = {
                "schema": {"type": "string", "description": "data: <chunk JSON> frames, ending with data: [DONE]"}
            }
        responses: dict[str, Any] = {"200": {"description": "OK", "content": ok_content}}
        if path == "/health":
            responses["200"]["content"] = {"application/json": {"schema": {"$ref": REF.format(
                model=HealthResponse.__name__)}}}
        for status in errors:
            schema_name = HealthResponse.__name__ if (path == "/health" and status == 503) else "ErrorResponse"
            responses[str(status)] = {
                "description": _DESCRIPTIONS[status],
                "content": {"application/json": {"schema": {"$ref": REF.format(model=schema_name)}}},
            }
        op: dict[str, Any] = {"summary": summary, "operationId": _operation_id(method, path),
                              "responses": responses}
        if names := _PATH_PARAM.findall(path):
            op["parameters"] = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                                for n in names]
        if req is not None:
            op["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"$ref": REF.format(model=req.__name__)}}}}
        paths.setdefault(path, {})[method] = op
    paths["/metrics"] = {"get": {
        "summary": "Prometheus metrics",
        "operationId": "get_metrics",
        "responses": {
            "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
            "401": {"description": _DESCRIPTIONS[401], "content": {"application/json": {
                "schema": {"$ref": REF.format(model="ErrorResponse")}}}},
        },
    }}
    return {
        "openapi": "3.1.0",
        "info": {"title": "hfserve", "version": version,
                 "description": "OpenAI-compatible inference server for Hugging Face causal language models."},
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _request_models() -> set[type[BaseModel]]:
    return {req for _, _, _, req, _, _, _ in OPERATIONS if req is not None}


def _operation_id(method: str, path: str) -> str:
    return method + _PATH_PARAM.sub(r"\1", path).replace("/", "_").replace("-", "_")


def make_handler(version: str) -> Any:
    document = build_openapi(version)

    async def openapi(request: web.Request) -> web.Response:
        return json_response(document)

    return openapi
