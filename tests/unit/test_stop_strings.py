from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from service.engine.stop_strings import StopStringMatcher


def feed_all(stops, pieces, include=False):
    m = StopStringMatcher(stops, include)
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


# include_stop_str_in_output (vLLM): the text runs up to and including the first stop string to complete.


def test_included_stop_split_across_pieces_is_kept_and_what_follows_is_dropped():
    assert feed_all(("STOP",), ["ab", "cS", "TO", "Pzz"], include=True) == ("abcSTOP", "STOP")


def test_including_holds_nothing_back():
    m = StopStringMatcher(("STOP",), include_in_output=True)
    assert m.feed("abc ST") == ("abc ST", None)  # a partial stop string is output whether or not it completes
    assert m.feed("xy") == ("xy", None)
    assert m.feed("STO") == ("STO", None)
    assert m.feed("Pq") == ("P", "STOP")
    assert m.flush() == ""


def test_including_a_partial_stop_at_the_end_is_emitted_once():
    assert feed_all(("STOP",), ["ab", "ST"], include=True) == ("abST", None)


def test_including_the_first_stop_to_complete_wins():
    # "abc" starts first but "b" completes first, as a token-by-token stream would see it; of two that end
    # together, the longer is named.
    assert feed_all(("abc", "b"), ["zabc"], include=True) == ("zab", "b")
    assert feed_all(("abc", "b"), ["za", "b", "c"], include=True) == ("zab", "b")
    assert feed_all(("b", "ab"), ["zab"], include=True) == ("zab", "ab")


def test_including_finds_a_stop_string_fed_one_character_at_a_time():
    # The emitted tail kept as context grows over several pieces until it is a stop string's length less one.
    assert feed_all(("aaaa",), ["a"] * 12, include=True) == ("aaaa", "aaaa")
    assert feed_all(("ERCIALERCIAL",), ["ERCIAL"] * 3, include=True) == ("ERCIALERCIAL", "ERCIALERCIAL")


@given(st.text(alphabet="abS", max_size=40), st.lists(st.integers(0, 5), max_size=20))
def test_included_stop_result_is_the_same_however_the_text_is_split(text, cuts):
    stops = ("Sab", "bb", "aSa", "aaaaa")
    pieces, i = [], 0
    for c in cuts:
        pieces.append(text[i:i + c])
        i += c
    pieces.append(text[i:])
    streamed, hit = feed_all(stops, pieces, include=True)
    ends = [(text.find(s) + len(s), -len(s), s) for s in stops if s in text]
    if ends:
        end, _, stop = min(ends)
        assert (streamed, hit) == (text[:end], stop)
        assert streamed.endswith(stop)
    else:
        assert (streamed, hit) == (text, None)


def test_a_stop_string_completed_while_stops_are_held_off_is_text_but_one_still_open_counts():
    for include, held_x in ((False, ""), (True, "x")):
        m = StopStringMatcher(("ab", "xyz"), include)
        assert m.feed("zab", can_stop=False) == ("zab", None)  # "ab" complete before stops may count: text
        assert m.feed("x", can_stop=False) == (held_x, None)  # a possible start of "xyz": held back (excluding)
        assert m.feed("yz") == (("yz" if include else ""), "xyz")  # started while held off, ends now: counts
        # "ab" completed while held off stays in the kept text and must not count once stops may
        m = StopStringMatcher(("ab", "abcdef"), include)
        assert m.feed("ab", can_stop=False) == (("ab" if include else ""), None)
        assert m.feed("q") == (("q" if include else "abq"), None)
