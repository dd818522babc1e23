"""LineReader: CRLF splitting, length caps, leftovers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3proxy.protocol.framing import LINE_TOO_LONG, LineReader


def drain(reader: LineReader) -> list[object]:
    out: list[object] = []
    while (line := reader.next_line()) is not None:
        out.append(line)
    return out


def feed_all(reader: LineReader, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        reader.feed(chunk)
        out += drain(reader)
    return out


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


STREAM = b"USER alice\r\nPASS s3cret pass\nSTAT\r\n\r\nLIST 1\r\n"
EXPECTED = [b"USER alice", b"PASS s3cret pass", b"STAT", b"", b"LIST 1"]


@pytest.mark.parametrize(
    "chunks",
    [
        [STREAM],
        bytewise(STREAM),
        [STREAM[:5], STREAM[5:11], STREAM[11:12], STREAM[12:]],  # split inside CRLF
    ],
    ids=["whole", "bytewise", "split-crlf"],
)
def test_crlf_and_bare_lf_in_any_chunking(chunks: list[bytes]) -> None:
    reader = LineReader(64)
    assert feed_all(reader, chunks) == EXPECTED
    assert reader.buffered == 0


@pytest.mark.parametrize("chunked", [False, True])
def test_trailing_partial_line_stays_buffered(chunked: bool) -> None:
    reader = LineReader(64)
    data = b"NOOP\r\nRETR 1\r\nPARTIAL"
    lines = feed_all(reader, bytewise(data) if chunked else [data])
    assert lines == [b"NOOP", b"RETR 1"]
    assert reader.buffered == len(b"PARTIAL")
    reader.feed(b" LINE\r\n")
    assert drain(reader) == [b"PARTIAL LINE"]


def test_only_one_trailing_cr_is_stripped() -> None:
    reader = LineReader(64)
    reader.feed(b"A\r\r\nB\rC\n")
    assert drain(reader) == [b"A\r", b"B\rC"]


def test_line_exactly_at_the_cap_is_accepted_in_any_chunking() -> None:
    line = b"x" * 8 + b"\r\n"  # 10 octets, CRLF included
    for chunks in ([line], bytewise(line)):
        reader = LineReader(10)
        assert feed_all(reader, chunks) == [b"x" * 8]


@pytest.mark.parametrize("chunked", [False, True])
def test_overlong_line_with_crlf_reported_once_then_next_line_ok(chunked: bool) -> None:
    data = b"y" * 9 + b"\r\n" + b"NEXT\r\n"  # 11 octets > cap of 10
    reader = LineReader(10)
    lines = feed_all(reader, bytewise(data) if chunked else [data])
    assert lines == [LINE_TOO_LONG, b"NEXT"]


def test_overlong_line_without_newline_reported_once_and_bounded() -> None:
    reader = LineReader(100)
    results: list[object] = []
    for _ in range(16):
        reader.feed(b"z" * 65536)  # 1 MiB in all, no newline
        results += drain(reader)
        assert reader.buffered <= reader.max_line
    assert results == [LINE_TOO_LONG]
    reader.feed(b"tail of the long line\r\nQUIT\r\n")
    assert drain(reader) == [b"QUIT"]


def test_one_megabyte_in_one_feed_is_dropped_after_processing() -> None:
    reader = LineReader(2048)
    reader.feed(b"a" * (1 << 20))
    assert drain(reader) == [LINE_TOO_LONG]
    assert reader.buffered <= reader.max_line


def test_overlong_bytewise_without_newline_is_reported_once() -> None:
    reader = LineReader(10)
    results = feed_all(reader, bytewise(b"q" * 100))
    assert results == [LINE_TOO_LONG]
    assert reader.buffered <= 10


def test_take_hands_over_everything_after_the_complete_lines() -> None:
    reader = LineReader(64)
    reader.feed(b"+OK logged in\r\n+OK 2 messages\r\npartial")
    assert reader.next_line() == b"+OK logged in"
    assert reader.take() == b"+OK 2 messages\r\npartial"
    assert reader.buffered == 0
    assert reader.next_line() is None


def test_discard_drops_buffered_bytes_and_skipping_state() -> None:
    reader = LineReader(10)
    reader.feed(b"w" * 20)
    assert reader.next_line() is LINE_TOO_LONG  # now skipping to the next LF
    reader.feed(b"more")
    assert reader.discard() == 4
    assert reader.buffered == 0
    # A fresh line after discard is not eaten as the tail of the long one.
    reader.feed(b"CAPA\r\n")
    assert drain(reader) == [b"CAPA"]


def test_discard_returns_the_number_of_dropped_bytes() -> None:
    reader = LineReader(64)
    reader.feed(b"CAPA\r\nUSER x\r\n")
    assert reader.discard() == 14
    assert reader.next_line() is None


def test_eof_feed_is_a_noop() -> None:
    reader = LineReader(64)
    reader.feed(b"AB")
    reader.feed(b"")
    assert reader.next_line() is None
    assert reader.buffered == 2


def test_max_line_too_small_is_refused() -> None:
    with pytest.raises(ValueError):
        LineReader(2)


def _reference(data: bytes, max_line: int) -> list[object]:
    """What any chunking must produce: split at LF, cap on the octets with LF."""
    out: list[object] = []
    pieces = data.split(b"\n")
    for piece in pieces[:-1]:
        if len(piece) + 1 > max_line:
            out.append(LINE_TOO_LONG)
        else:
            out.append(piece[:-1] if piece.endswith(b"\r") else piece)
    if len(pieces[-1]) >= max_line:
        out.append(LINE_TOO_LONG)
    return out


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=400),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    max_line=st.integers(min_value=3, max_value=40),
)
def test_any_chunking_gives_the_same_lines_and_stays_bounded(
    data: bytes, cuts: list[int], max_line: int
) -> None:
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    reader = LineReader(max_line)
    out: list[object] = []
    for chunk in chunks:
        reader.feed(chunk)
        out += drain(reader)
        assert reader.buffered < max_line
    assert out == _reference(data, max_line)
    for line in out:
        assert line is LINE_TOO_LONG or (isinstance(line, bytes) and b"\n" not in line)


# -- the relay's fast path and the exact cap --------------------------------


@pytest.mark.parametrize("line", [b"STAT\r\n", b"RETR 1\r\n", b"\r\n", b"x" * 8 + b"\r\n"])
def test_whole_line_takes_one_crlf_line_within_the_cap(line: bytes) -> None:
    reader = LineReader(10)
    assert reader.whole_line(line) == line
    assert reader.whole_line(memoryview(line)) == line
    assert reader.buffered == 0


@pytest.mark.parametrize(
    "data",
    [
        b"x" * 9 + b"\r\n",  # one octet over the cap of 10
        b"STAT\n",  # a bare LF: left to the line splitter
        b"\n",
        b"STAT",  # no line end yet
        b"STAT\r",
        b"A\nB\r\n",  # two lines
        b"A\r\nB\r\n",
        b"A\r\nB",  # a line and the start of the next
        b"",
    ],
)
def test_whole_line_leaves_anything_else_to_feed(data: bytes) -> None:
    reader = LineReader(10)
    assert reader.whole_line(data) is None
    assert reader.buffered == 0


def test_whole_line_never_jumps_buffered_bytes() -> None:
    """Bytes waiting in the buffer come first: a whole line after them is part
    of the line they start."""
    reader = LineReader(64)
    reader.feed(b"RETR")
    assert reader.whole_line(b" 1\r\n") is None
    reader.feed(b" 1\r\n")
    assert drain(reader) == [b"RETR 1"]


def test_whole_line_waits_while_an_overlong_line_is_skipped() -> None:
    reader = LineReader(10)
    reader.feed(b"y" * 20)
    assert drain(reader) == [LINE_TOO_LONG]
    assert reader.buffered == 0
    # The rest of the long line ends in CRLF: it is not a command of its own.
    assert reader.whole_line(b"tail\r\n") is None
    reader.feed(b"tail\r\n")
    assert drain(reader) == []
    assert reader.whole_line(b"NEXT\r\n") == b"NEXT\r\n"


@pytest.mark.parametrize("max_line", [10, 255, 2048])
def test_the_cap_counts_the_crlf_on_every_path(max_line: int) -> None:
    """A line of exactly ``max_line`` octets, CRLF included, is a line; one octet
    more is too long: in the fast path, in one feed, and after a skipped line."""
    at_cap = b"a" * (max_line - 2) + b"\r\n"
    over = b"b" * (max_line - 1) + b"\r\n"
    reader = LineReader(max_line)
    assert reader.whole_line(at_cap) == at_cap
    assert reader.whole_line(over) is None
    reader.feed(at_cap + over + at_cap)
    assert drain(reader) == [at_cap[:-2], LINE_TOO_LONG, at_cap[:-2]]
    reader.feed(over + at_cap)  # over first
    assert drain(reader) == [LINE_TOO_LONG, at_cap[:-2]]


def test_lines_right_after_a_skipped_line_are_kept_whole() -> None:
    """The end of an overlong line that never fit the buffer: the lines after
    it, empty or exactly at the cap, are lines like any other."""
    at_cap = b"a" * 8 + b"\r\n"
    reader = LineReader(10)
    reader.feed(b"z" * 30)
    assert drain(reader) == [LINE_TOO_LONG]
    reader.feed(b"end of z\n" + at_cap + b"A\r\n")
    assert drain(reader) == [at_cap[:-2], b"A"]
    reader.feed(b"z" * 30)
    assert drain(reader) == [LINE_TOO_LONG]
    reader.feed(b"end of z\n\nB\nC")
    assert drain(reader) == [b"", b"B"]
    assert reader.buffered == 1


def test_a_lone_lf_is_an_empty_line() -> None:
    reader = LineReader(10)
    reader.feed(b"\n")
    assert drain(reader) == [b""]
    assert reader.buffered == 0


def test_the_sentinel_names_itself() -> None:
    assert repr(LINE_TOO_LONG) == "LINE_TOO_LONG"


def test_max_line_too_small_says_why() -> None:
    with pytest.raises(ValueError, match=r"^max_line must leave room for a command and CRLF$"):
        LineReader(2)
    assert LineReader(3).max_line == 3
