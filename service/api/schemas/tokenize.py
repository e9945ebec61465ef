"""POST /tokenize and POST /detokenize bodies, as vLLM has them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.api.schemas.chat import ChatMessage
from service.api.schemas.sampling import TokenId

MAX_DETOKENIZE_TOKENS = 1_000_000


class TokenizeRequest(BaseModel):
    """Either `prompt` (text) or `messages` (rendered with the chat template)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[TokenId] = Field(..., max_length=MAX_DETOKENIZE_TOKENS)
