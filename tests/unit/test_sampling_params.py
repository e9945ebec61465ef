"""SamplingParams accepts exactly the valid values: its one-expression fast check and its per-field explanation
must agree at every boundary, and a rejection names the offending parameter."""

import pytest

from service.engine.sampling_params import MAX_LOGIT_BIAS_ENTRIES, MAX_STOP_STRINGS, MAX_TOP_LOGPROBS, SamplingParams
from service.errors import InvalidParameterError

VALID_EDGES = [
    {"max_tokens": 1}, {"temperature": 0.0}, {"temperature": 2.0}, {"top_p": 1.0}, {"top_p": 1e-9},
    {"top_k": 0}, {"min_p": 0.0}, {"min_p": 1.0}, {"repetition_penalty": 2.0}, {"presence_penalty": -2.0},
    {"presence_penalty": 2.0}, {"frequency_penalty": -2.0}, {"frequency_penalty": 2.0},
    {"min_tokens": 16, "max_tokens": 16}, {"stop": ("a",) * MAX_STOP_STRINGS},
    {"logit_bias": ((1, -100.0), (2, 100.0))}, {"logit_bias": tuple((i, 0.0) for i in range(MAX_LOGIT_BIAS_ENTRIES))},
    {"logprobs": 0}, {"logprobs": MAX_TOP_LOGPROBS},
]

INVALID = [
    ("max_tokens", {"max_tokens": 0}), ("temperature", {"temperature": -0.1}),
    ("temperature", {"temperature": 2.1}), ("temperature", {"temperature": float("nan")}),
    ("top_p", {"top_p": 0.0}), ("top_p", {"top_p": 1.1}), ("top_k", {"top_k": -1}),
    ("min_p", {"min_p": -0.1}), ("min_p", {"min_p": 1.1}), ("repetition_penalty", {"repetition_penalty": 0.0}),
    ("repetition_penalty", {"repetition_penalty": 2.1}), ("presence_penalty", {"presence_penalty": 2.1}),
    ("frequency_penalty", {"frequency_penalty": -2.1}), ("min_tokens", {"min_tokens": 17, "max_tokens": 16}),
    ("min_tokens", {"min_tokens": -1}), ("stop", {"stop": ("a",) * (MAX_STOP_STRINGS + 1)}),
    ("stop", {"stop": ("",)}), ("logit_bias", {"logit_bias": ((1, 100.5),)}),
    ("logit_bias", {"logit_bias": tuple((i, 0.0) for i in range(MAX_LOGIT_BIAS_ENTRIES + 1))}),
    ("logprobs", {"logprobs": -1}), ("logprobs", {"logprobs": MAX_TOP_LOGPROBS + 1}),
]


@pytest.mark.parametrize("fields", VALID_EDGES)
def test_valid_edges_are_accepted(fields: dict[str, object]) -> None:
    SamplingParams(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("param", "fields"), INVALID)
def test_each_invalid_value_is_rejected_naming_its_parameter(param: str, fields: dict[str, object]) -> None:
    with pytest.raises(InvalidParameterError) as info:
        SamplingParams(**fields)  # type: ignore[arg-type]
    assert info.value.param == param
