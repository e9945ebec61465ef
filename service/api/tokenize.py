"""POST /tokenize and POST /detokenize (vLLM's endpoints), for clients that count or inspect tokens."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.api.context import CONTEXT
from service.api.errors import json_response, read_json_object
from service.api.schemas.tokenize import DetokenizeRequest, TokenizeChatRequest, TokenizeRequest
from service.errors import BadRequestError


async def tokenize(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    raw = await read_json_object(request)
    req = TokenizeRequest.form_of(raw).model_validate(raw)
    ctx.check_model(req.model)
    if isinstance(req, TokenizeChatRequest):
        tokens = await ctx.tokenizer.encode_chat(req.template_messages(), req.add_generation_prompt,
                                                 req.chat_template_kwargs, req.continue_final_message)
    else:
        tokens = await ctx.tokenizer.encode(req.prompt, add_special_tokens=req.add_special_tokens)
    body: dict[str, Any] = {"tokens": tokens, "count": len(tokens), "max_model_len": ctx.engine.max_model_len}
    if req.return_token_strs:
        body["token_strs"] = [ctx.tokenizer.token_text(t) for t in tokens]
    return json_response(body)


async def detokenize(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    req = DetokenizeRequest.model_validate(await read_json_object(request))
    ctx.check_model(req.model)
    vocab = ctx.tokenizer.vocab_size
    bad = next((t for t in req.tokens if t >= vocab), None)
    if bad is not None:
        raise BadRequestError(f"Token id {bad} is outside the vocabulary [0, {vocab}).", param="tokens")
    return json_response({"prompt": ctx.tokenizer.decode(req.tokens, skip_special_tokens=False)})
