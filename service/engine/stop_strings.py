"""Stop strings, matched on text as it streams.

By default (vLLM's include_stop_str_in_output=false) the stop string itself is not returned: text that could
be the start of a stop string is held back until the next text proves it is not one, so a client never sees
part of a stop string. When a stop string appears, the text before it is released and the request stops.

With `include_in_output` the text runs up to and including the stop string, and nothing after it. Nothing is
held back then (a partial stop string is part of the output whether or not it completes, as in vLLM); only the
last few characters already emitted are kept, to find a stop string that starts in them and ends in new text.
Either way every piece of text is emitted once, so streamed deltas add up to the full response's text.

Only a stop string that ends in the newly fed text counts, and none while `can_stop` is false (vLLM's
min_tokens holds stop strings off too): one that completed then is ordinary text, while a possible start of one
is still held back, so a stop string that starts before min_tokens is reached and ends after it does count.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops: tuple[str, ...], include_in_output: bool = False) -> None:
        self.stops = stops
        self.include_in_output = include_in_output
        # Excluding: text not emitted yet, a possible start of a stop string. Including: the tail of the text
        # already emitted, shorter than the longest stop string (a stop string that starts there is still open).
        self._held = ""
        self._context_chars = max(map(len, stops), default=1) - 1

    def feed(self, text: str, can_stop: bool = True) -> tuple[str, str | None]:
        """Returns (text safe to emit, the stop string hit or None)."""
        if not self.stops:
            return text, None
        if self.include_in_output:
            return self._feed_including(text, can_stop)
        seen = len(self._held)
        buf = self._held + text
        hit_at, hit = -1, None
        for stop in self.stops if can_stop else ():
            i = buf.find(stop, max(0, seen - len(stop) + 1))
            if i != -1 and (hit_at == -1 or i < hit_at):
                hit_at, hit = i, stop
        if hit is not None:
            self._held = ""
            return buf[:hit_at], hit
        keep = self._longest_stop_prefix_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], None

    def _feed_including(self, text: str, can_stop: bool) -> tuple[str, str | None]:
        """The output ends where the first stop string to complete ends, whichever way the text was split
        into pieces; of stop strings that end at the same character, the longer one is reported."""
        seen = len(self._held)
        buf = self._held + text
        hit_end, hit = -1, None
        for stop in self.stops if can_stop else ():
            i = buf.find(stop, max(0, seen - len(stop) + 1))
            if i != -1:
                end = i + len(stop)
                if hit is None or end < hit_end or (end == hit_end and len(stop) > len(hit)):
                    hit_end, hit = end, stop
        if hit is not None:
            self._held = ""
            return buf[seen:hit_end], hit
        keep = self._context_chars
        self._held = buf[-keep:] if keep else ""  # all of buf while it is shorter than `keep`
        return text, None

    def flush(self) -> str:
        """At the end of generation, whatever was held back is ordinary text."""
        if self.include_in_output:  # everything was emitted already; the tail is only context
            self._held = ""
            return ""
        held, self._held = self._held, ""
        return held

    def _longest_stop_prefix_suffix(self, buf: str) -> int:
        """Length of the longest tail of `buf` that is a proper prefix of some stop string.

        Only tails that start with a stop string's first character can qualify, so look for that character in
        the last len(stop) - 1 characters; the leftmost candidate that matches is the longest.
        """
        best = 0
        size = len(buf)
        for stop in self.stops:
            i = buf.find(stop[0], max(0, size - len(stop) + 1))
            while i != -1 and size - i > best:
                if stop.startswith(buf[i:]):
                    best = size - i
                    break
                i = buf.find(stop[0], i + 1)
        return best
