"""A streamed response says what the full response says: a randomized check over the HTTP API.

Each case draws a request (completions or chat; n, a seed or greedy, stop strings (kept in the text or not),
stop_token_ids, logprobs, echo, min_tokens, penalties, max_tokens) and sends it twice at once, with stream true
and false, among all the other cases, so the two copies meet different batch mates. Seeded sampling does not
depend on the batch, so per choice the two must agree on the text, the finish and stop reasons, the token ids and
every logprobs list; and the streamed usage chunk must equal the full response's usage (bar the cached-token
count, which depends on which copy reached the prefix cache first).
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from service.api.context import CONTEXT

NUM_CASES = 40
WORDS = ["def", " f", "(x", "):", "\n", " return", " x", " +", " 1", " class", " A", ":", " pass", " import", " os"]


def draw_case(rng: random.Random) -> tuple[str, dict[str, Any]]:
    chat = rng.random() < 0.4
    body: dict[str, Any] = {
        "max_tokens": rng.randint(1, 24),
        "n": rng.choice([1, 1, 1, 2, 3]),
        "seed": rng.randrange(2**31),
        "temperature": rng.choice([0.0, 0.7, 1.0, 1.5]),
        "return_token_ids": True,
    }
    prompt = "".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    if rng.random() < 0.3:
        body["stop"] = rng.sample([" x", "\n", "(", ":", " 1", "e"], rng.randint(1, 3))
        body["include_stop_str_in_output"] = rng.random() < 0.5
    if rng.random() < 0.2:
        body["stop_token_ids"] = [rng.randrange(50, 500)]
    if rng.random() < 0.2:
        body["min_tokens"] = rng.randint(0, body["max_tokens"])
    if rng.random() < 0.2:
        body["repetition_penalty"] = 1.3
        body["frequency_penalty"] = 0.5
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
        if rng.random() < 0.4:
            body["logprobs"] = True
            body["top_logprobs"] = rng.randint(0, 3)
        return "/v1/chat/completions", body
    body["prompt"] = prompt
    if rng.random() < 0.4:
        body["logprobs"] = rng.randint(0, 3)
        body["echo"] = rng.random() < 0.5
    return "/v1/completions", body


def merge_logprobs(into: dict[str, Any] | None, part: dict[str, Any] | None) -> dict[str, Any] | None:
    """Concatenate streamed logprobs: the legacy format's parallel lists, or chat's `content` list."""
    if part is None:
        return into
    if into is None:
        return {k: list(v) for k, v in part.items()}
    for key, values in part.items():
        into[key] += values
    return into


async def streamed(client, path: str, body: dict[str, Any]) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Per choice index: text, finish and stop reasons, token ids and logprobs gathered from the stream; and the
    usage chunk."""
    resp = await client.post(path, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert resp.status == 200, await resp.text()
    choices: dict[int, dict[str, Any]] = {}
    usage: dict[str, Any] = {}
    async for line in resp.content:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk["usage"] is not None:
            usage = chunk["usage"]
        for c in chunk["choices"]:
            got = choices.setdefault(c["index"], {"text": "", "token_ids": [], "logprobs": None})
            got["text"] += c["delta"].get("content") or "" if "delta" in c else c["text"]
            got["token_ids"] += c.get("token_ids") or []
            got["logprobs"] = merge_logprobs(got["logprobs"], c["logprobs"])
            if c["finish_reason"] is not None:
                got["finish_reason"], got["stop_reason"] = c["finish_reason"], c["stop_reason"]
    return choices, usage


async def check_case(client, seed: int) -> None:
    path, body = draw_case(random.Random(seed))
    full_resp, (stream_choices, stream_usage) = await asyncio.gather(
        client.post(path, json=body), streamed(client, path, body))
    assert full_resp.status == 200, await full_resp.text()
    full = await full_resp.json()
    where = f"case {seed}: {path} {body}"
    assert sorted(stream_choices) == list(range(len(full["choices"]))), where
    for c in full["choices"]:
        got = stream_choices[c["index"]]
        text = c["message"]["content"] if "message" in c else c["text"]
        assert got["text"] == text, where
        assert got["token_ids"] == c["token_ids"], where
        assert (got["finish_reason"], got["stop_reason"]) == (c["finish_reason"], c["stop_reason"]), where
        assert got["logprobs"] == c["logprobs"], where
    # The prefix cache may serve one copy more than the other (whichever came second): cached counts may differ.
    cached = [u.pop("prompt_tokens_details", {"cached_tokens": 0})["cached_tokens"] for u in (stream_usage,
                                                                                            full["usage"])]
    assert stream_usage == full["usage"], where
    assert all(0 <= c < full["usage"]["prompt_tokens"] for c in cached), where


# A small token budget and few sequences, so the copies are split into chunks and queue behind each other; and
# the same with a KV cache so small that requests are preempted and recomputed.
ENGINES = {"chunked": {"max_num_batched_tokens": 24, "max_num_seqs": 6},
           "preempting": {"max_num_batched_tokens": 24, "max_num_seqs": 6, "num_blocks": 20}}


@pytest.mark.parametrize("engine", ENGINES)
async def test_streamed_responses_equal_full_responses(make_client, engine):
    client = await make_client(**ENGINES[engine])
    await asyncio.gather(*(check_case(client, seed) for seed in range(NUM_CASES)))
    if engine == "preempting":
        assert client.app[CONTEXT].engine.scheduler.num_preemptions_total > 0
