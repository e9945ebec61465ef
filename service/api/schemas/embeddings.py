"""POST /v1/embeddings request body."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from service.api.schemas.sampling import STRICT, NonEmptyText, NullMeansDefault, TokenIds, at_most_inputs

MAX_INPUTS = 2048


class EmbeddingRequest(NullMeansDefault):
    model_config = STRICT
    model: str | None = None
    input: (
        NonEmptyText
        | Annotated[list[NonEmptyText], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(..., description=f"A string, a list of strings, a list of token ids, or a list of such lists (at most "
                               f"{MAX_INPUTS} inputs).")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Must equal the model's dimension if given.")
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _at_most_max_inputs(cls, value: object) -> object:
        return at_most_inputs(value, MAX_INPUTS, "input", "inputs")

    def inputs(self) -> list[str | list[int]]:
        v = self.input
        if isinstance(v, str):
            return [v]
        if isinstance(v[0], int):
            return [list(v)]
        return list(v)
