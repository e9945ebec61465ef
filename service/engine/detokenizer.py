"""Incremental detokenization: token ids in, text deltas out, never a U+FFFD for a character that a later
token completes, and the concatenated deltas always equal the full decode.

Two implementations:
- `ByteLevelDetokenizer`, for byte-level BPE (GPT-2, Llama 3, Qwen2 and our default model): a precomputed
  token -> bytes table and Python's incremental UTF-8 decoder, which holds back an incomplete sequence by
  construction. About a microsecond per token.
- `OffsetDetokenizer`, for any other tokenizer: decodes a short window around the new tokens and emits the
  part past the previous read offset once it no longer ends in U+FFFD (the method vLLM and TGI use).
"""

from __future__ import annotations

import codecs
from typing import Protocol

from transformers import PreTrainedTokenizerBase

# Prompt tokens kept as left context for the first decode (so that e.g. SentencePiece spacing is right).
CONTEXT_TOKENS = 5


class Detokenizer(Protocol):
    def append(self, token_ids: list[int]) -> str: ...
    def append_token(self, token_id: int) -> str: ...
    def flush(self) -> str: ...


_UTF8Decoder = codecs.getincrementaldecoder("utf-8")


class ByteLevelDetokenizer:
    def __init__(self, table: list[bytes]) -> None:
        self._table = table
        # Made on the first token that is not whole characters on its own; most requests never need it.
        self._decoder: codecs.IncrementalDecoder | None = None
        self._holding = False  # the decoder holds the first bytes of an incomplete character

    def append_token(self, token_id: int) -> str:
        data = self._table[token_id]
        if not self._holding:
            try:
                return data.decode()  # whole characters: most tokens, with no decoder state to carry
            except UnicodeDecodeError:
                pass
        return self._decode(data)

    def append(self, token_ids: list[int]) -> str:
        return self._decode(b"".join(self._table[t] for t in token_ids))

    def _decode(self, data: bytes, final: bool = False) -> str:
        if self._decoder is None:
            self._decoder = _UTF8Decoder(errors="replace")
        text = self._decoder.decode(data, final)
        self._holding = bool(self._decoder.getstate()[0])
        return text

    def flush(self) -> str:
        return self._decode(b"", final=True) if self._holding else ""


class OffsetDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int], skip_special_tokens: bool) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        context = list(prompt_ids[-CONTEXT_TOKENS:])
        self._ids = context
        self._prefix_offset = 0
        self._read_offset = len(context)

    def _decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=self._skip, clean_up_tokenization_spaces=False))

    def append_token(self, token_id: int) -> str:
        return self.append([token_id])

    def append(self, token_ids: list[int]) -> str:
        self._ids.extend(token_ids)
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        prefix = self._decode(self._ids[self._prefix_offset : self._read_offset])
        text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return text[len(prefix) :] if len(text) > len(prefix) else ""


def byte_level_table(tokenizer: PreTrainedTokenizerBase, skip_special_tokens: bool) -> list[bytes] | None:
    """token id -> the bytes it decodes to, if the tokenizer is plain byte-level BPE; else None."""
    from tokenizers import decoders
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(backend.decoder, decoders.ByteLevel):
        return None
    byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    added = {i: t.content for i, t in backend.get_added_tokens_decoder().items()}
    vocab = backend.get_vocab(with_added_tokens=True)
    table = [b""] * (max(vocab.values()) + 1)
    for piece, i in vocab.items():
        if i in special and skip_special_tokens:
            table[i] = b""
        elif i in added:
            table[i] = added[i].encode("utf-8")
        else:
            try:
                table[i] = bytes(byte_of[ch] for ch in piece)
            except KeyError:
                return None  # not a byte-level vocabulary after all
    # Trust but verify: added tokens and a sample of the vocabulary must decode exactly as transformers does.
    probe = sorted(added) + list(range(0, len(table), max(1, len(table) // 256)))
    for i in probe:
        if i >= len(table) or i not in vocab.values():
            continue
        expected = tokenizer.decode([i], skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)
        if table[i].decode("utf-8", errors="replace") != expected:
            return None
    return table
