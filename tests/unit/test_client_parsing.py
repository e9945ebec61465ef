"""Pure pieces of the client: error mapping, retry decisions and delays, response parsing, URLs, CLI flags."""

from __future__ import annotations

import base64
import builtins
import random
import struct
import subprocess
import sys
from email.utils import formatdate

import pytest

from service.client import (
    APIError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ConnectionError,
    NotFoundError,
    OverloadedError,
    RetryPolicy,
    ServerError,
    TimeoutError,
)
from service.client.cli import build_parser, sampling_from_args
from service.client.errors import error_for_status, error_from_event
from service.client.retry import parse_retry_after
from service.client.transport import normalize_base_url
from service.client.types import ChatCompletion, ChatDelta, Completion, CompletionDelta, Embeddings, Tokenized, Usage


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, BadRequestError), (401, AuthenticationError), (404, NotFoundError), (408, TimeoutError),
     (413, BadRequestError), (429, OverloadedError), (500, ServerError), (502, ServerError),
     (503, OverloadedError), (504, ServerError)],
)
def test_each_status_maps_to_its_exception(status, cls):
    body = {"error": {"message": "why", "type": "t", "param": "p", "code": status}}
    err = error_for_status(status, body, request_id="r")
    assert type(err) is cls
    assert (err.message, err.type, err.param, err.code, err.request_id) == ("why", "t", "p", status, "r")


def test_error_messages_from_other_servers_shapes():
    assert error_for_status(422, {"detail": "bad field"}).message == "bad field"
    assert error_for_status(502, "<html>Bad Gateway</html>").message == "<html>Bad Gateway</html>"
    assert error_for_status(500, None, reason="Internal Server Error").message == "Internal Server Error"


def test_connection_and_timeout_errors_are_also_the_builtins():
    assert isinstance(ConnectionError("x"), OSError)
    assert isinstance(TimeoutError("x"), builtins.TimeoutError)
    assert isinstance(TimeoutError("x"), APIError)


def test_stream_error_events_map_by_code_then_type():
    by_code = error_from_event({"error": {"message": "m", "type": "whatever", "code": 400}})
    by_type = error_from_event({"error": {"message": "m", "type": "overloaded", "code": "busy"}})
    unknown = error_from_event({"error": {"message": "m"}})
    assert type(by_code) is BadRequestError and type(by_type) is OverloadedError and type(unknown) is ServerError
    assert by_code.status is None  # the HTTP response itself was a 200


def test_retry_policy_retries_exactly_the_transient_failures():
    policy = RetryPolicy()
    retried = [ConnectionError("x"), OverloadedError("x", status=429), OverloadedError("x", status=503),
               ServerError("x", status=502), ServerError("x", status=504)]
    not_retried = [BadRequestError("x", status=400), NotFoundError("x", status=404), ServerError("x", status=500),
                   TimeoutError("x"), ServerError("x"), OverloadedError("overloaded mid-stream")]
    assert all(policy.retryable(e) for e in retried)
    assert not any(policy.retryable(e) for e in not_retried)


def test_backoff_grows_exponentially_with_jitter_within_its_cap():
    policy = RetryPolicy(backoff_base_s=0.5, backoff_max_s=4.0, rng=random.Random(1))
    for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)]:
        delays = {policy.delay_s(attempt) for _ in range(50)}
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(delays) > 1  # jittered, not fixed
    assert policy.delay_s(5, retry_after_s=7.0) == 7.0


def test_retry_after_parses_seconds_and_http_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after(formatdate(1_000_010, usegmt=True), now=1_000_000) == pytest.approx(10)
    assert parse_retry_after(formatdate(999_990, usegmt=True), now=1_000_000) == 0.0


def test_retry_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="max_retries=-1"):
        RetryPolicy(max_retries=-1)


def test_base_url_accepts_the_server_root_or_an_openai_style_v1_url():
    assert normalize_base_url("http://h:8000/") == "http://h:8000"
    assert normalize_base_url("http://h:8000/v1") == "http://h:8000"
    assert normalize_base_url("https://h/proxy/v1/") == "https://h/proxy"
    with pytest.raises(ValueError, match="http://"):
        normalize_base_url("h:8000")


def test_completion_parsing_tolerates_missing_fields_and_keeps_extras():
    c = Completion.from_json({"choices": [{"text": "hi", "extra": 1}], "system_fingerprint": "fp"})
    assert c.text == "hi" and c.finish_reason is None and c.usage is None and c.token_ids is None
    assert c.raw["system_fingerprint"] == "fp"
    assert Usage.from_json({"prompt_tokens": 2, "completion_tokens": 3}) == Usage(2, 3, 5)


def test_every_parsed_value_keeps_its_json_object_as_raw():
    choice = {"index": 0, "text": "hi", "finish_reason": "stop", "matched_stop": 2}
    assert Completion.from_json({"choices": [choice]}).choices[0].raw == choice
    message = {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}
    chat = ChatCompletion.from_json({"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls",
                                                  "stop_reason": None}]})
    assert chat.choices[0].raw["stop_reason"] is None and chat.message.raw["tool_calls"] == [{"id": "c"}]
    embeddings = {"data": [{"index": 0, "embedding": [1.0]}], "model": "m", "extra": 1}
    assert Embeddings.from_json(embeddings).raw["extra"] == 1
    assert Tokenized.from_json({"tokens": [1, 2], "count": 2, "token_strs": ["a", "b"]}).raw["token_strs"] == ["a", "b"]


def test_streamed_deltas_keep_the_parsed_object_itself_not_a_copy():
    chat = {"index": 0, "delta": {"content": "x", "reasoning_content": "why"}, "finish_reason": None}
    completion = {"index": 1, "text": "x", "prompt_logprobs": None}
    assert ChatDelta.from_json(chat).raw is chat
    assert CompletionDelta.from_json(completion).raw is completion


def test_chat_delta_role_then_content():
    first = ChatDelta.from_json({"index": 0, "delta": {"role": "assistant"}, "finish_reason": None})
    last = ChatDelta.from_json({"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"})
    assert (first.role, first.content) == ("assistant", "")
    assert (last.role, last.content, last.finish_reason) == (None, "hi", "stop")


def test_embeddings_decode_base64_and_order_by_index():
    packed = base64.b64encode(struct.pack("<3f", 0.5, -1.0, 2.0)).decode()
    e = Embeddings.from_json({"data": [{"index": 1, "embedding": [1.0, 2.0, 3.0]}, {"index": 0, "embedding": packed}],
                              "model": "m"})
    assert e.vectors == [[0.5, -1.0, 2.0], [1.0, 2.0, 3.0]]
    assert e.numpy().shape == (2, 3) and e.numpy().dtype.name == "float32"


def test_cli_sampling_flags_use_the_http_api_names():
    args = build_parser().parse_args(["complete", "p", "--max-tokens", "5", "--top-k", "3", "--stop", "\n",
                                      "--stop", "END", "--param", "ignore_eos=true", "--param", "user=alice"])
    params = sampling_from_args(args)
    assert params["max_tokens"] == 5 and params["top_k"] == 3 and params["temperature"] is None
    assert params["stop"] == ["\n", "END"] and params["ignore_eos"] is True and params["user"] == "alice"


def test_cli_base_url_and_api_key_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("SERVICE_BASE_URL", "http://elsewhere:9")
    monkeypatch.delenv("HFSERVE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    args = build_parser().parse_args(["health"])
    assert (args.base_url, args.api_key) == ("http://elsewhere:9", "sk-openai")
    monkeypatch.setenv("HFSERVE_API_KEY", "sk-ours")
    assert build_parser().parse_args(["health"]).api_key == "sk-ours"


async def test_argument_mistakes_raise_before_anything_is_sent():
    client = AsyncClient("http://127.0.0.1:9")  # nothing listens there; nothing must be sent
    with pytest.raises(TypeError, match="stream_"):
        await client.complete("x", stream=True)
    with pytest.raises(TypeError, match="exactly one"):
        await client.tokenize("x", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(TypeError, match="exactly one"):
        await client.tokenize()
    await client.close()


def test_the_client_imports_nothing_from_the_server_side():
    """Importing the client loads no torch, transformers, numpy or server modules."""
    code = ("import sys, service.client, service.client.cli; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'numpy') "
            "or m.startswith(('service.engine', 'service.api', 'service.embeddings'))); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"
