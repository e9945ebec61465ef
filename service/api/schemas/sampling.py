"""Fields shared by /v1/completions and /v1/chat/completions, and their mapping onto SamplingParams."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, field_validator, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from service.engine.sampling_params import (
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_N,
    MAX_STOP_STRINGS,
    SamplingParams,
)
from service.errors import BadRequestError, InvalidParameterError

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 64

TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
NonEmptyText = Annotated[str, Field(min_length=1)]


def at_most_inputs(value: object, limit: int, param: str, noun: str) -> object:
    """A prompt-like field (text, token ids, or a list of either) holding at most `limit` of them.

    Checked after the union matched: as a union branch's max_length, too many inputs were reported as another
    branch's type error ("prompt.0: Input should be a valid integer")."""
    if isinstance(value, list) and value and not isinstance(value[0], int) and len(value) > limit:
        raise BadRequestError(f"At most {limit} {noun} per request; this one has {len(value)}.", param=param)
    return value


EMPTY: Mapping[str, float | int] = MappingProxyType({})


# Request models validate strictly: JSON `true` is not the integer 1, and "0.5" is not a number. Unknown fields
# are ignored, as OpenAI's clients sometimes send newer ones.
STRICT = ConfigDict(extra="ignore", strict=True)


class NullMeansDefault(BaseModel):
    """A JSON null for a field that has a default means that default, as OpenAI's API marks these fields nullable
    and clients send null for "not set". The field then counts as unset (model_fields_set), so the model's own
    sampling defaults still apply to it. A required field stays required."""

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict) and None in data.values():
            defaulted = cls._defaulted_fields()
            data = {k: v for k, v in data.items() if v is not None or k not in defaulted}
        return data

    @classmethod
    @functools.cache
    def _defaulted_fields(cls) -> frozenset[str]:
        return frozenset(name for name, f in cls.model_fields.items() if not f.is_required())

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The OpenAPI document says so too: every defaulted property also accepts null."""
        json_schema = handler(core_schema)
        properties = handler.resolve_ref_schema(json_schema).get("properties", {})
        for name in cls._defaulted_fields():
            prop = properties.get(name)
            if prop is not None:
                properties[name] = _nullable(prop)
        return json_schema


_ANNOTATIONS = ("title", "description", "default")


def _nullable(prop: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema property that also accepts null (unchanged if it already does)."""
    branches = prop.get("anyOf")
    if branches is not None:
        if {"type": "null"} in branches:
            return prop
        return {**prop, "anyOf": [*branches, {"type": "null"}]}
    if prop.get("type") == "null":
        return prop
    outer = {k: v for k, v in prop.items() if k in _ANNOTATIONS}
    inner = {k: v for k, v in prop.items() if k not in _ANNOTATIONS}
    return {**outer, "anyOf": [inner, {"type": "null"}]}


class StreamOptions(NullMeansDefault):
    model_config = STRICT
    include_usage: bool = False


# vLLM request parameters that change what is generated and that this server does not implement. Unknown fields
# are ignored, but a client that sets one of these expects it to act: refused (400) rather than ignored.
UNSUPPORTED_VLLM_PARAMS = frozenset({
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_whitespace_pattern",
    "guided_decoding_backend", "structured_outputs", "allowed_token_ids", "bad_words", "prompt_logprobs",
    "use_beam_search", "length_penalty", "truncate_prompt_tokens", "logits_processors",
})


def _is_set(value: Any) -> bool:
    """null, false and empty strings, lists and objects leave a parameter unset (0 does not)."""
    return not (value is None or value is False or (isinstance(value, str | list | dict) and not value))


class SamplingFields(NullMeansDefault):
    """Everything that shapes generation. Ranges follow OpenAI's API, plus vLLM's extra parameters."""

    model_config = STRICT
    unsupported_params: ClassVar[frozenset[str]] = UNSUPPORTED_VLLM_PARAMS

    @model_validator(mode="before")
    @classmethod
    def _refuse_unsupported(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in sorted(cls.unsupported_params.intersection(data)):
                if _is_set(data[key]):
                    raise InvalidParameterError(key, data[key], "is not supported by this server")
        return data

    model: str | None = Field(None, description="Served model name; defaults to the only model served.")
    max_tokens: int | None = Field(None, ge=1, description="Tokens to generate at most.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, le=2**31 - 1,
                       description="-1 or 0 disables top-k; above the vocabulary size, the whole vocabulary.")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N, description="Choices to generate for each prompt.")
    seed: int | None = Field(None, ge=INT64_MIN, le=UINT64_MAX)
    stop: str | list[str] | None = Field(None, description=f"Up to {MAX_STOP_STRINGS} stop strings.")
    include_stop_str_in_output: bool = Field(
        False, description="Keep the matched stop string at the end of the text (vLLM's parameter)."
    )
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(
        None, description=f"Token id (as a string) -> bias in [-100, 100]; at most {MAX_LOGIT_BIAS_ENTRIES}."
    )
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted and ignored.")
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1, description="Lower runs first (priority policy).")
    request_timeout: float | None = Field(
        None, gt=0, description="Seconds before the request is aborted; capped by the server's maximum."
    )

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed, got {len(stops)}")
        for s in stops:
            if not s:
                raise ValueError("stop strings must be non-empty")
            if len(s) > MAX_STOP_STRING_CHARS:
                raise ValueError(f"stop strings may be at most {MAX_STOP_STRING_CHARS} characters")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValueError(f"at most {MAX_LOGIT_BIAS_ENTRIES} entries are allowed, got {len(v)}")
        for key, bias in v.items():
            # ASCII digits only: str.isdigit() also passes "²" (int() then fails) and "١٢" (int() reads 12).
            if not (key.isascii() and key.isdigit()) or int(key) > 2**31 - 1:
                raise ValueError("keys must be token ids written as decimal strings")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"biases must be in [-100, 100], got {bias}")
        return v

    @model_validator(mode="after")
    def _check_min_tokens(self) -> SamplingFields:
        # Against the max_tokens the request set; against a default budget, min_tokens is clamped instead.
        limit = self.requested_max_tokens
        if limit is not None and self.min_tokens > limit:
            raise InvalidParameterError("min_tokens", self.min_tokens, f"must be at most max_tokens ({limit})")
        return self

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        # As in vLLM, though only when it asks for something (include_usage), so that a null or false is harmless.
        if self.include_usage and not self.stream:
            raise InvalidParameterError("stream_options", {"include_usage": True},
                                        "may only ask for usage chunks when stream is true")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def to_sampling_params(self, max_tokens: int, logprobs: int | None, seed_offset: int = 0,
                           defaults: Mapping[str, float | int] = EMPTY) -> SamplingParams:
        """`defaults`: the model's values for temperature, top_p, top_k, min_p and repetition_penalty, used where
        the request did not set the parameter itself (api/sampling_defaults.py)."""
        seed = None
        if self.seed is not None:
            seed = (self.seed + seed_offset) & UINT64_MAX
        src = self
        if defaults:  # no copy unless the model has defaults the request left out
            unset = {k: v for k, v in defaults.items() if k not in self.model_fields_set}
            if unset:
                src = self.model_copy(update=unset)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=src.temperature,
            top_p=src.top_p,
            top_k=max(src.top_k, 0),
            min_p=src.min_p,
            repetition_penalty=src.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=seed,
            min_tokens=min(self.min_tokens, max_tokens),
            ignore_eos=self.ignore_eos,
            stop=self.stop_list(),
            include_stop_str_in_output=self.include_stop_str_in_output,
            stop_token_ids=tuple(self.stop_token_ids or ()),
            logprobs=logprobs,
            logit_bias=tuple((int(k), float(b)) for k, b in (self.logit_bias or {}).items()),
            skip_special_tokens=self.skip_special_tokens,
        )
