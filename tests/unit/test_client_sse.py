"""The SSE decoder: frames survive any split of the byte stream, and the spec's line rules hold."""

from __future__ import annotations

import random

from service.client.sse import Event, SSEDecoder

STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"text": "h\xc3\xa9llo"}\n\n'  # a two-byte UTF-8 character, which a split may cut in half
    b"event: ping\r\ndata: first line\r\ndata:second line\r\n\r\n"
    b"id: 7\nretry: 100\ndata: [DONE]\n\n"
)
EXPECTED = [Event('{"text": "héllo"}'), Event("first line\nsecond line", "ping"), Event("[DONE]")]


def decode(chunks: list[bytes]) -> list[Event]:
    decoder = SSEDecoder()
    events = [e for c in chunks for e in decoder.feed(c)]
    return events + decoder.flush()


def test_whole_stream_decodes_to_its_events():
    assert decode([STREAM]) == EXPECTED


def test_every_split_point_and_byte_by_byte_give_the_same_events():
    for cut in range(len(STREAM) + 1):
        assert decode([STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_random_splits_give_the_same_events():
    rng = random.Random(0)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 12)))
        chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert decode(chunks) == EXPECTED


def test_a_last_frame_without_its_blank_line_is_flushed_at_the_end():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b") == [Event("a")]
    assert decoder.flush() == [Event("b")]
    assert decoder.flush() == []


def test_blank_lines_and_comments_alone_make_no_event():
    assert decode([b"\n\n: x\n\n\r\n"]) == []


def test_event_name_applies_only_to_its_own_frame():
    assert decode([b"event: a\ndata: 1\n\ndata: 2\n\n"]) == [Event("1", "a"), Event("2")]
