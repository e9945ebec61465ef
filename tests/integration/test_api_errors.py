"""Bad input gets a 4xx with OpenAI's error shape, naming the parameter, never a 500 and never an echo of a
large input."""

from __future__ import annotations

import shutil

import pytest

from service.api.context import CONTEXT
from service.engine.factory import build_engine
from tests.factories import engine_config


def assert_error(body: dict, status: int, resp_status: int, param: str | None = None) -> dict:
    assert resp_status == status, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if param is not None:
        assert err["param"] == param
    return err


@pytest.fixture
async def client(make_client):
    return await make_client()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "x", "temperature": -3}, "temperature"),
        ({"prompt": "x", "temperature": 2.5}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_k": -2}, "top_k"),
        ({"prompt": "x", "top_k": 2**63}, "top_k"),
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "n": 1000}, "n"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "logprobs": 99}, "logprobs"),
        ({"prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"prompt": "x", "logit_bias": {"\u0661\u0662": 1}}, "logit_bias"),  # Arabic-Indic "12": not token 12
        ({"prompt": "x", "presence_penalty": 3}, "presence_penalty"),
        ({"prompt": "x", "stream": "yes please"}, "stream"),
        ({"max_tokens": 3}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, 2, 10**9]}, None),
        ({"prompt": [-1]}, None),
    ],
)
async def test_completion_validation_errors(client, body, param):
    resp = await client.post("/v1/completions", json=body)
    err = assert_error(await resp.json(), 400, resp.status)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"].split(".")[0] == param
        assert param in err["message"]


@pytest.mark.parametrize("prompt", [["x"] * 65, [[5]] * 65])
async def test_too_many_prompts_says_so(client, prompt):
    resp = await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1})
    err = assert_error(await resp.json(), 400, resp.status, "prompt")
    assert "At most 64 prompts" in err["message"]


async def test_out_of_vocabulary_token_id(client):
    resp = await client.post("/v1/completions", json={"prompt": [1, 2, 5000], "max_tokens": 2})
    err = assert_error(await resp.json(), 400, resp.status, "prompt")
    assert "5000" in err["message"]


async def test_unknown_model_is_404(client):
    resp = await client.post("/v1/completions", json={"prompt": "x", "model": "gpt-9"})
    err = assert_error(await resp.json(), 404, resp.status, "model")
    assert "gpt-9" in err["message"]


async def test_context_length_exceeded(client):
    resp = await client.post("/v1/completions", json={"prompt": [5] * 500, "max_tokens": 100})
    err = assert_error(await resp.json(), 400, resp.status)
    assert err["code"] == "context_length_exceeded"


async def test_a_served_name_with_slashes_is_retrieved_sent_plain_or_encoded(make_client):
    client = await make_client(model_name="org/my-model")
    for path in ("/v1/models/org/my-model", "/v1/models/org%2Fmy-model"):
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["id"] == "org/my-model"
    resp = await client.get("/v1/models/org/other")
    assert_error(await resp.json(), 404, resp.status)


async def test_logit_bias_keys_are_ascii_decimal_token_ids(client):
    # "²" is a digit to str.isdigit() but not to int(): the client saw Python's "invalid literal for int()".
    resp = await client.post("/v1/completions", json={"prompt": "x", "logit_bias": {"\u00b2": 1}})
    err = assert_error(await resp.json(), 400, resp.status, "logit_bias")
    assert "decimal strings" in err["message"] and "invalid literal" not in err["message"]


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400),
        (b'"a string"', {"Content-Type": "application/json"}, 400),
        (b"prompt=x", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ],
)
async def test_malformed_bodies(client, data, headers, status):
    resp = await client.post("/v1/completions", data=data, headers=headers)
    assert_error(await resp.json(), status, resp.status)


async def test_body_without_content_type_is_read_as_json(client):
    """As in vLLM; aiohttp reports the missing header as application/octet-stream, which must not be a 415."""
    resp = await client.post("/v1/completions", data=b'{"prompt": "hi", "max_tokens": 2}',
                             skip_auto_headers=["Content-Type"])
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["usage"]["completion_tokens"] == 2
    resp = await client.post("/v1/completions", data=b"{}", headers={"Content-Type": ";;;"})
    err = assert_error(await resp.json(), 415, resp.status)
    assert "';;;'" in err["message"]


async def test_body_that_does_not_match_its_content_encoding_is_a_400(client):
    resp = await client.post("/v1/completions", data=b'{"prompt": "hi", "max_tokens": 2}',
                             headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    err = assert_error(await resp.json(), 400, resp.status)
    assert err["message"].startswith("The body could not be read")


async def test_wrong_method_and_unknown_route(client):
    resp = await client.get("/v1/completions")
    assert_error(await resp.json(), 405, resp.status)
    resp = await client.get("/v1/nothing-here")
    assert_error(await resp.json(), 404, resp.status)


async def test_large_invalid_input_is_not_echoed(client):
    huge = "z" * 100_000
    resp = await client.post("/v1/completions", json={"prompt": "x", "stop": huge})
    text = await resp.text()
    assert resp.status == 400
    assert len(text) < 1000


async def test_chat_validation(client):
    resp = await client.post("/v1/chat/completions", json={"messages": []})
    assert_error(await resp.json(), 400, resp.status, "messages")
    resp = await client.post("/v1/chat/completions", json={"messages": [{"role": "wizard", "content": "x"}]})
    assert_error(await resp.json(), 400, resp.status)
    resp = await client.post("/v1/chat/completions",
                             json={"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2})
    assert_error(await resp.json(), 400, resp.status)
    for message in ({"role": "user"}, {"role": "system", "content": None}):
        resp = await client.post("/v1/chat/completions", json={"messages": [message], "max_tokens": 2})
        err = assert_error(await resp.json(), 400, resp.status, "messages.0")
        assert "needs `content`" in err["message"]
    # An assistant message may come without content (OpenAI's API allows it, e.g. after tool calls).
    resp = await client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "x"}, {"role": "assistant"}, {"role": "user", "content": "y"}], "max_tokens": 2})
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
async def test_continue_final_message_with_add_generation_prompt_is_a_400(client, path):
    # As in vLLM, the two exclude each other when both are set.
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    resp = await client.post(path, json={"messages": messages, "continue_final_message": True,
                                         "add_generation_prompt": True})
    err = assert_error(await resp.json(), 400, resp.status, "continue_final_message")
    assert "Cannot set both `continue_final_message` and `add_generation_prompt` to True." in err["message"]
    assert err["type"] == "invalid_request_error"


async def test_chat_without_template_is_a_clear_400(make_client, tiny_model_dir, tmp_path):
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink()
    engine, tokenizer = build_engine(engine_config(bare, dtype="float64"))
    tokenizer.hf.chat_template = None
    client = await make_client(engine=engine, tokenizer=tokenizer)
    resp = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    err = assert_error(await resp.json(), 400, resp.status, "messages")
    assert "--chat-template" in err["message"]


async def test_chat_template_flag_supplies_a_template(make_client, tiny_model_dir, tmp_path):
    bare = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, bare)
    (bare / "chat_template.jinja").unlink()
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    cfg = engine_config(bare, dtype="float64")
    cfg = type(cfg)(model=type(cfg.model)(model=str(bare), dtype="float64", chat_template=str(template)),
                    cache=cfg.cache, scheduler=cfg.scheduler)
    engine, tokenizer = build_engine(cfg)
    client = await make_client(engine=engine, tokenizer=tokenizer)
    resp = await client.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200
    tokens = (await resp.json())["tokens"]
    assert tokenizer.decode(tokens) == "[user] hi\n"


async def test_tokenize_and_detokenize_round_trip(client):
    resp = await client.post("/tokenize", json={"prompt": "def f(x): return x", "return_token_strs": True})
    body = await resp.json()
    assert body["count"] == len(body["tokens"]) == len(body["token_strs"])
    assert body["max_model_len"] == 512
    resp = await client.post("/detokenize", json={"tokens": body["tokens"]})
    assert (await resp.json())["prompt"] == "def f(x): return x"
    resp = await client.post("/detokenize", json={"tokens": [10**6]})
    assert_error(await resp.json(), 400, resp.status, "tokens")
    resp = await client.post("/tokenize", json={})
    assert_error(await resp.json(), 400, resp.status)


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "bot", "content": "hi"}], "messages.0.role"),
        ([{"role": "user"}], "messages.0"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
         "messages.0.content.0.type"),
        ([{"role": "user", "content": "x"}] * 1025, "messages"),  # chat's limit too
    ],
)
async def test_tokenize_chat_form_errors_name_the_messages(client, messages, param):
    """Not the text form's missing `prompt`, which is what trying both forms reported."""
    resp = await client.post("/tokenize", json={"messages": messages})
    assert_error(await resp.json(), 400, resp.status, param)


async def test_embeddings_errors(make_client):
    client = await make_client(embeddings=True)
    resp = await client.post("/v1/embeddings", json={"input": []})
    assert_error(await resp.json(), 400, resp.status, "input")
    resp = await client.post("/v1/embeddings", json={"input": "x", "model": "nope"})
    assert_error(await resp.json(), 404, resp.status, "model")
    resp = await client.post("/v1/embeddings", json={"input": "word " * 1000})
    err = assert_error(await resp.json(), 400, resp.status, "input")
    assert err["code"] == "context_length_exceeded"
    resp = await client.post("/v1/embeddings", json={"input": "x", "encoding_format": "int8"})
    assert_error(await resp.json(), 400, resp.status, "encoding_format")
    for too_many in (["a"] * 2049, [[5]] * 2049):  # was "input.0: Input should be a valid integer"
        resp = await client.post("/v1/embeddings", json={"input": too_many})
        err = assert_error(await resp.json(), 400, resp.status, "input")
        assert "At most 2048 inputs" in err["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logit_bias": {"5000": 5}}, "logit_bias"),
        ({"stop_token_ids": [5000]}, "stop_token_ids"),
        ({"stop_token_ids": [5000], "min_tokens": 2}, "stop_token_ids"),  # min_tokens masks the stop ids
    ],
)
async def test_out_of_vocabulary_ids_in_sampling_fields_are_400_and_leave_the_engine_alive(client, extra, param):
    """The sampler indexes the logits with these ids: one that is out of range must never reach a step (a failed
    step fails its whole batch, and consecutive failures declare the engine dead)."""
    ctx = client.app[CONTEXT]
    for _ in range(ctx.engine.config.max_consecutive_step_failures + 1):
        resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3, **extra})
        err = assert_error(await resp.json(), 400, resp.status, param)
        assert "5000" in err["message"]
    resp = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
    assert resp.status == 200, await resp.text()
    assert ctx.engine.is_alive


async def test_context_length_param_names_what_to_shorten(client):
    ctx = client.app[CONTEXT]
    limit = ctx.engine.max_model_len
    resp = await client.post("/v1/completions", json={"prompt": [5] * limit, "max_tokens": 1})
    err = assert_error(await resp.json(), 400, resp.status, "prompt")  # no max_tokens would help
    assert err["code"] == "context_length_exceeded"
    resp = await client.post("/v1/completions", json={"prompt": [5] * (limit - 4), "max_tokens": 10})
    assert_error(await resp.json(), 400, resp.status, "max_tokens")


async def test_a_list_of_prompts_with_one_too_long_queues_none(client):
    ctx = client.app[CONTEXT]
    finished_before = dict(ctx.engine.stats.requests_finished)
    resp = await client.post("/v1/completions",
                             json={"prompt": [[5, 6], [5] * ctx.engine.max_model_len], "max_tokens": 1, "n": 2})
    assert_error(await resp.json(), 400, resp.status, "prompt")
    assert ctx.engine.stats.requests_finished == finished_before  # nothing was queued, so nothing was aborted
    assert ctx.engine.num_live == 0


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        ("/v1/completions", {"prompt": "x", "min_tokens": 5, "max_tokens": 2}, "min_tokens", "at most max_tokens"),
        ("/v1/chat/completions", {**CHAT, "min_tokens": 5, "max_completion_tokens": 2}, "min_tokens",
         "at most max_tokens"),
        ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs", "requires logprobs"),
        ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools",
         "not supported"),
        ("/v1/completions", {"prompt": [-1]}, "prompt.0", "greater than or equal to 0"),
        ("/v1/completions", {"prompt": [[]]}, "prompt.0", "at least 1 item"),
        ("/v1/chat/completions",
         {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages.0.content.0.type", "'text'"),
    ],
)
async def test_cross_field_and_union_errors_name_the_parameter(client, path, body, param, says):
    resp = await client.post(path, json=body)
    err = assert_error(await resp.json(), 400, resp.status, param)
    assert says in err["message"]
    assert "messages" not in err["message"] or param.startswith("messages")  # no echo of the whole body


async def test_an_empty_tools_list_is_accepted(client):
    resp = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2, "tools": []})
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize(("path", "extra", "param"), [
    ("/v1/completions", {"guided_json": {"type": "object"}}, "guided_json"),
    ("/v1/completions", {"allowed_token_ids": [5]}, "allowed_token_ids"),
    ("/v1/completions", {"prompt_logprobs": 0}, "prompt_logprobs"),
    ("/v1/completions", {"use_beam_search": True}, "use_beam_search"),
    ("/v1/chat/completions", {"guided_choice": ["a", "b"]}, "guided_choice"),
    ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"echo": True}, "echo"),
])
async def test_vllm_parameters_this_server_lacks_are_refused_not_ignored(client, path, extra, param):
    body = {"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post(path, json={**body, "max_tokens": 2, **extra})
    err = assert_error(await resp.json(), 400, resp.status, param)
    assert "not supported" in err["message"]


@pytest.mark.parametrize("extra", [{"guided_json": None}, {"use_beam_search": False}, {"allowed_token_ids": []},
                                   {"functions": []}])
async def test_vllm_parameters_this_server_lacks_may_be_sent_unset(client, extra):
    path = "/v1/chat/completions" if "functions" in extra else "/v1/completions"
    body = {"prompt": "hi"} if path == "/v1/completions" else {"messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post(path, json={**body, "max_tokens": 2, **extra})
    assert resp.status == 200, await resp.text()


async def test_priority_needs_the_priority_policy_as_in_vllm(make_client):
    fcfs = await make_client()
    resp = await fcfs.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "priority": 3})
    err = assert_error(await resp.json(), 400, resp.status, "priority")
    assert "--scheduling-policy" in err["message"]
    resp = await fcfs.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "priority": 0})
    assert resp.status == 200
    ranked = await make_client(policy="priority")
    resp = await ranked.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "priority": 3})
    assert resp.status == 200, await resp.text()


@pytest.mark.parametrize("stream", [False, None])
async def test_stream_options_without_stream_is_a_400_as_in_vllm(client, stream):
    body = {"prompt": "hi", "max_tokens": 2, "stream_options": {"include_usage": True}}
    resp = await client.post("/v1/completions", json=body if stream is None else {**body, "stream": stream})
    assert_error(await resp.json(), 400, resp.status, "stream_options")
    for harmless in (None, {"include_usage": False}, {"include_usage": None}):
        resp = await client.post("/v1/completions", json={**body, "stream_options": harmless})
        assert resp.status == 200
