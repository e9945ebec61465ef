"""continue_final_message (vLLM's parameter) on /v1/chat/completions and the chat form of /tokenize: the chat
template leaves the final assistant message open, so the model continues it instead of starting a new turn."""

from __future__ import annotations

import json

import pytest

# The tiny model's template is ChatML (service/model_builder.py).
PARTIAL = "def add(a, b):\n    return"
MESSAGES = [{"role": "user", "content": "write add"}, {"role": "assistant", "content": PARTIAL}]
OPEN = f"<|im_start|>user\nwrite add<|im_end|>\n<|im_start|>assistant\n{PARTIAL}"


@pytest.fixture
async def client(make_client):
    return await make_client()


async def tokens_of(client, **body) -> list[int]:
    resp = await client.post("/tokenize", json=body)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["tokens"]


async def text_of(client, tokens: list[int]) -> str:
    resp = await client.post("/detokenize", json={"tokens": tokens})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["prompt"]


async def test_tokenize_leaves_the_final_assistant_message_open(client):
    continued = await tokens_of(client, messages=MESSAGES, add_generation_prompt=False, continue_final_message=True)
    assert await text_of(client, continued) == OPEN
    assert continued == await tokens_of(client, prompt=OPEN, add_special_tokens=False)
    # Without it the assistant's turn is closed, as before.
    closed = await tokens_of(client, messages=MESSAGES, add_generation_prompt=False)
    assert await text_of(client, closed) == OPEN + "<|im_end|>\n"


async def test_chat_continues_the_final_message(client):
    body = {"messages": MESSAGES, "add_generation_prompt": False, "continue_final_message": True, "max_tokens": 8,
            "temperature": 0, "return_token_ids": True}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200, await resp.text()
    chat = await resp.json()
    prompt = await tokens_of(client, prompt=OPEN, add_special_tokens=False)
    assert chat["prompt_token_ids"] == prompt
    assert chat["usage"]["prompt_tokens"] == len(prompt)
    # The continuation is what the model generates right after the open message's text.
    resp = await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 8, "temperature": 0})
    assert chat["choices"][0]["message"]["content"] == (await resp.json())["choices"][0]["text"]
    # Streamed, the same.
    resp = await client.post("/v1/chat/completions", json={**body, "stream": True, "return_token_ids": False})
    assert resp.status == 200, await resp.text()
    raw = (await resp.read()).decode()
    assert raw.rstrip().endswith("data: [DONE]")
    streamed = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                       for line in raw.splitlines() if line.startswith("data: {"))
    assert streamed == chat["choices"][0]["message"]["content"]


@pytest.mark.parametrize("unset", [{}, {"add_generation_prompt": None}])
async def test_continuing_turns_off_the_generation_prompt_the_client_left_unset(client, unset):
    # add_generation_prompt defaults to true; continuing implies false unless the client set it.
    continued = await tokens_of(client, messages=MESSAGES, continue_final_message=True, **unset)
    assert await text_of(client, continued) == OPEN
    resp = await client.post("/v1/chat/completions", json={"messages": MESSAGES, "continue_final_message": True,
                                                           "max_tokens": 2, "return_token_ids": True, **unset})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["prompt_token_ids"] == continued


async def test_any_final_role_can_be_continued(client):
    # As in vLLM: transformers cuts the text after the final message, whoever wrote it.
    messages = [{"role": "user", "content": "write add"}]
    continued = await tokens_of(client, messages=messages, continue_final_message=True)
    assert await text_of(client, continued) == "<|im_start|>user\nwrite add"


async def test_chat_template_kwargs_win_over_the_same_parameters_as_in_vllm(client):
    user_only = MESSAGES[:1]
    plain = await tokens_of(client, messages=user_only, add_generation_prompt=False)
    # A request that turns the generation prompt off inside chat_template_kwargs gets it off (was a 400 with
    # Python's "got multiple values for keyword argument").
    assert await tokens_of(client, messages=user_only, chat_template_kwargs={"add_generation_prompt": False}) == plain
    continued = await tokens_of(client, messages=MESSAGES, add_generation_prompt=False,
                                chat_template_kwargs={"continue_final_message": True})
    assert await text_of(client, continued) == OPEN
    resp = await client.post("/v1/chat/completions", json={
        "messages": user_only, "max_tokens": 2, "chat_template_kwargs": {"add_generation_prompt": False}})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["usage"]["prompt_tokens"] == len(plain)


@pytest.mark.parametrize("key", ["tokenize", "return_dict", "chat_template", "messages"])
async def test_chat_template_kwargs_that_change_the_call_itself_are_refused(client, key):
    resp = await client.post("/tokenize", json={"messages": MESSAGES, "chat_template_kwargs": {key: True}})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "chat_template_kwargs" and key in error["message"]


async def test_continue_final_message_in_chat_template_kwargs_with_a_generation_prompt_is_a_clear_400(client):
    for path in ("/tokenize", "/v1/chat/completions"):
        resp = await client.post(path, json={"messages": MESSAGES, "add_generation_prompt": True,
                                             "chat_template_kwargs": {"continue_final_message": True}})
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["param"] == "chat_template_kwargs"
        assert "continue_final_message" in error["message"] and "add_generation_prompt" in error["message"]


async def test_text_parts_are_joined_by_newlines_as_in_vllm(client):
    parts = [{"type": "text", "text": "Hello"}, {"type": "text", "text": "world"}]
    as_parts = await tokens_of(client, messages=[{"role": "user", "content": parts}])
    assert as_parts == await tokens_of(client, messages=[{"role": "user", "content": "Hello\nworld"}])
    resp = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}],
                                                           "max_tokens": 1})
    assert (await resp.json())["usage"]["prompt_tokens"] == len(as_parts)
