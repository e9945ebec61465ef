"""POST /tokenize and POST /detokenize bodies, as vLLM has them."""

from __future__ import annotations

from typing import Any

from pydantic import Field, RootModel

from service.api.schemas.chat import ChatMessage, ContinueFinalMessage
from service.api.schemas.sampling import STRICT, NullMeansDefault, TokenId

MAX_DETOKENIZE_TOKENS = 1_000_000


class TokenizeTextRequest(NullMeansDefault):
    model_config = STRICT
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(ContinueFinalMessage):
    """Messages are rendered with the chat template, then tokenized."""

    model_config = STRICT
    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)
    return_token_strs: bool = False
    chat_template_kwargs: dict[str, Any] | None = None


class TokenizeRequest(RootModel[TokenizeTextRequest | TokenizeChatRequest]):
    """Either `prompt` (text) or `messages` (chat)."""


class DetokenizeRequest(NullMeansDefault):
    model_config = STRICT
    model: str | None = None
    tokens: list[TokenId] = Field(..., max_length=MAX_DETOKENIZE_TOKENS)
