"""Server-sent events, decoded incrementally from whatever byte chunks the socket hands us.

A frame is a run of `field: value` lines ended by a blank line; only `data` and `event` matter to OpenAI-style
streams. Several `data` lines in one frame are joined with "\\n" (the SSE spec), lines starting with ":" are
comments (keep-alives), and both "\\n" and "\\r\\n" end a line. Chunks may split a frame, a line or a UTF-8
sequence anywhere: bytes are buffered until a whole line is there, and only whole lines are decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

DONE = "[DONE]"


@dataclass(frozen=True)
class Event:
    data: str
    event: str | None = None


class SSEDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by this chunk, in order."""
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        events = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[Event]:
        """At end of stream: a final frame that lacked its blank line still counts."""
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        return events

    def _line(self, line: str) -> Event | None:
        if not line:  # blank line: dispatch
            if not self._data:
                self._event = None
                return None
            event = Event("\n".join(self._data), self._event)
            self._data, self._event = [], None
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None  # id and retry do not matter to a client that never reconnects a stream
