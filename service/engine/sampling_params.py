"""Per-request sampling parameters, validated once and then immutable for the request's life."""

from __future__ import annotations

from dataclasses import dataclass, field

from service.errors import InvalidParameterError

MAX_STOP_STRINGS = 4
MAX_LOGIT_BIAS_ENTRIES = 300
MAX_TOP_LOGPROBS = 20
MAX_N = 16


# Temperatures below this sample greedily, as in vLLM: dividing logits by a smaller one overflows float32 (a
# temperature of 1e-39 turned every logit into inf or nan, and the sampler then always picked token 0).
GREEDY_TEMPERATURE = 1e-5


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What a request asks of the sampler and of the stop checker.

    temperature 0 (or below GREEDY_TEMPERATURE) means greedy. top_k 0 (or -1 at the HTTP boundary) means no top-k cut.
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False  # keep the matched stop string at the end of the text (vLLM)
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = field(default=())
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        # One expression for the common, valid case; _explain() finds what is wrong otherwise.
        if not (
            self.max_tokens >= 1 and 0.0 <= self.temperature <= 2.0 and 0.0 < self.top_p <= 1.0
            and self.top_k >= 0 and 0.0 <= self.min_p <= 1.0 and 0.0 < self.repetition_penalty <= 2.0
            and -2.0 <= self.presence_penalty <= 2.0 and -2.0 <= self.frequency_penalty <= 2.0
            and 0 <= self.min_tokens <= self.max_tokens and len(self.stop) <= MAX_STOP_STRINGS and all(self.stop)
            and len(self.logit_bias) <= MAX_LOGIT_BIAS_ENTRIES
            and (not self.logit_bias or all(-100.0 <= b <= 100.0 for _, b in self.logit_bias))
            and (self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS)
        ):
            self._explain()

    def _explain(self) -> None:
        _check(self.max_tokens >= 1, "max_tokens", self.max_tokens, "must be at least 1")
        _check(0.0 <= self.temperature <= 2.0, "temperature", self.temperature, "must be in [0, 2]")
        _check(0.0 < self.top_p <= 1.0, "top_p", self.top_p, "must be in (0, 1]")
        _check(self.top_k >= 0, "top_k", self.top_k, "must be -1, 0 or positive")
        _check(0.0 <= self.min_p <= 1.0, "min_p", self.min_p, "must be in [0, 1]")
        _check(0.0 < self.repetition_penalty <= 2.0, "repetition_penalty", self.repetition_penalty,
               "must be in (0, 2]")
        _check(-2.0 <= self.presence_penalty <= 2.0, "presence_penalty", self.presence_penalty,
               "must be in [-2, 2]")
        _check(-2.0 <= self.frequency_penalty <= 2.0, "frequency_penalty", self.frequency_penalty,
               "must be in [-2, 2]")
        _check(0 <= self.min_tokens <= self.max_tokens, "min_tokens", self.min_tokens,
               "must be in [0, max_tokens]")
        _check(len(self.stop) <= MAX_STOP_STRINGS, "stop", len(self.stop),
               f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        _check(all(self.stop), "stop", "", "stop strings must be non-empty")
        _check(len(self.logit_bias) <= MAX_LOGIT_BIAS_ENTRIES, "logit_bias", len(self.logit_bias),
               f"at most {MAX_LOGIT_BIAS_ENTRIES} entries are allowed")
        _check(all(-100.0 <= b <= 100.0 for _, b in self.logit_bias), "logit_bias", "",
               "biases must be in [-100, 100]")
        if self.logprobs is not None:
            _check(0 <= self.logprobs <= MAX_TOP_LOGPROBS, "logprobs", self.logprobs,
                   f"must be in [0, {MAX_TOP_LOGPROBS}]")
        raise AssertionError("the fast check and _explain() disagree")  # pragma: no cover

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def needs_penalties(self) -> bool:
        return (
            self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
        )


def _check(ok: bool, param: str, value: object, why: str) -> None:
    if not ok:
        raise InvalidParameterError(param, value, why)
