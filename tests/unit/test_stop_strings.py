from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.engine.stop_strings import StopStringMatcher


def feed_all(stops, pieces):
    m = StopStringMatcher(stops)
    out = []
    for p in pieces:
        emit, hit = m.feed(p)
        out.append(emit)
        if hit is not None:
            return "".join(out), hit
    out.append(m.flush())
    return "".join(out), None


def test_holds_back_a_possible_stop_prefix_then_releases_it():
    m = StopStringMatcher(("STOP",))
    assert m.feed("abc ST") == ("abc ", None)
    assert m.feed("xy") == ("STxy", None)


def test_stop_split_across_pieces_is_cut_out():
    assert feed_all(("STOP",), ["ab", "cS", "TO", "Pzz"]) == ("abc", "STOP")


def test_earliest_of_several_stops_wins():
    assert feed_all(("b", "xyz"), ["axyzb"]) == ("a", "xyz")


def test_no_stops_is_a_pass_through():
    assert feed_all((), ["a", "b"]) == ("ab", None)


@given(st.text(alphabet="abS", max_size=40), st.lists(st.integers(1, 5), max_size=20))
def test_streamed_result_equals_cutting_the_whole_text(text, cuts):
    stops = ("Sab", "bb")
    pieces, i = [], 0
    for c in cuts:
        pieces.append(text[i:i + c])
        i += c
    pieces.append(text[i:])
    streamed, hit = feed_all(stops, pieces)
    positions = [(text.find(s), s) for s in stops if s in text]
    if positions:
        first = min(positions)
        assert (streamed, hit) == (text[: first[0]], first[1])
    else:
        assert (streamed, hit) == (text, None)
