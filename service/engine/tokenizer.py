"""The model's tokenizer as the server uses it: encoding off the event loop for long inputs, chat templates,
and the right incremental detokenizer for the vocabulary.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from service.engine.detokenizer import ByteLevelDetokenizer, Detokenizer, OffsetDetokenizer, byte_level_table
from service.errors import BadRequestError

# apply_chat_template arguments a request's chat_template_kwargs may not set: they would change the call's
# result (token ids, a dict, tensors), swap the server's template for the client's, or replace the conversation
# (`messages` is the template's own name for it).
RESERVED_TEMPLATE_KWARGS = frozenset({"tokenize", "return_dict", "return_tensors", "return_assistant_tokens_mask",
                                      "padding", "truncation", "max_length", "tokenizer_kwargs", "chat_template",
                                      "conversation", "messages"})


class Tokenizer:
    def __init__(self, path: str, chat_template_path: str | None = None, offload_chars: int = 2048) -> None:
        self.hf: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(path)
        if chat_template_path is not None:
            self.hf.chat_template = Path(chat_template_path).read_text(encoding="utf-8")
        self._backend = getattr(self.hf, "backend_tokenizer", None)
        if self._backend is not None:
            # Some tokenizer.json files carry fixed padding or truncation (BERT-style exports); we encode one
            # text at a time and check lengths ourselves, so neither may apply silently.
            self._backend.no_padding()
            self._backend.no_truncation()
        self.offload_chars = offload_chars
        # One worker: long prompts are rare, and the Rust batch encoder releases the GIL while it works.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.eos_token_ids = self._eos_ids(path)
        self.vocab_size = len(self.hf)
        self._byte_tables: dict[bool, list[bytes] | None] = {
            skip: byte_level_table(self.hf, skip) for skip in (True, False)
        }
        # token_text's answers: at most one per vocabulary entry (ids are checked against the vocabulary).
        self._token_texts: dict[int, str] = {}

    def _eos_ids(self, path: str) -> frozenset[int]:
        ids: set[int] = set()
        if self.hf.eos_token_id is not None:
            ids.add(int(self.hf.eos_token_id))
        try:
            gen = GenerationConfig.from_pretrained(path)
        except OSError:
            gen = None
        if gen is not None and gen.eos_token_id is not None:
            eos = gen.eos_token_id
            ids.update(eos if isinstance(eos, list) else [eos])
        return frozenset(ids)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    # ---- encoding ------------------------------------------------------------------------------------------
    def encode_now(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Tokenize on the calling thread (holds the GIL: for short texts)."""
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=add_special_tokens).ids  # a fresh list
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def _encode_releasing_gil(self, text: str, add_special_tokens: bool) -> list[int]:
        # The Rust batch encoder releases the GIL while it works; plain encode() does not.
        if self._backend is not None:
            return list(self._backend.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids)
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Tokenize; long texts go to a worker thread so the event loop keeps serving."""
        if len(text) < self.offload_chars:
            return self.encode_now(text, add_special_tokens)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._encode_releasing_gil, text, add_special_tokens)

    async def encode_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                          chat_template_kwargs: dict[str, Any] | None = None,
                          continue_final_message: bool = False) -> list[int]:
        if not self.has_chat_template:
            raise BadRequestError(
                "This model has no chat template; start the server with --chat-template FILE to use "
                "/v1/chat/completions.",
                param="messages",
            )
        text = self.render_chat(messages, add_generation_prompt, chat_template_kwargs, continue_final_message)
        # The template writes the special tokens itself.
        return await self.encode(text, add_special_tokens=False)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    chat_template_kwargs: dict[str, Any] | None = None,
                    continue_final_message: bool = False) -> str:
        """The conversation as the template writes it. `continue_final_message` leaves the last message open
        (no end-of-turn after it) so the model continues it; transformers cuts the text right after its content.
        The HTTP layer has checked that it is not combined with `add_generation_prompt`. As in vLLM, a setting in
        `chat_template_kwargs` wins over the same one passed as a parameter."""
        extra = chat_template_kwargs or {}
        refused = sorted(RESERVED_TEMPLATE_KWARGS.intersection(extra))
        if refused:
            raise BadRequestError(f"chat_template_kwargs may not set {', '.join(refused)}: they change what the "
                                  "template call returns or which template runs.", param="chat_template_kwargs")
        kwargs = {"add_generation_prompt": add_generation_prompt, "continue_final_message": continue_final_message,
                  **extra}
        if kwargs["add_generation_prompt"] and kwargs["continue_final_message"]:
            raise BadRequestError("Cannot set both `continue_final_message` and `add_generation_prompt` to True "
                                  "(one of them in chat_template_kwargs).", param="chat_template_kwargs")
        try:
            text = self.hf.apply_chat_template(messages, tokenize=False, **kwargs)
        except Exception as exc:  # a template raising on odd input is a bad request, not a crash
            raise BadRequestError(f"The chat template could not render these messages: {exc}",
                                  param="messages") from exc
        return str(text)

    # ---- decoding ------------------------------------------------------------------------------------------
    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens,
                                  clean_up_tokenization_spaces=False))

    def detokenizer(self, prompt_ids: list[int], skip_special_tokens: bool = True) -> Detokenizer:
        table = self._byte_tables[skip_special_tokens]
        if table is not None:
            return ByteLevelDetokenizer(table)
        return OffsetDetokenizer(self.hf, prompt_ids, skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """How one token shows in logprobs: its decoded text (bytes that are not UTF-8 alone become U+FFFD).
        Memoised: a logprobs response asks for a text per listed token and alternative (a decode is ~6 µs)."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.decode([token_id], skip_special_tokens=False)
        return text

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
