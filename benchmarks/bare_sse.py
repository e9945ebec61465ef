"""The yardstick of the null-model benchmark: the least an aiohttp + uvloop server can do to answer
POST /v1/completions with a stream of n SSE events of our shape, then `data: [DONE]`.

    python -m benchmarks.bare_sse --port 8102 [--texts '["a", "b"]'] [--model null]

It parses the JSON body (for max_tokens) and writes one event per token with the headers and the chunk JSON
our completions endpoint sends (`--texts`: the token texts to cycle through, so that event sizes match ours).
Its writes are ours too: one per event, except that the last event, `[DONE]` and the end of the chunked body
go out in one (service/api/sse.py does the same). No validation, tokenizer, engine or middleware. Prints
`READY <port>` when up.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import uuid
from typing import Any

import orjson
import uvloop
from aiohttp import web

from benchmarks.serving import serve_until_signal

DONE = b"data: [DONE]\n\n"
HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Connection": "keep-alive",
           "X-Accel-Buffering": "no"}
TEXTS = web.AppKey("texts", tuple)
MODEL = web.AppKey("model", str)


def make_app(texts: tuple[str, ...], model: str) -> web.Application:
    app = web.Application()
    app[TEXTS] = texts
    app[MODEL] = model
    ids = itertools.count()
    prefix = uuid.uuid4().hex[:8]

    async def completions(request: web.Request) -> web.StreamResponse:
        body: dict[str, Any] = orjson.loads(await request.read())
        n = int(body.get("max_tokens") or 16)
        response_id = f"cmpl-{prefix}-{next(ids)}"
        created = int(time.time())
        response = web.StreamResponse(headers={**HEADERS, "X-Request-Id": response_id})
        await response.prepare(request)
        texts = request.app[TEXTS]
        for i in range(n):
            choice = {"index": 0, "text": texts[i % len(texts)], "logprobs": None,
                      "finish_reason": "length" if i == n - 1 else None, "stop_reason": None}
            chunk = {"id": response_id, "object": "text_completion", "created": created,
                     "model": request.app[MODEL], "choices": [choice]}
            frame = b"data: " + orjson.dumps(chunk) + b"\n\n"
            if i < n - 1:
                await response.write(frame)
            else:
                await response.write_eof(frame + DONE)
        return response

    app.router.add_post("/v1/completions", completions)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8102)
    parser.add_argument("--texts", default='[" token"]', help="JSON list of the token texts to cycle through")
    parser.add_argument("--model", default="null")
    args = parser.parse_args(argv)
    texts = tuple(str(t) for t in json.loads(args.texts))
    if not texts:
        parser.error("--texts must list at least one text")
    uvloop.run(serve_until_signal(make_app(texts, args.model), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
