"""POST /v1/embeddings request body."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.api.schemas.sampling import TokenId

MAX_INPUTS = 2048


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    input: str | list[str] | list[TokenId] | list[list[TokenId]] = Field(
        ..., description="A string, a list of strings, a list of token ids, or a list of such lists."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Must equal the model's dimension if given.")
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, v: str | list[str] | list[int] | list[list[int]]) -> object:
        if isinstance(v, list):
            if not v:
                raise ValueError("input is empty")
            if len(v) > MAX_INPUTS:
                raise ValueError(f"at most {MAX_INPUTS} inputs per request")
            if isinstance(v[0], list) and any(not x for x in v):
                raise ValueError("a token-id input is empty")
        return v

    def inputs(self) -> list[str | list[int]]:
        v = self.input
        if isinstance(v, str):
            return [v]
        if isinstance(v[0], int):
            return [list(v)]
        return list(v)
