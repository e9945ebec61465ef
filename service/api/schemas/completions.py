"""POST /v1/completions request body."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from service.api.schemas.sampling import NonEmptyText, SamplingFields, TokenIds, at_most_inputs
from service.engine.sampling_params import MAX_TOP_LOGPROBS

MAX_PROMPTS = 64


class CompletionRequest(SamplingFields):
    prompt: (
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(..., description=f"A string, a list of strings, a list of token ids, or a list of such lists (at most "
                               f"{MAX_PROMPTS} prompts).")
    echo: bool = Field(False, description="Prepend the prompt to the returned text.")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                 description="Return logprobs of the sampled token and this many alternatives.")
    suffix: str | None = Field(None, description="Not supported; must be absent or null.")
    best_of: int | None = Field(None, ge=1, description="Only best_of == n is supported.")
    return_token_ids: bool = Field(False, description="Also return prompt_token_ids and each choice's token_ids.")

    @field_validator("prompt")
    @classmethod
    def _at_most_max_prompts(cls, prompt: object) -> object:
        return at_most_inputs(prompt, MAX_PROMPTS, "prompt", "prompts")

    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of single prompts (text or token ids)."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], int):
            return [list(p)]
        return list(p)  # type: ignore[arg-type]
