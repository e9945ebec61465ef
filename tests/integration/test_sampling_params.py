"""The remaining sampling parameters over HTTP: echo (with prompt logprobs), min_tokens, stop_token_ids,
ignore_eos, penalties, and n with streaming."""

from __future__ import annotations

import json
import random

import pytest

from service.api.context import CONTEXT
from service.api.sampling_defaults import load_sampling_defaults
from tests.integration.http_calls import post_completion as post


@pytest.fixture
async def client(make_client):
    return await make_client()


async def test_echo_prepends_the_prompt_and_its_logprobs(client):
    prompt = "def add(a, b):"
    plain = await post(client, prompt=prompt, max_tokens=5, temperature=0, logprobs=1)
    echoed = await post(client, prompt=prompt, max_tokens=5, temperature=0, logprobs=1, echo=True)
    choice = echoed["choices"][0]
    assert choice["text"] == prompt + plain["choices"][0]["text"]
    lp = choice["logprobs"]
    n_prompt = echoed["usage"]["prompt_tokens"]
    # Every token is listed, so that they spell the text; the first prompt token has null logprobs (as in OpenAI
    # and vLLM), every later one (prompt and output) a number.
    assert len(lp["tokens"]) == n_prompt + 5
    assert "".join(lp["tokens"]) == choice["text"]
    assert lp["text_offset"] == [len("".join(lp["tokens"][:i])) for i in range(len(lp["tokens"]))]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert all(x <= 0 for x in lp["token_logprobs"][1:])
    assert lp["tokens"][-5:] == plain["choices"][0]["logprobs"]["tokens"]
    assert lp["token_logprobs"][-5:] == plain["choices"][0]["logprobs"]["token_logprobs"]


async def test_echo_logprobs_with_n_compute_the_prompt_once_and_every_choice_lists_them(make_client):
    """The prompt's logprobs come from the first choice's prefill; its other choices, free to prefill from the
    prefix cache, list the same ones."""
    client = await make_client(prefix_caching=True, block_size=4)
    prompt = "def add(a, b): return a + b  # long enough for several full KV blocks"
    body = {"prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 1, "echo": True}
    single = (await post(client, **body))["choices"][0]["logprobs"]
    stats = client.app[CONTEXT].engine.block_manager.stats
    hits_before = stats.hits
    choices = (await post(client, **body, n=3))["choices"]
    assert [c["logprobs"] for c in choices] == [single] * 3  # greedy: the same prompt and output logprobs
    assert stats.hits > hits_before


async def test_echo_logprobs_of_several_prompts_each_list_their_own_prompt(client):
    """Each prompt's listing is shared by its own choices only, and output offsets run on from its own end."""
    prompts = ["def add(a, b):", "héllo wörld, a second prompt"]
    body = {"max_tokens": 3, "temperature": 0, "logprobs": 2, "echo": True}
    singles = [(await post(client, prompt=p, **body))["choices"][0] for p in prompts]
    choices = (await post(client, prompt=prompts, n=2, **body))["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for c, single in zip(choices, [singles[0], singles[0], singles[1], singles[1]], strict=True):
        assert c["text"] == single["text"]
        assert c["logprobs"] == single["logprobs"]
        tokens = c["logprobs"]["tokens"]
        assert c["logprobs"]["text_offset"] == [len("".join(tokens[:i])) for i in range(len(tokens))]


async def test_streamed_echo_logprobs_with_n_compute_the_prompt_once(make_client):
    """A stream, too, has only each prompt's first choice compute the prompt's logprobs; every choice's frames
    add up to its choice of the full response."""
    client = await make_client(prefix_caching=True, block_size=4)
    prompt = "def add(a, b): return a + b  # long enough for several full KV blocks"
    body = {"prompt": prompt, "max_tokens": 3, "temperature": 0, "logprobs": 1, "echo": True, "n": 3}
    full = (await post(client, **body))["choices"]
    stats = client.app[CONTEXT].engine.block_manager.stats
    hits_before = stats.hits
    resp = await client.post("/v1/completions", json={**body, "stream": True})
    assert resp.status == 200
    texts = [""] * 3
    merged = [{"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []} for _ in range(3)]
    async for line in resp.content:
        if line.startswith(b"data: {"):
            choice = json.loads(line[6:])["choices"][0]
            texts[choice["index"]] += choice["text"]
            for key, values in (choice["logprobs"] or {}).items():
                merged[choice["index"]][key] += values
    assert texts == [c["text"] for c in full]
    assert merged == [c["logprobs"] for c in full]
    assert stats.hits > hits_before  # the other choices prefilled from the prefix cache


async def test_streamed_echo_logprobs_equal_the_full_response(client):
    body = {"prompt": "def add(a, b):", "max_tokens": 5, "temperature": 0, "logprobs": 2, "echo": True}
    full = (await post(client, **body))["choices"][0]
    resp = await client.post("/v1/completions", json={**body, "stream": True})
    assert resp.status == 200
    text, merged = "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    async for line in resp.content:
        if line.startswith(b"data: {"):
            choice = json.loads(line[6:])["choices"][0]
            text += choice["text"]
            for key, values in (choice["logprobs"] or {}).items():
                merged[key] += values
    assert text == full["text"]
    assert merged == full["logprobs"]


@pytest.mark.parametrize("prompt", ["def add(a, b): return a + b  # a prompt prefilled in several chunks", "x"])
async def test_streamed_echo_frames_pair_text_with_logprobs(make_client, prompt):
    """Each frame's logprobs list exactly the tokens of its text: the echoed prompt's frame the prompt tokens
    (the first with a null logprob), each later frame its own tokens; text_offset runs on as in the full
    response. A small token budget prefills the long prompt in chunks (its logprobs come in several deltas)."""
    client = await make_client(max_num_batched_tokens=8)
    body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 2, "echo": True, "n": 2}
    full = (await post(client, **body))["choices"]
    tok = await client.post("/tokenize", json={"prompt": prompt})
    num_prompt = len((await tok.json())["tokens"])
    resp = await client.post("/v1/completions", json={**body, "stream": True})
    assert resp.status == 200
    frames: dict[int, list[dict]] = {0: [], 1: []}
    async for line in resp.content:
        if line.startswith(b"data: {"):
            choice = json.loads(line[6:])["choices"][0]
            frames[choice["index"]].append(choice)
    for index, choices in frames.items():
        echoed = choices[0]
        assert echoed["text"] == prompt
        assert len(echoed["logprobs"]["tokens"]) == num_prompt
        assert echoed["logprobs"]["token_logprobs"][0] is None and echoed["logprobs"]["top_logprobs"][0] is None
        text, merged = "", {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for choice in choices:
            lp = choice["logprobs"]
            assert "".join(lp["tokens"]) == choice["text"]
            assert lp["text_offset"] == [len(text) + len("".join(lp["tokens"][:i])) for i in range(len(lp["tokens"]))]
            text += choice["text"]
            for key, values in lp.items():
                merged[key] += values
        assert text == full[index]["text"]
        assert merged == full[index]["logprobs"]
        assert len(merged["tokens"]) == num_prompt + 6


async def test_echo_with_token_ids_decodes_the_prompt(client):
    tok = await client.post("/tokenize", json={"prompt": "import sys", "add_special_tokens": False})
    ids = (await tok.json())["tokens"]
    body = await post(client, prompt=ids, max_tokens=2, temperature=0, echo=True)
    assert body["choices"][0]["text"].startswith("import sys")


async def test_echo_of_token_ids_keeps_special_tokens_as_the_logprobs_list_them(client):
    bos = client.app[CONTEXT].tokenizer.hf.bos_token_id
    tok = await client.post("/tokenize", json={"prompt": "import sys", "add_special_tokens": False})
    ids = [bos, *(await tok.json())["tokens"]]
    choice = (await post(client, prompt=ids, max_tokens=2, temperature=0, echo=True, logprobs=0))["choices"][0]
    assert choice["text"].startswith(client.app[CONTEXT].tokenizer.hf.bos_token + "import sys")
    assert "".join(choice["logprobs"]["tokens"]) == choice["text"]


async def detokenized(client, ids: list[int]) -> str:
    resp = await client.post("/detokenize", json={"tokens": ids})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["prompt"]


async def test_min_tokens_and_stop_token_ids(client):
    greedy = await post(client, prompt="x = 1", max_tokens=12, temperature=0, return_token_ids=True)
    ids = greedy["choices"][0]["token_ids"]
    stop_id = ids[2]
    stopped = await post(client, prompt="x = 1", max_tokens=12, temperature=0, stop_token_ids=[stop_id],
                         return_token_ids=True)
    got = stopped["choices"][0]
    assert got["finish_reason"] == "stop"
    assert got["stop_reason"] == stop_id
    assert got["token_ids"] == ids[: ids.index(stop_id) + 1]
    # As in vLLM, the stop token's text is left out unless include_stop_str_in_output.
    assert got["text"] == await detokenized(client, ids[: ids.index(stop_id)])
    kept = await post(client, prompt="x = 1", max_tokens=12, temperature=0, stop_token_ids=[stop_id],
                      include_stop_str_in_output=True, return_token_ids=True)
    assert kept["choices"][0]["token_ids"] == got["token_ids"]
    assert kept["choices"][0]["text"] == await detokenized(client, got["token_ids"])
    assert kept["choices"][0]["text"] != got["text"]
    held = await post(client, prompt="x = 1", max_tokens=12, temperature=0, stop_token_ids=[stop_id],
                      min_tokens=8, return_token_ids=True)
    assert stop_id not in held["choices"][0]["token_ids"][:7]  # masked until min_tokens


async def test_ignore_eos_runs_to_max_tokens(client):
    body = await post(client, prompt="a", max_tokens=40, temperature=0, ignore_eos=True)
    assert body["usage"]["completion_tokens"] == 40
    assert body["choices"][0]["finish_reason"] == "length"


async def test_repetition_penalty_changes_repetitive_greedy_output(client):
    base = await post(client, prompt="x", max_tokens=30, temperature=0, ignore_eos=True, return_token_ids=True)
    penalised = await post(client, prompt="x", max_tokens=30, temperature=0, ignore_eos=True,
                           repetition_penalty=2.0, frequency_penalty=2.0, return_token_ids=True)
    a, b = base["choices"][0]["token_ids"], penalised["choices"][0]["token_ids"]
    assert a != b
    assert len(set(b)) >= len(set(a))  # penalties push towards tokens not yet used


async def test_streaming_n_choices_are_interleaved_and_complete(client):
    resp = await client.post("/v1/completions", json={"prompt": "class B:", "max_tokens": 6, "n": 2, "seed": 3,
                                                      "temperature": 1.0, "stream": True})
    texts = {0: "", 1: ""}
    finished = set()
    async for line in resp.content:
        if line.startswith(b"data: {"):
            choice = json.loads(line[6:])["choices"][0]
            texts[choice["index"]] += choice["text"]
            if choice["finish_reason"]:
                finished.add(choice["index"])
    assert finished == {0, 1}
    full = await post(client, prompt="class B:", max_tokens=6, n=2, seed=3, temperature=1.0)
    assert [c["text"] for c in full["choices"]] == [texts[0], texts[1]]


async def test_stop_strings_cut_greedy_text_at_the_earliest_match(client):
    """Against the unstopped greedy text T: with stop strings taken from T, the text is T up to the earliest
    match of any of them, streamed or not, and stop_reason names the string found there."""
    rng = random.Random(3)
    for i in range(12):
        prompt = f"def f{i}(x):\n    return"
        base = await post(client, prompt=prompt, max_tokens=30, temperature=0, ignore_eos=True)
        text = base["choices"][0]["text"]
        stops = []
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(1, len(text))
            stops.append(text[at : at + rng.randint(1, 4)])
        if rng.random() < 0.5:
            stops.append("\x07never")
        stops = list(dict.fromkeys(s for s in stops if s))[:4]
        cut = min(text.find(s) for s in stops if s in text)
        body = {"prompt": prompt, "max_tokens": 30, "temperature": 0, "ignore_eos": True, "stop": stops}
        choice = (await post(client, **body))["choices"][0]
        assert choice["text"] == text[:cut], (prompt, stops)
        assert choice["finish_reason"] == "stop"
        at_cut = [s for s in stops if text.find(s) == cut]
        if len(at_cut) == 1:
            assert choice["stop_reason"] == at_cut[0]
        resp = await client.post("/v1/completions", json={**body, "stream": True})
        streamed = ""
        async for line in resp.content:
            if line.startswith(b"data: {"):
                streamed += json.loads(line[6:])["choices"][0]["text"]
        assert streamed == text[:cut], (prompt, stops)


async def test_chat_equals_completions_on_the_tokenized_conversation(client):
    """The chat endpoint is the completions engine behind a template: the same conversation, tokenized by
    /tokenize and sent as token ids to /v1/completions, gives the same greedy tokens, prompt count and text."""
    for content in ("hi", "def f(x):\n    return x", "two\nlines and ünïcode"):
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}]
        ids = (await (await client.post("/tokenize", json={"messages": messages})).json())["tokens"]
        chat = await client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 12,
                                                               "temperature": 0, "return_token_ids": True})
        assert chat.status == 200, await chat.text()
        chat_body = await chat.json()
        plain = await post(client, prompt=ids, max_tokens=12, temperature=0, return_token_ids=True)
        assert chat_body["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"]
        assert chat_body["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
        assert chat_body["usage"]["prompt_tokens"] == plain["usage"]["prompt_tokens"] == len(ids)


async def test_the_models_generation_config_sets_what_requests_leave_out(make_client, tiny_model_dir, tmp_path):
    # A model whose generation_config.json asks for greedy decoding.
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.0, "do_sample": False}))
    defaults = load_sampling_defaults(str(tmp_path), str(tiny_model_dir))
    client = await make_client(sampling_defaults=dict(defaults))
    prompt = "def add(a, b):"
    greedy = (await post(client, prompt=prompt, max_tokens=12, temperature=0))["choices"][0]["text"]
    left_out = await post(client, prompt=prompt, max_tokens=12, n=3)
    assert [c["text"] for c in left_out["choices"]] == [greedy] * 3
    chat = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}],
                                                            "max_tokens": 12, "n": 2})
    assert len({c["message"]["content"] for c in (await chat.json())["choices"]}) == 1
    # A request that sets temperature itself samples, whatever the model's default.
    sampled = await post(client, prompt=prompt, max_tokens=12, n=3, temperature=1.0, seed=1)
    assert any(c["text"] != greedy for c in sampled["choices"])


async def test_null_means_the_default(make_client, tiny_model_dir, tmp_path):
    """OpenAI's API marks these fields nullable; clients send null for "not set". A null is the API default, or
    the model's own default where it has one."""
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.0}))
    client = await make_client(sampling_defaults=dict(load_sampling_defaults(str(tmp_path), str(tiny_model_dir))))
    prompt = "def add(a, b):"
    greedy = (await post(client, prompt=prompt, max_tokens=8, temperature=0))["choices"][0]["text"]
    nulls = {"temperature": None, "top_p": None, "n": None, "presence_penalty": None, "frequency_penalty": None,
             "stream": None, "echo": None, "top_k": None, "min_tokens": None, "ignore_eos": None, "priority": None,
             "stream_options": None, "logprobs": None, "seed": None}
    body = await post(client, prompt=prompt, max_tokens=8, **nulls)
    assert [c["text"] for c in body["choices"]] == [greedy]  # n=1, greedy from the model's temperature
    resp = await client.post("/v1/chat/completions", json={
        "messages": [{"role": "user", "content": prompt}], "max_tokens": 4, "logprobs": None, "temperature": None,
        "stream_options": {"include_usage": None}, "tools": None})
    assert resp.status == 200, await resp.text()
    # A required field is still required.
    resp = await client.post("/v1/completions", json={"prompt": None})
    assert resp.status == 400 and (await resp.json())["error"]["param"] == "prompt"
