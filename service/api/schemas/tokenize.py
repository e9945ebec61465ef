"""POST /tokenize and POST /detokenize bodies, as vLLM has them."""

from __future__ import annotations

from typing import Any

from pydantic import Field, RootModel

from service.api.schemas.chat import ChatPrompt
from service.api.schemas.sampling import STRICT, NullMeansDefault, TokenId

MAX_DETOKENIZE_TOKENS = 1_000_000


class TokenizeTextRequest(NullMeansDefault):
    model_config = STRICT
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(ChatPrompt):
    """Messages are rendered with the chat template (as chat completions renders them), then tokenized."""

    model_config = STRICT
    model: str | None = None
    return_token_strs: bool = False


class TokenizeRequest(RootModel[TokenizeTextRequest | TokenizeChatRequest]):
    """Either `prompt` (text) or `messages` (chat), as the OpenAPI document shows the body."""

    @staticmethod
    def form_of(body: dict[str, Any]) -> type[TokenizeTextRequest] | type[TokenizeChatRequest]:
        """The chat form for a body with `messages`: its errors then name its messages, where trying both forms
        would report the text form's missing `prompt`."""
        return TokenizeChatRequest if "messages" in body else TokenizeTextRequest


class DetokenizeRequest(NullMeansDefault):
    model_config = STRICT
    model: str | None = None
    tokens: list[TokenId] = Field(..., max_length=MAX_DETOKENIZE_TOKENS)
