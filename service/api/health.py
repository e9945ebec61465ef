"""GET /health, GET /v1/models and GET /v1/models/{model}."""

from __future__ import annotations

import time

from aiohttp import web

from service.api.context import CONTEXT, ServerContext
from service.api.errors import json_response
from service.errors import NotFoundError, short_repr

# A step running longer than this means the executor is stuck, not busy.
STEP_STALL_S = 300.0


async def health(request: web.Request) -> web.Response:
    """200 only if the batch loop is alive (heartbeat) and no step has stalled; 503 otherwise."""
    engine = request.app[CONTEXT].engine
    now = time.monotonic()
    problems = []
    if not engine.is_alive:
        problems.append(f"engine stopped: {engine.dead_reason or 'batch loop not running'}")
    in_flight = engine.step_in_flight_since
    if in_flight is not None and now - in_flight > STEP_STALL_S:
        problems.append(f"a model step has been running for {now - in_flight:.0f}s")
    elif in_flight is None and now - engine.last_heartbeat > 5.0 and engine.num_live:
        problems.append(f"no batch-loop heartbeat for {now - engine.last_heartbeat:.1f}s")
    if engine.draining:
        problems.append("draining")
    body = {
        "status": "ok" if not problems else "unavailable",
        "problems": problems,
        "running": engine.scheduler.num_running,
        "waiting": engine.scheduler.num_waiting,
        "live_requests": engine.num_live,  # futures (and streams) not yet resolved
    }
    return json_response(body, status=200 if not problems else 503)


def _model_cards(ctx: ServerContext) -> list[dict[str, object]]:
    data: list[dict[str, object]] = [{
        "id": ctx.model_name,
        "object": "model",
        "created": ctx.created,
        "owned_by": "hfserve",
        "root": ctx.engine.config.model.model,
        "max_model_len": ctx.engine.max_model_len,
    }]
    if ctx.embeddings is not None:
        data.append({
            "id": ctx.embeddings.model_name,
            "object": "model",
            "created": ctx.created,
            "owned_by": "hfserve",
            "root": ctx.embeddings.model.path,
            "max_model_len": ctx.embeddings.model.max_len,
        })
    return data


async def list_models(request: web.Request) -> web.Response:
    return json_response({"object": "list", "data": _model_cards(request.app[CONTEXT])})


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one model card, as OpenAI's `models.retrieve` asks for it."""
    name = request.match_info["model"]
    for card in _model_cards(request.app[CONTEXT]):
        if card["id"] == name:
            return json_response(card)
    raise NotFoundError(f"The model {short_repr(name)} does not exist.", param="model", code="model_not_found")
