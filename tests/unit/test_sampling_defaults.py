"""The model's generation_config.json supplies sampling defaults; what a request sets always wins."""

from __future__ import annotations

import json

import pytest

from service.api.sampling_defaults import load_sampling_defaults
from service.api.schemas.chat import ChatCompletionRequest
from service.api.schemas.completions import CompletionRequest
from service.errors import StartupError

QWEN_LIKE = {"bos_token_id": 1, "do_sample": True, "eos_token_id": [2, 3], "max_new_tokens": 2048,
             "repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8}


def write(directory, config) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "generation_config.json").write_text(json.dumps(config))
    return str(directory)


def test_auto_takes_only_the_sampling_keys_the_file_lists(tmp_path):
    defaults = load_sampling_defaults("auto", write(tmp_path, QWEN_LIKE))
    assert defaults == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


def test_auto_without_a_file_and_none_give_no_defaults(tmp_path):
    assert load_sampling_defaults("auto", str(tmp_path)) == {}
    model = write(tmp_path / "model", QWEN_LIKE)
    assert load_sampling_defaults("none", model) == {}
    assert load_sampling_defaults("vllm", model) == {}  # vLLM's spelling of "none"


def test_a_directory_overrides_the_models_file(tmp_path):
    model = write(tmp_path / "model", QWEN_LIKE)
    other = write(tmp_path / "other", {"temperature": 0.2, "min_p": 0.05})
    assert load_sampling_defaults(other, model) == {"temperature": 0.2, "min_p": 0.05}


def test_values_a_request_could_not_use_are_skipped(tmp_path):
    config = {"temperature": 3.0, "top_p": 0.0, "top_k": 1.5, "repetition_penalty": True, "min_p": None,
              "top_k_unrelated": 4}
    assert load_sampling_defaults("auto", write(tmp_path, config)) == {}


@pytest.mark.parametrize("content", ["not json", "[1, 2]"])
def test_a_broken_file_stops_start_up(tmp_path, content):
    (tmp_path / "generation_config.json").write_text(content)
    with pytest.raises(StartupError, match=r"generation_config\.json"):
        load_sampling_defaults("auto", str(tmp_path))


def test_a_directory_without_the_file_stops_start_up(tmp_path):
    with pytest.raises(StartupError, match=r"--generation-config .*missing: expected auto, none or a directory "
                                           r"holding a generation_config\.json"):
        load_sampling_defaults(str(tmp_path / "missing"), str(tmp_path))


DEFAULTS = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.1, "repetition_penalty": 1.05}


@pytest.mark.parametrize(("schema", "base"), [(CompletionRequest, {"prompt": "x"}),
                                          (ChatCompletionRequest, {"messages": [{"role": "user", "content": "x"}]})])
def test_a_request_gets_the_defaults_it_leaves_out_and_keeps_what_it_sets(schema, base):
    left_out = schema.model_validate(base).to_sampling_params(16, None, defaults=DEFAULTS)
    assert (left_out.temperature, left_out.top_p, left_out.top_k, left_out.min_p,
            left_out.repetition_penalty) == (0.7, 0.8, 20, 0.1, 1.05)
    # Set explicitly, even to the API's own defaults: the request's values stand.
    explicit = schema.model_validate({**base, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
                                      "repetition_penalty": 1.0}).to_sampling_params(16, None, defaults=DEFAULTS)
    assert (explicit.temperature, explicit.top_p, explicit.top_k, explicit.min_p,
            explicit.repetition_penalty) == (1.0, 1.0, 0, 0.0, 1.0)
    plain = schema.model_validate(base).to_sampling_params(16, None)
    assert (plain.temperature, plain.top_p, plain.top_k) == (1.0, 1.0, 0)
