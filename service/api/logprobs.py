"""Logprobs in OpenAI's two wire formats: the legacy completions one and the chat one."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from service.engine.outputs import TokenLogprobs


def _finite(x: float) -> float:
    # JSON has no -inf; OpenAI clients expect a number. -9999 is what OpenAI itself sends for "impossible".
    return x if math.isfinite(x) else -9999.0


def completion_logprobs(
    entries: list[TokenLogprobs | None], token_text: Callable[[int], str], text_offset: int = 0,
    first_prompt_token: int | None = None,
) -> dict[str, Any]:
    """The legacy format: parallel lists of token texts, logprobs, top alternatives and text offsets.

    Each top_logprobs entry holds the chosen token and then the `logprobs` most likely ones: up to logprobs + 1
    entries, as OpenAI documents and vLLM does (so `logprobs: 0` gives the chosen token alone, and a sampled
    token outside the top k is still there). A None entry is the prompt's first token (with echo), which nothing
    predicts: as OpenAI and vLLM do, it is listed with null logprobs, so that the tokens still spell the
    returned text; `first_prompt_token` is its id.
    """
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top: list[dict[str, float] | None] = []
    offsets: list[int] = []
    offset = text_offset
    for e in entries:
        if e is None:
            if first_prompt_token is None:
                continue
            text = token_text(first_prompt_token)
            token_logprobs.append(None)
            top.append(None)
        else:
            text = token_text(e.token_id)
            chosen = _finite(e.logprob)
            token_logprobs.append(chosen)
            alternatives = {text: chosen}
            alternatives.update((token_text(t), _finite(lp)) for t, lp in e.top)
            top.append(alternatives)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def echoed_prompt_logprobs(entries: list[TokenLogprobs | None] | None, token_text: Callable[[int], str],
                           first_prompt_token: int) -> dict[str, Any]:
    """An echoed prompt's tokens in the legacy format, from its first token, whose logprobs are null. `entries`
    are the prompt logprobs the engine computed (starting with the first token's None); a one-token prompt has
    none."""
    return completion_logprobs(entries or [None], token_text, first_prompt_token=first_prompt_token)


def spelled_length(listed: dict[str, Any]) -> int:
    """The length of the text a legacy-format listing's tokens spell: where the next listing's offsets start."""
    return sum(map(len, listed["tokens"]))


def chat_logprobs(entries: list[TokenLogprobs | None], token_text: Callable[[int], str]) -> dict[str, Any]:
    content = []
    for e in entries:
        if e is None:
            continue
        text = token_text(e.token_id)
        content.append({
            "token": text,
            "logprob": _finite(e.logprob),
            "bytes": list(text.encode("utf-8")),
            "top_logprobs": [
                {"token": (t_text := token_text(t)), "logprob": _finite(lp), "bytes": list(t_text.encode("utf-8"))}
                for t, lp in e.top
            ],
        })
    return {"content": content}
