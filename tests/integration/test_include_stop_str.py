"""include_stop_str_in_output (vLLM's parameter) over HTTP: the matched stop string is kept at the end of the
text, in full and streamed responses alike, while the tokens, logprobs and stop reason stay what they are without
it."""

from __future__ import annotations

import json

import pytest

from tests.integration.http_calls import post_completion as post


@pytest.fixture
async def client(make_client):
    return await make_client()


async def streamed_choice(client, path: str, body: dict) -> dict:
    """One choice gathered from a stream: text, logprobs merged, token ids, finish and stop reasons."""
    resp = await client.post(path, json={**body, "stream": True})
    assert resp.status == 200, await resp.text()
    got: dict = {"text": "", "logprobs": None, "token_ids": []}
    async for line in resp.content:
        if not line.startswith(b"data: {"):
            continue
        c = json.loads(line[6:])["choices"][0]
        got["text"] += (c["delta"].get("content") or "") if "delta" in c else c["text"]
        got["token_ids"] += c.get("token_ids") or []
        if c["logprobs"]:
            if got["logprobs"] is None:
                got["logprobs"] = {k: list(v) for k, v in c["logprobs"].items()}
            else:
                for key, values in c["logprobs"].items():
                    got["logprobs"][key] += values
        if c["finish_reason"] is not None:
            got["finish_reason"], got["stop_reason"] = c["finish_reason"], c["stop_reason"]
    return got


async def stop_across_tokens(client, prompt: str | list[int]) -> tuple[str, str]:
    """The unstopped greedy text T of `prompt`, and a stop string whose first match in T starts in one token
    and ends in the next, after the first few tokens (so there is text both before and after it)."""
    base = await post(client, prompt=prompt, max_tokens=30, temperature=0, ignore_eos=True, logprobs=0)
    text = base["choices"][0]["text"]
    tokens = base["choices"][0]["logprobs"]["tokens"]
    assert "".join(tokens) == text
    boundary = 0
    for i, tok in enumerate(tokens[:-1]):
        boundary += len(tok)
        stop = text[boundary - 2 : boundary + 2]
        if i >= 3 and len(tok) >= 2 and len(tokens[i + 1]) >= 2 and text.find(stop) == boundary - 2:
            return text, stop
    raise AssertionError(f"no stop string spans two tokens in {tokens}")


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_include_stop_str_in_output_keeps_a_stop_string_that_spans_tokens(client, path):
    prompt = "def g(x):\n    return"
    text, stop = await stop_across_tokens(client, prompt)
    body: dict = {"max_tokens": 30, "temperature": 0, "ignore_eos": True, "stop": [stop], "return_token_ids": True}
    if path == "/v1/chat/completions":
        # The chat prompt differs: take T and the stop string from the chat's own greedy text.
        messages = [{"role": "user", "content": prompt}]
        tokens = await client.post("/tokenize", json={"messages": messages})
        text, stop = await stop_across_tokens(client, (await tokens.json())["tokens"])
        body = {**body, "messages": messages, "stop": [stop], "logprobs": True, "top_logprobs": 1}
    else:
        body = {**body, "prompt": prompt, "logprobs": 1}
    end = text.index(stop) + len(stop)

    async def full(**extra) -> dict:
        resp = await client.post(path, json={**body, **extra})
        assert resp.status == 200, await resp.text()
        c = (await resp.json())["choices"][0]
        c["text"] = c["message"]["content"] if "message" in c else c["text"]
        return c

    excluded, included = await full(), await full(include_stop_str_in_output=True)
    assert excluded["text"] == text[: text.index(stop)]
    assert included["text"] == text[:end] == excluded["text"] + stop
    for c in (excluded, included):
        assert (c["finish_reason"], c["stop_reason"]) == ("stop", stop)
    # The same tokens were generated either way; only the text differs.
    assert included["token_ids"] == excluded["token_ids"]
    assert included["logprobs"] == excluded["logprobs"]
    # Streamed, with logprobs and token ids (the handler writes each delta) and without them (the engine's
    # output step writes each token's frame).
    for extra in ({}, {"logprobs": None, "top_logprobs": None, "return_token_ids": False}):
        got = await streamed_choice(client, path, {**body, "include_stop_str_in_output": True, **extra})
        assert got["text"] == included["text"]
        assert (got["finish_reason"], got["stop_reason"]) == ("stop", stop)
        if not extra:
            assert got["token_ids"] == included["token_ids"]
            assert got["logprobs"] == included["logprobs"]
