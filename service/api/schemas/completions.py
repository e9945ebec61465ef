"""POST /v1/completions request body."""

from __future__ import annotations

from pydantic import Field, field_validator

from service.api.schemas.sampling import SamplingFields, TokenId
from service.engine.sampling_params import MAX_TOP_LOGPROBS

MAX_PROMPTS = 64


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        ..., description="A string, a list of strings, a list of token ids, or a list of such lists."
    )
    echo: bool = Field(False, description="Prepend the prompt to the returned text.")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                 description="Return logprobs of the sampled token and this many alternatives.")
    suffix: str | None = Field(None, description="Not supported; must be absent or null.")
    best_of: int | None = Field(None, ge=1, description="Only best_of == n is supported.")
    return_token_ids: bool = Field(False, description="Also return prompt_token_ids and each choice's token_ids.")

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, v: str | list[str] | list[int] | list[list[int]]) -> object:
        if isinstance(v, list):
            if not v:
                raise ValueError("the prompt list is empty")
            if isinstance(v[0], (str, list)) and len(v) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts per request")
            if isinstance(v[0], list) and any(not p for p in v):
                raise ValueError("a token-id prompt is empty")
        return v

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of single prompts (text or token ids)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]
        return list(p)  # type: ignore[arg-type]
