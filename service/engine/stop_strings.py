"""Stop strings, matched on text as it streams.

Text that could be the start of a stop string is held back until the next text proves it is not one, so a
client never sees part of a stop string. When a stop string appears, the text before it is released and the
request stops; the stop string itself is not returned.
"""

from __future__ import annotations


class StopStringMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Returns (text safe to emit, the stop string hit or None)."""
        if not self.stops:
            return text, None
        buf = self._held + text
        hit_at, hit = -1, None
        for stop in self.stops:
            i = buf.find(stop)
            if i != -1 and (hit_at == -1 or i < hit_at):
                hit_at, hit = i, stop
        if hit is not None:
            self._held = ""
            return buf[:hit_at], hit
        keep = self._longest_stop_prefix_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], None

    def flush(self) -> str:
        """At the end of generation, whatever was held back is ordinary text."""
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
