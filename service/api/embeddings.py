"""POST /v1/embeddings, served by the embedding batcher."""

from __future__ import annotations

import base64
import time

import numpy as np
from aiohttp import web

from service.api.context import CONTEXT, USAGE
from service.api.errors import json_response, read_json_object
from service.api.schemas.embeddings import EmbeddingRequest
from service.errors import BadRequestError, NotFoundError, ShuttingDownError, short_repr


async def create_embeddings(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    service = ctx.embeddings
    if ctx.engine.draining:
        raise ShuttingDownError("The server is shutting down and accepts no new requests.")
    if service is None:
        raise NotFoundError("This server runs no embedding model.", param="model", code="model_not_found")
    req = EmbeddingRequest.model_validate(await read_json_object(request))
    if req.model is not None and req.model != service.model_name:
        what = "is the generation model" if req.model == ctx.model_name else "does not exist"
        raise NotFoundError(f"The model {short_repr(req.model)} {what}; /v1/embeddings serves "
                            f"{service.model_name!r}.", param="model", code="model_not_found")
    if req.dimensions is not None and req.dimensions != service.dim:
        raise BadRequestError(f"dimensions={req.dimensions}: this model only produces {service.dim}.",
                              param="dimensions")
    token_lists = await service.tokenize(req.inputs())
    vectors = await service.batcher.embed(token_lists)
    data = []
    for i, vec in enumerate(vectors):
        arr = vec.numpy().astype(np.float32, copy=False)
        embedding: list[float] | str
        if req.encoding_format == "base64":
            embedding = base64.b64encode(arr.astype("<f4").tobytes()).decode("ascii")
        else:
            embedding = arr.tolist()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = sum(len(t) for t in token_lists)
    request[USAGE] = {"prompt_tokens": tokens, "completion_tokens": 0}
    return json_response({
        "object": "list",
        "data": data,
        "model": service.model_name,
        "created": int(time.time()),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
