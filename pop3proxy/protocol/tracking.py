"""Where each backend reply begins and ends in TRANSACTION, sans-IO.

Most sessions relay the backend's bytes without looking at them. A session
with a download budget or a moved mailbox needs more: the relay must put
its own ``-ERR`` for a refused RETR at the right place among pipelined
replies (RFC 2449 section 6.6: replies come in the order of the commands),
and rewrite the lines of UIDL replies and nothing else. :class:`ReplyTracker`
knows, from the commands forwarded in order, where each reply ends:

* ``-ERR`` is always one line (RFC 1939 section 3);
* ``+OK`` to RETR, TOP, CAPA (RFC 2449), and to LIST, UIDL, LANG (RFC 6856)
  or AUTH without an argument is multi-line, ended by a lone "." (dot-stuffed
  lines inside never end it);
* every other reply is one line. The core forwards any TRANSACTION line, so
  a command nobody knows is taken as single-line, as RFC 1939 says unknown
  commands are answered (with ``-ERR``).

It streams: a reply nobody rewrites is only searched for its end (with
``bytes.find``, no per-line work), and a line to rewrite is held back only
up to :data:`MAX_HELD_LINE`, so a 2 GB RETR passes in constant memory.
Bytes the backend sends with no command outstanding (none from a sane
server) are taken as one-line replies nobody asked for and passed on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pop3proxy.protocol.replies import dot_stuff, unstuff

MULTILINE = frozenset({b"RETR", b"TOP", b"CAPA"})
"""Commands whose positive reply is always multi-line."""

MULTILINE_WITHOUT_ARGUMENT = frozenset({b"LIST", b"UIDL", b"LANG", b"AUTH"})
"""Commands whose positive reply is multi-line when they have no argument
(``UIDL`` lists every message, ``UIDL 3`` answers on the status line)."""

TERMINATOR = b"\n.\r\n"
"""The end of a multi-line reply: a lone "." line, with the line end before it."""

MAX_HELD_LINE = 1024
"""A line to rewrite is held back up to this many bytes; a longer one (no
UIDL line is: RFC 1939 allows 70 characters) passes on unchanged."""

Rewrite = Callable[[bytes], bytes]
"""Takes one line (without its line end, not dot-stuffed) and returns its replacement."""


@dataclass(slots=True, eq=False)
class _Expected:
    """One reply in the order the client will get it."""

    multiline: bool
    """When positive."""
    rewrite: Rewrite | None = None
    local: bytes | None = None
    """A reply the proxy gives in this place itself (a refused command)."""


_UNSOLICITED = _Expected(multiline=False)
"""What bytes are taken for when no command is outstanding."""


def command_of(line: bytes) -> tuple[bytes, bool]:
    """A command line's name (upper case) and whether it has an argument."""
    keyword, _, argument = line.rstrip(b"\r\n").partition(b" ")
    return keyword.upper(), bool(argument.strip(b" "))


def is_multiline(name: bytes, has_argument: bool) -> bool:
    """Whether a positive reply to the command ``name`` is multi-line."""
    return name in MULTILINE or (not has_argument and name in MULTILINE_WITHOUT_ARGUMENT)


def _split_line_end(line: bytes) -> tuple[bytes, bytes]:
    """A complete line's content and its end (CRLF, or a bare LF)."""
    size = 2 if line.endswith(b"\r\n") else 1
    return line[:-size], line[-size:]


def _rewrite_line(content: bytes, line_end: bytes, rewrite: Rewrite) -> bytes:
    """One body line (dot-stuffed, ``line_end`` not included), rewritten; a
    line too long to hold (see :data:`MAX_HELD_LINE`) stays as it is."""
    if len(content) + len(line_end) > MAX_HELD_LINE:
        return content
    if not content.startswith(b"."):
        return rewrite(content)
    unstuffed = unstuff(content)
    # A lone "." ended by a bare LF ends nothing (nor does it in a reply not rewritten).
    return content if unstuffed is None else dot_stuff(rewrite(unstuffed))


def _rewrite_lines(block: bytes, rewrite: Rewrite) -> bytes:
    """Complete body lines (``block`` ends with a line end), each rewritten."""
    if block.count(b"\n") == block.count(b"\r\n"):  # every line ends in CRLF: the norm
        lines = block[:-2].split(b"\r\n")
        return b"\r\n".join([_rewrite_line(line, b"\r\n", rewrite) for line in lines]) + b"\r\n"
    rewritten = []
    for line in block[:-1].split(b"\n"):
        content, line_end = _split_line_end(line + b"\n")
        rewritten.append(_rewrite_line(content, line_end, rewrite) + line_end)
    return b"".join(rewritten)


def _terminator_prefix(data: bytes | bytearray, start: int, end: int) -> int:
    """How much of :data:`TERMINATOR` ``data[start:end]`` ends with (0 to 3)."""
    for size in (3, 2, 1):
        if end - start >= size and data[end - size : end] == TERMINATOR[:size]:
            return size
    return 0


class ReplyTracker:
    """Follows the backend's replies to the commands :meth:`expect` was told of.

    The shell calls :meth:`expect` for each command it forwards, in order,
    :meth:`insert` for a reply it gives in a command's place, and feeds the
    backend's bytes to :meth:`feed`, which returns what the client gets.
    """

    __slots__ = (
        "_current",
        "_head",
        "_held",
        "_in_body",
        "_matched",
        "_out",
        "_passing_line",
        "_positive",
        "_queue",
        "_run",
        "_view",
    )

    def __init__(self) -> None:
        self._queue: list[_Expected] = []
        self._head = 0
        """Replies before this index in ``_queue`` are done (a list, compacted
        now and then: a client may pipeline thousands of commands)."""
        self._current: _Expected | None = None
        """The reply whose bytes are coming; ``None`` between replies."""
        self._positive = False
        self._in_body = False
        self._matched = 0
        """How much of :data:`TERMINATOR` the body seen so far ends with."""
        self._held = bytearray()
        """The start of a line to rewrite, waiting for its end."""
        self._passing_line = False
        """A line to rewrite ran over :data:`MAX_HELD_LINE`: its rest passes as it is."""
        self._out: list[bytes | memoryview] = []
        self._run = 0
        self._view = memoryview(b"")

    @property
    def idle(self) -> bool:
        """No reply is outstanding or under way: what the proxy says now comes next."""
        return self._current is None and self._head == len(self._queue)

    def expect(self, name: bytes, has_argument: bool, rewrite: Rewrite | None = None) -> None:
        """The command ``name`` went to the backend. ``rewrite`` changes the
        lines of its positive reply's data: the body lines of a multi-line
        reply, or the status line of a single-line one (``+OK 1 abc``)."""
        self._queue.append(_Expected(is_multiline(name, has_argument), rewrite))

    def insert(self, reply: bytes) -> bytes:
        """The proxy answers a command itself: returns ``reply`` when it can go
        to the client now, else ``b""`` and :meth:`feed` returns it after the
        replies outstanding before it."""
        if self.idle:
            return reply
        self._queue.append(_Expected(multiline=False, local=reply))
        return b""

    def feed(self, data: bytes | bytearray, end: int | None = None) -> bytes | memoryview:
        """The backend sent ``data[:end]``; returns what to send the client.

        Without a change, that is ``data[:end]`` itself (a view of it: no copy),
        so pass the bytes on before ``data`` is reused.
        """
        end = len(data) if end is None else end
        self._view = view = memoryview(data)[:end]
        self._out = []
        self._run = 0
        position = 0
        while position < end:
            if self._current is None:
                self._begin_reply(data[position])
            if self._in_body:
                position = self._body(data, position, end)
            else:
                position = self._status_line(data, position, end)
        out, self._out, self._view = self._out, [], memoryview(b"")
        if not out:
            return view
        if self._run < end:
            out.append(view[self._run :])
        return b"".join(out)

    # -- inside feed ---------------------------------------------------------------

    def _replace(self, start: int, stop: int, replacement: bytes) -> None:
        """The client gets ``replacement`` in place of ``data[start:stop]``."""
        if start > self._run:
            self._out.append(self._view[self._run : start])
        self._out.append(replacement)  # even b"": the output is no longer the input
        self._run = stop

    def _begin_reply(self, first: int) -> None:
        queue = self._queue
        if self._head < len(queue):
            self._current = queue[self._head]
            self._head += 1
            if self._head > 64 and self._head * 2 > len(queue):
                del queue[: self._head]
                self._head = 0
        else:
            self._current = _UNSOLICITED
        self._positive = first == 0x2B  # "+"

    def _end_reply(self, at: int) -> None:
        """The reply ended before ``data[at]``; replies the proxy gives itself next go now."""
        self._current = None
        self._in_body = False
        queue = self._queue
        while self._head < len(queue):
            local = queue[self._head].local
            if local is None:
                break
            self._replace(at, at, local)
            self._head += 1

    def _status_line(self, data: bytes | bytearray, start: int, end: int) -> int:
        current = self._current
        assert current is not None
        rewrite = None if current.multiline or not self._positive else current.rewrite
        newline = data.find(b"\n", start, end)
        stop = end if newline < 0 else newline + 1
        if rewrite is not None:
            if not self._hold(data, start, stop, rewrite, newline >= 0):
                return stop
        elif newline < 0:
            return stop
        if self._positive and current.multiline:
            self._in_body = True
            self._matched = 1  # the status line's line end
        else:
            self._end_reply(stop)
        return stop

    def _body(self, data: bytes | bytearray, start: int, end: int) -> int:
        current = self._current
        assert current is not None
        if current.rewrite is not None:
            return self._body_lines(data, start, end, current.rewrite)
        matched = self._matched
        if matched:  # a terminator begun in an earlier read
            rest = TERMINATOR[matched:]
            stop = min(start + len(rest), end)
            if data[start:stop] == rest[: stop - start]:
                if stop - start == len(rest):
                    self._end_reply(stop)
                else:
                    self._matched = matched + stop - start
                return stop
        found = data.find(TERMINATOR, start, end)
        if found >= 0:
            self._end_reply(found + len(TERMINATOR))
            return found + len(TERMINATOR)
        self._matched = _terminator_prefix(data, start, end)
        return end

    def _body_lines(self, data: bytes | bytearray, start: int, end: int, rewrite: Rewrite) -> int:
        """The complete lines of this read at once (a listing of 10,000 UIDLs
        is a few reads); a line begun in an earlier read, the reply's end
        at a line start and a partial last line one by one."""
        if self._held or self._passing_line or data.startswith(b".\r\n", start):
            return self._body_line(data, start, end, rewrite)
        last = data.rfind(b"\n", start, end)
        if last < 0:
            return self._body_line(data, start, end, rewrite)
        found = data.find(TERMINATOR, start, last + 1)
        lines_end = last + 1 if found < 0 else found + 1
        block = bytes(data[start:lines_end])
        new = _rewrite_lines(block, rewrite)
        if new != block:
            self._replace(start, lines_end, new)
        if found < 0:
            return lines_end
        self._end_reply(found + len(TERMINATOR))
        return found + len(TERMINATOR)

    def _body_line(self, data: bytes | bytearray, start: int, end: int, rewrite: Rewrite) -> int:
        newline = data.find(b"\n", start, end)
        stop = end if newline < 0 else newline + 1
        if self._passing_line or len(self._held) + stop - start > MAX_HELD_LINE:
            return self._pass_long_line(start, stop, newline >= 0)
        if newline < 0:
            self._held += data[start:stop]
            self._replace(start, stop, b"")
            return stop
        line = bytes(self._held) + data[start:stop]
        if line == b".\r\n":
            if self._held:
                self._replace(start, stop, line)
                self._held.clear()
            self._end_reply(stop)
            return stop
        self._replace(start, stop, _rewrite_lines(line, rewrite))  # begun in an earlier read
        self._held.clear()
        return stop

    def _hold(
        self, data: bytes | bytearray, start: int, stop: int, rewrite: Rewrite, whole: bool
    ) -> bool:
        """Holds back a status line to rewrite; ``True`` once it went out whole."""
        if self._passing_line or len(self._held) + stop - start > MAX_HELD_LINE:
            self._pass_long_line(start, stop, whole)
            return whole
        if not whole:
            self._held += data[start:stop]
            self._replace(start, stop, b"")
            return False
        line = bytes(self._held) + data[start:stop]
        self._held.clear()
        content, line_end = _split_line_end(line)
        self._replace(start, stop, rewrite(content) + line_end)
        return True

    def _pass_long_line(self, start: int, stop: int, whole: bool) -> int:
        """A line too long to rewrite goes on as it came."""
        if self._held:
            self._replace(start, start, bytes(self._held))
            self._held.clear()
        self._passing_line = not whole
        return stop
