"""POST /v1/chat/completions request body."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, Field, field_validator, model_validator

from service.api.schemas.sampling import STRICT, UNSUPPORTED_VLLM_PARAMS, NullMeansDefault, SamplingFields
from service.engine.sampling_params import MAX_TOP_LOGPROBS
from service.errors import BadRequestError, InvalidParameterError

MAX_MESSAGES = 1024


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_unless_assistant(self) -> Self:
        # As in OpenAI's API: only an assistant message (one that made tool calls, say) may come without content.
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs `content`")
        return self

    def text(self) -> str:
        """The content as the template sees it: text parts joined by newlines, as in vLLM."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)


class ContinueFinalMessage(NullMeansDefault):
    """vLLM's continue_final_message: the template leaves the last message open, for the model to continue.

    It excludes a generation prompt. add_generation_prompt defaults to true, so a request that continues and
    leaves add_generation_prompt unset (or null) gets false; one that sets both to true is refused, as in vLLM.
    Any role may be continued, as in vLLM (transformers cuts the text right after the final message's content).
    """

    add_generation_prompt: bool = True
    continue_final_message: bool = Field(
        False, description="Leave the final message open for the model to continue, instead of adding a "
        "generation prompt (add_generation_prompt then defaults to false)."
    )

    @model_validator(mode="after")
    def _check_continue_final_message(self) -> Self:
        if self.continue_final_message:
            if "add_generation_prompt" not in self.model_fields_set:
                self.add_generation_prompt = False
            elif self.add_generation_prompt:
                raise BadRequestError("Cannot set both `continue_final_message` and `add_generation_prompt` to "
                                      "True.", param="continue_final_message")
        return self


class ChatPrompt(ContinueFinalMessage):
    """A conversation to render with the chat template: the part of a body that chat completions and /tokenize
    share, so both render a conversation to the same tokens."""

    messages: list[ChatMessage] = Field(..., min_length=1, max_length=MAX_MESSAGES)
    chat_template_kwargs: dict[str, Any] | None = None

    def template_messages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for m in self.messages:
            msg: dict[str, Any] = {"role": m.role, "content": m.text()}
            if m.name is not None:
                msg["name"] = m.name
            out.append(msg)
        return out


class ResponseFormat(BaseModel):
    model_config = STRICT
    type: Literal["text"] = Field("text", description="Only plain text output is supported.")


class ChatCompletionRequest(SamplingFields, ChatPrompt):
    # OpenAI's legacy function calling, and vLLM's chat `echo`, are not implemented either.
    unsupported_params: ClassVar[frozenset[str]] = UNSUPPORTED_VLLM_PARAMS | {"functions", "function_call", "echo"}
    max_completion_tokens: int | None = Field(None, ge=1, description="Newer name for max_tokens.")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = Field(None, description="Tool calling is not supported: absent or empty.")
    tool_choice: Literal["none"] | None = None
    return_token_ids: bool = Field(False, description="Also return prompt_token_ids and each choice's token_ids.")

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if v:
            raise InvalidParameterError("tools", v, "tool calling is not supported by this server")
        return v

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidParameterError("top_logprobs", self.top_logprobs, "requires logprobs to be true")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None
