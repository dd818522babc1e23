"""CRLF line splitting with a hard cap on line length.

RFC 2449 section 4 limits a POP3 command line to 255 octets including CRLF.
Real clients send longer lines (long AUTH PLAIN responses, long passwords),
so the cap is configurable, but it is always a cap: a peer that never sends
a line end can make us hold at most ``max_line`` bytes. A line over the cap is
dropped up to its end and reported once as :data:`LINE_TOO_LONG`.
"""

from __future__ import annotations

from typing import Final


class _TooLong:
    """Sentinel for an overlong line: an event, not data."""

    def __repr__(self) -> str:
        return "LINE_TOO_LONG"


LINE_TOO_LONG: Final = _TooLong()

RFC_COMMAND_LINE_LIMIT: Final = 255
"""RFC 2449 section 4: a command line is at most 255 octets, CRLF included."""


class LineReader:
    """Splits a byte stream into lines without their terminators.

    Accepts CRLF and a bare LF (some clients send that); a CR before the LF is
    stripped. ``next_line`` returns a line, :data:`LINE_TOO_LONG`, or ``None``
    when more data is needed.
    """

    __slots__ = ("_buffer", "_skipping", "max_line")

    def __init__(self, max_line: int) -> None:
        if max_line < 3:
            raise ValueError("max_line must leave room for a command and CRLF")
        self.max_line = max_line
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes | memoryview) -> None:
        """Append received bytes; ``b""`` (EOF) is a no-op here."""
        self._buffer += data

    def whole_line(self, data: bytes | memoryview) -> bytes | None:
        """``data`` as bytes when it is exactly one line, ending in CRLF and
        within the cap, and nothing is buffered before it; otherwise ``None``,
        and ``data`` is for :meth:`feed`. (The relay's fast path:
        ``ClientConnection.relay_data``.)"""
        if self._buffer or self._skipping:
            return None
        line = bytes(data)
        end = line.find(b"\n")
        if end == len(line) - 1 and 0 < end < self.max_line and line[end - 1] == 13:
            return line
        return None

    def next_line(self) -> bytes | _TooLong | None:
        """The next complete line, :data:`LINE_TOO_LONG` for a line over the
        cap (once, however long it runs), or ``None`` until more data comes."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n")
            if self._skipping:  # the rest of an overlong line: drop it up to its end
                if end < 0:
                    buffer.clear()
                    return None
                del buffer[: end + 1]
                self._skipping = False
                continue
            if end < 0:
                if len(buffer) < self.max_line:
                    return None
                buffer.clear()
                self._skipping = True
                return LINE_TOO_LONG
            if end + 1 > self.max_line:
                del buffer[: end + 1]
                return LINE_TOO_LONG
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            return line[:-1] if line.endswith(b"\r") else line

    def discard(self) -> int:
        """Throw away everything buffered (after STLS); returns how much."""
        dropped = len(self._buffer)
        self._buffer.clear()
        self._skipping = False
        return dropped

    def take(self) -> bytes:
        """Hand over everything buffered (complete lines or not) and clear."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    @property
    def buffered(self) -> int:
        return len(self._buffer)
