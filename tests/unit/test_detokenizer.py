"""Incremental detokenization against the real byte-level BPE of the tiny model."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from service.engine.detokenizer import OffsetDetokenizer
from service.engine.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir) -> Tokenizer:
    return Tokenizer(str(tiny_model_dir))


def stream_decode(detok, ids: list[int], chunk: int | list[int]) -> list[str]:
    """Feed `ids` in pieces of the given size(s), cycled; a piece of one token goes through append_token (the
    engine's per-step path), longer ones through append, so a list of sizes mixes the two."""
    sizes = itertools.cycle(chunk if isinstance(chunk, list) else [chunk])
    deltas, i = [], 0
    while i < len(ids):
        n = next(sizes)
        deltas.append(detok.append_token(ids[i]) if n == 1 else detok.append(ids[i:i + n]))
        i += n
    deltas.append(detok.flush())
    return deltas


TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_characters="\ufffd"),  # a literal U+FFFD would be legitimate
        st.sampled_from(list("😀🎉👩‍💻🇯🇵漢字かなカナ한국어ñé") + ["\n", " "]),
    ),
    max_size=60,
)


def test_byte_level_fast_path_is_used(tokenizer):
    from service.engine.detokenizer import ByteLevelDetokenizer
    assert isinstance(tokenizer.detokenizer([1]), ByteLevelDetokenizer)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(text=TEXT, chunk=st.one_of(st.integers(1, 3), st.lists(st.integers(1, 3), min_size=1, max_size=4)))
@example(text="<|im_end|>", chunk=1)
def test_streamed_text_equals_full_decode_without_split_replacement_chars(tokenizer, text, chunk):
    ids = tokenizer.encode_now(text, add_special_tokens=False)
    # Special tokens are skipped when streamed, as decode() skips them (hypothesis also tries the special-token
    # strings it finds in the project's source, such as "<|im_end|>").
    has_special = any(t in text for t in tokenizer.hf.all_special_tokens)
    for detok in (tokenizer.detokenizer([]), OffsetDetokenizer(tokenizer.hf, [], True)):
        deltas = stream_decode(detok, ids, chunk)
        assert "".join(deltas) == tokenizer.decode(ids)
        if not has_special:
            assert "".join(deltas) == text
        assert not any("\ufffd" in d for d in deltas)  # valid text never shows a replacement char


@pytest.mark.parametrize("chunk", [1, 2])
def test_special_tokens_are_skipped_in_streamed_text(tokenizer, chunk):
    text = "Hi<|im_end|>\nthere"
    ids = tokenizer.encode_now(text, add_special_tokens=False)
    deltas = stream_decode(tokenizer.detokenizer([]), ids, chunk)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == "Hi\nthere"
    kept = stream_decode(tokenizer.detokenizer([], skip_special_tokens=False), ids, chunk)
    assert "".join(kept) == text


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(raw=st.lists(st.integers(0, 1023), max_size=40), chunk=st.lists(st.integers(1, 3), min_size=1, max_size=4))
def test_arbitrary_token_sequences_concatenate_to_the_full_decode(tokenizer, raw, chunk):
    """Random ids can spell invalid UTF-8; the deltas still add up to exactly what decode() gives."""
    ids = [t for t in raw if t < tokenizer.vocab_size]
    deltas = stream_decode(tokenizer.detokenizer([]), ids, chunk)
    assert "".join(deltas) == tokenizer.decode(ids)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(raw=st.binary(max_size=30))
def test_random_bytes_round_trip(tokenizer, raw):
    text = raw.decode("utf-8", errors="replace")
    ids = tokenizer.encode_now(text, add_special_tokens=False)
    deltas = stream_decode(tokenizer.detokenizer([]), ids, 1)
    assert "".join(deltas) == text


def test_token_text_is_the_single_token_decode_every_time(tokenizer):
    ids = [0, 1, 5, 100, tokenizer.vocab_size - 1, 5, 100]
    for token_id in ids + ids:  # the second pass answers from the memo
        assert tokenizer.token_text(token_id) == tokenizer.decode([token_id], skip_special_tokens=False)
