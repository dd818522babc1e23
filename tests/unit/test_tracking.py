"""The reply tracker: where each backend reply ends, however the bytes are cut.

A tracker that ends a reply too early or too late puts a refusal in the
middle of a message or rewrites a message body as if it were a UIDL listing,
so every test here feeds replies split at every byte, or at points
Hypothesis chooses, and checks the exact bytes the client would get.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3proxy.protocol import replies
from pop3proxy.protocol.tracking import (
    MAX_HELD_LINE,
    ReplyTracker,
    command_of,
    is_multiline,
)
from pop3proxy.protocol.uidl import UidlRewriter

REFUSAL = b"-ERR [SYS/TEMP] no\r\n"
MAP = {b"new1": b"old1", b"new2": b"old2", b"new3": b"old3"}


def feed_in_pieces(tracker: ReplyTracker, data: bytes, cuts: list[int]) -> bytes:
    """Feed ``data`` cut at ``cuts``; what the client gets."""
    out = b""
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        if start < cut:
            out += bytes(tracker.feed(data[start:cut]))
            start = cut
    return out


STALE = b"\n.\r\n+OK 1 new1\r\n" * 64
"""What a reused read buffer holds past the bytes of the current read."""


def feed_through_buffer(tracker: ReplyTracker, data: bytes, cuts: list[int]) -> bytes:
    """As :func:`feed_in_pieces`, each piece read into one reused buffer the way
    the relay reads (a shared bytearray with an earlier read's bytes after it)."""
    buffer = bytearray(STALE + b"\0" * len(data))
    out = b""
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        if start < cut <= len(data):
            buffer[: cut - start] = data[start:cut]
            out += bytes(tracker.feed(buffer, cut - start))
            start = cut
    return out


def every_split(data: bytes) -> list[list[int]]:
    """Each cut into two, and the cut into single bytes."""
    return [[cut] for cut in range(1, len(data))] + [list(range(1, len(data)))]


# -- which replies are multi-line ------------------------------------------------


@pytest.mark.parametrize(
    ("line", "name", "has_argument", "multiline"),
    [
        (b"RETR 1", b"RETR", True, True),
        (b"top 1 0", b"TOP", True, True),
        (b"LIST", b"LIST", False, True),
        (b"LIST 2", b"LIST", True, False),
        (b"LIST ", b"LIST", False, True),
        (b"uidl", b"UIDL", False, True),
        (b"UIDL 3", b"UIDL", True, False),
        (b"CAPA", b"CAPA", False, True),
        (b"LANG", b"LANG", False, True),
        (b"LANG fr", b"LANG", True, False),
        (b"AUTH", b"AUTH", False, True),
        (b"STAT", b"STAT", False, False),
        (b"DELE 1", b"DELE", True, False),
        (b"NOOP", b"NOOP", False, False),
        (b"X-POP3PROXY-LINE-TOO-LONG", b"X-POP3PROXY-LINE-TOO-LONG", False, False),
        (b"QUIT\r\n", b"QUIT", False, False),
    ],
)
def test_command_kinds(line: bytes, name: bytes, has_argument: bool, multiline: bool) -> None:
    assert command_of(line) == (name, has_argument)
    assert is_multiline(name, has_argument) is multiline


# -- boundaries -------------------------------------------------------------------------

RETR_REPLY = replies.multiline(
    replies.ok("120 octets"),
    [b"Subject: x", b"", b".", b"..", b". not the end", b".\r", b"body\r"],
)


@pytest.mark.parametrize("cuts", every_split(RETR_REPLY + b"+OK 2 0\r\n"))
def test_retr_then_stat_split_at_every_byte(cuts: list[int]) -> None:
    tracker = ReplyTracker()
    tracker.expect(b"RETR", True)
    tracker.expect(b"STAT", False)
    assert tracker.insert(REFUSAL) == b""
    data = RETR_REPLY + b"+OK 2 0\r\n"
    out = feed_in_pieces(tracker, data, cuts)
    assert out == data + REFUSAL
    assert tracker.idle


@pytest.mark.parametrize("cuts", every_split(RETR_REPLY))
def test_refusal_waits_for_the_whole_message(cuts: list[int]) -> None:
    tracker = ReplyTracker()
    tracker.expect(b"RETR", True)
    assert tracker.insert(REFUSAL) == b""
    sent = b""
    start = 0
    for cut in [*cuts, len(RETR_REPLY)]:
        sent += bytes(tracker.feed(RETR_REPLY[start:cut]))
        start = cut
        if cut < len(RETR_REPLY):
            assert REFUSAL not in sent
            assert not tracker.idle
    assert sent == RETR_REPLY + REFUSAL


def test_err_to_a_multiline_command_is_one_line() -> None:
    tracker = ReplyTracker()
    tracker.expect(b"RETR", True)
    tracker.expect(b"LIST", False)
    tracker.insert(REFUSAL)
    data = b"-ERR There's no message 9.\r\n+OK\r\n1 10\r\n.\r\n"
    assert feed_in_pieces(tracker, data, []) == data + REFUSAL
    assert tracker.idle


def test_insert_when_idle_goes_at_once() -> None:
    tracker = ReplyTracker()
    assert tracker.idle
    assert tracker.insert(REFUSAL) == REFUSAL
    tracker.expect(b"NOOP", False)
    assert not tracker.idle
    assert tracker.insert(REFUSAL) == b""
    assert tracker.feed(b"+OK\r\n") == b"+OK\r\n" + REFUSAL


def test_refusals_in_a_row_keep_their_places() -> None:
    tracker = ReplyTracker()
    tracker.expect(b"LIST", False)
    tracker.insert(b"-ERR a\r\n")
    tracker.expect(b"NOOP", False)
    tracker.insert(b"-ERR b\r\n")
    tracker.insert(b"-ERR c\r\n")
    out = bytes(tracker.feed(b"+OK\r\n.\r\n+OK\r\n"))
    assert out == b"+OK\r\n.\r\n-ERR a\r\n+OK\r\n-ERR b\r\n-ERR c\r\n"


def test_an_empty_listing_ends_at_once() -> None:
    tracker = ReplyTracker()
    tracker.expect(b"UIDL", False)
    tracker.insert(REFUSAL)
    assert bytes(tracker.feed(b"+OK\r\n.\r\n")) == b"+OK\r\n.\r\n" + REFUSAL


def test_a_lone_dot_ended_by_a_bare_lf_does_not_end_the_reply() -> None:
    tracker = ReplyTracker()
    tracker.expect(b"RETR", True)
    tracker.insert(REFUSAL)
    assert bytes(tracker.feed(b"+OK\r\nx\n.\nmore\r\n")).endswith(b"more\r\n")
    assert not tracker.idle
    assert bytes(tracker.feed(b".\r\n")) == b".\r\n" + REFUSAL


def test_unchanged_bytes_are_not_copied() -> None:
    tracker = ReplyTracker()
    tracker.expect(b"RETR", True)
    buffer = bytearray(b"+OK\r\nbody\r\n.\r\nrubbish after the end")
    out = tracker.feed(buffer, 14)
    assert isinstance(out, memoryview)
    assert out.obj is buffer
    assert bytes(out) == b"+OK\r\nbody\r\n.\r\n"
    assert tracker.idle


def test_bytes_nobody_asked_for_pass_and_do_not_take_a_reply() -> None:
    tracker = ReplyTracker()
    assert bytes(tracker.feed(b"* unsolicited")) == b"* unsolicited"
    tracker.expect(b"NOOP", False)
    assert not tracker.idle
    tracker.insert(REFUSAL)
    assert bytes(tracker.feed(b"\r\n")) == b"\r\n"  # the unsolicited line ends
    assert bytes(tracker.feed(b"+OK\r\n")) == b"+OK\r\n" + REFUSAL


def test_a_two_gigabyte_message_is_never_held() -> None:
    """Constant memory: every chunk comes back as it went in, at once."""
    tracker = ReplyTracker()
    tracker.expect(b"RETR", True)
    chunk = bytearray(b"x" * 65534 + b"\r\n")
    assert bytes(tracker.feed(b"+OK\r\n")) == b"+OK\r\n"
    for _ in range(2 * 1024**3 // len(chunk) // 256):  # a sample: each is the same work
        out = tracker.feed(chunk)
        assert isinstance(out, memoryview) and len(out) == len(chunk)
    assert not tracker.idle
    assert bytes(tracker.feed(b".\r\n")) == b".\r\n"
    assert tracker.idle


# -- rewriting -------------------------------------------------------------------------

UIDL_LISTING = b"+OK\r\n1 new1\r\n2 fresh\r\n3 new3\r\n.\r\n"
UIDL_REWRITTEN = b"+OK\r\n1 old1\r\n2 fresh\r\n3 old3\r\n.\r\n"


@pytest.mark.parametrize("cuts", every_split(UIDL_LISTING + b"+OK 2 new2\r\n"))
def test_uidl_rewritten_split_at_every_byte(cuts: list[int]) -> None:
    rewriter = UidlRewriter(MAP)
    tracker = ReplyTracker()
    tracker.expect(b"UIDL", False, rewriter)
    tracker.expect(b"UIDL", True, rewriter)
    tracker.insert(REFUSAL)
    out = feed_in_pieces(tracker, UIDL_LISTING + b"+OK 2 new2\r\n", cuts)
    assert out == UIDL_REWRITTEN + b"+OK 2 old2\r\n" + REFUSAL
    assert rewriter.translated == 3
    assert tracker.idle


def test_only_the_chosen_replies_are_rewritten() -> None:
    """A message body and a LIST that look like UIDL lines pass as they are."""
    rewriter = UidlRewriter(MAP)
    tracker = ReplyTracker()
    tracker.expect(b"RETR", True)
    tracker.expect(b"UIDL", True, rewriter)
    tracker.expect(b"LIST", False)
    tracker.expect(b"UIDL", False, rewriter)
    data = (
        b"+OK\r\n1 new1\r\n.\r\n"
        b"-ERR no such message new1\r\n"
        b"+OK\r\n1 new1\r\n.\r\n"
        b"+OK\r\n..x new2\r\n.\r\n"
    )
    out = feed_in_pieces(tracker, data, [])
    assert out == (
        b"+OK\r\n1 new1\r\n.\r\n"
        b"-ERR no such message new1\r\n"
        b"+OK\r\n1 new1\r\n.\r\n"
        b"+OK\r\n..x old2\r\n.\r\n"
    )


def test_a_uidl_outside_the_map_is_unchanged_and_not_copied() -> None:
    tracker = ReplyTracker()
    tracker.expect(b"UIDL", True, UidlRewriter(MAP))
    data = bytearray(b"+OK 4 brand-new\r\n")
    out = tracker.feed(data)
    assert bytes(out) == bytes(data)


def test_a_damaged_map_value_is_not_used() -> None:
    rewriter = UidlRewriter({b"new1": b"old\r\n1", b"new2": b"", b"new3": b"x" * 71})
    for line in (b"1 new1", b"2 new2", b"3 new3", b"nospace"):
        assert rewriter(line) == line
    assert rewriter.translated == 0


def test_a_line_too_long_to_hold_passes_unchanged() -> None:
    long_uidl = b"n" * MAX_HELD_LINE
    tracker = ReplyTracker()
    tracker.expect(b"UIDL", False, UidlRewriter({long_uidl: b"old"}))
    tracker.expect(b"UIDL", True, UidlRewriter({long_uidl: b"old"}))
    data = b"+OK\r\n1 " + long_uidl + b"\r\n2 new1\r\n.\r\n+OK 1 " + long_uidl + b"\r\n"
    for cuts in ([], [7, 9, 600], list(range(1, len(data), 97))):
        tracker = ReplyTracker()
        rewriter = UidlRewriter({long_uidl: b"old", b"new1": b"old1"})
        tracker.expect(b"UIDL", False, rewriter)
        tracker.expect(b"UIDL", True, rewriter)
        tracker.insert(REFUSAL)
        assert feed_in_pieces(tracker, data, cuts) == data.replace(b"new1", b"old1") + REFUSAL


# -- pipelined sequences, any cut ---------------------------------------------------


@dataclass
class Exchange:
    name: bytes
    has_argument: bool
    reply: bytes
    """What the backend sends."""
    expected: bytes
    """What the client must get."""
    refused: bool = False


line_text = st.lists(
    st.sampled_from([b"a", b".", b" ", b"1", b"\r", b"new1", b"new2", b"+OK", b"-ERR"]),
    max_size=6,
).map(b"".join)


@st.composite
def exchanges(draw: st.DrawFn) -> Exchange:
    rewriter = UidlRewriter(MAP)
    if draw(st.integers(0, 9)) == 0:
        return Exchange(b"RETR", True, b"", REFUSAL, refused=True)
    name, has_argument = draw(
        st.sampled_from(
            [
                (b"RETR", True),
                (b"TOP", True),
                (b"LIST", False),
                (b"LIST", True),
                (b"UIDL", False),
                (b"UIDL", True),
                (b"CAPA", False),
                (b"STAT", False),
                (b"DELE", True),
                (b"XUNKNOWN", False),
            ]
        )
    )
    if not draw(st.booleans()):
        reply = b"-ERR " + draw(line_text).replace(b"\r", b"") + b"\r\n"
        return Exchange(name, has_argument, reply, reply)
    if is_multiline(name, has_argument):
        lines = draw(st.lists(line_text, max_size=5))
        if name == b"UIDL":
            lines = [
                b"%d %s" % (n, uidl)
                for n, uidl in enumerate(
                    draw(st.lists(st.sampled_from([b"new1", b"new2", b"other"]), max_size=4))
                )
            ]
            expected = replies.multiline(b"+OK\r\n", [rewriter(line) for line in lines])
        reply = replies.multiline(b"+OK\r\n", lines)
        return Exchange(name, has_argument, reply, expected if name == b"UIDL" else reply)
    if name == b"UIDL":
        uidl = draw(st.sampled_from([b"new1", b"new3", b"other"]))
        return Exchange(
            name, True, b"+OK 1 " + uidl + b"\r\n", rewriter(b"+OK 1 " + uidl) + b"\r\n"
        )
    reply = b"+OK " + draw(line_text).replace(b"\r", b"") + b"\r\n"
    return Exchange(name, has_argument, reply, reply)


@given(st.lists(exchanges(), max_size=12), st.data())
def test_pipelined_sequences_cut_anywhere(sequence: list[Exchange], data: st.DataObject) -> None:
    """The client gets every reply (rewritten where asked) and every refusal,
    in command order, wherever the backend's bytes are cut."""
    tracker = ReplyTracker()
    rewriter = UidlRewriter(MAP)
    sent_now = b""
    for exchange in sequence:
        if exchange.refused:
            sent_now += tracker.insert(REFUSAL)
        else:
            rewrite = rewriter if exchange.name == b"UIDL" else None
            tracker.expect(exchange.name, exchange.has_argument, rewrite)
    backend = b"".join(exchange.reply for exchange in sequence)
    cuts = data.draw(st.lists(st.integers(1, max(len(backend) - 1, 1)), max_size=20))
    feed = feed_through_buffer if data.draw(st.booleans()) else feed_in_pieces
    out = sent_now + feed(tracker, backend, cuts)
    assert out == b"".join(exchange.expected for exchange in sequence)
    assert tracker.idle


@given(st.lists(exchanges(), min_size=1, max_size=6))
def test_pipelined_sequences_cut_at_every_byte(sequence: list[Exchange]) -> None:
    tracker = ReplyTracker()
    rewriter = UidlRewriter(MAP)
    sent_now = b""
    for exchange in sequence:
        if exchange.refused:
            sent_now += tracker.insert(REFUSAL)
        else:
            tracker.expect(
                exchange.name, exchange.has_argument, rewriter if exchange.name == b"UIDL" else None
            )
    backend = b"".join(exchange.reply for exchange in sequence)
    out = sent_now + feed_through_buffer(tracker, backend, list(range(1, len(backend))))
    assert out == b"".join(exchange.expected for exchange in sequence)
    assert tracker.idle


body_lines = st.lists(
    st.tuples(
        st.one_of(
            st.lists(st.sampled_from([b"a", b".", b" "]), max_size=5).map(b"".join),
            st.integers(MAX_HELD_LINE - 6, MAX_HELD_LINE + 2).map(lambda size: b"a" * size),
        ),
        st.sampled_from([b"\r\n", b"\n"]),
    ),
    max_size=8,
)


@given(body_lines, st.data())
def test_every_body_line_rewritten_the_same_however_cut(
    lines: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    """Dot-stuffed lines, bare LFs and lines about as long as the tracker
    holds: each comes out as the model says, wherever the reads end."""
    wire = b"+OK\r\n" + b"".join(replies.dot_stuff(raw) + end for raw, end in lines) + b".\r\n"
    expected = b"+OK\r\n"
    for raw, end in lines:
        stuffed = replies.dot_stuff(raw)
        too_long = len(stuffed) + len(end) > MAX_HELD_LINE
        expected += (stuffed if too_long else replies.dot_stuff(raw + b"!")) + end
    expected += b".\r\n"
    cuts = data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=10))
    tracker = ReplyTracker()
    tracker.expect(b"UIDL", False, lambda line: line + b"!")
    tracker.insert(REFUSAL)
    assert feed_through_buffer(tracker, wire, cuts) == expected + REFUSAL
    assert tracker.idle


EDGES = [
    # (commands, backend bytes, what the client gets); each with a refusal queued last
    (
        [(b"STAT", False), (b"LIST", False), (b"NOOP", False)],
        b"+OK 1 2\r\n+OK\r\n.\r\n+OK\r\n",
        b"+OK 1 2\r\n+OK\r\n.\r\n+OK\r\n",
    ),
    (  # an empty line ended by a bare LF right before the end
        [(b"UIDL", False)],
        b"+OK\r\n1 new1\r\n\n.\r\n",
        b"+OK\r\n1 old1\r\n\n.\r\n",
    ),
    (  # a lone "." ended by a bare LF is a line like any other
        [(b"UIDL", False)],
        b"+OK\r\n.\n1 new1\r\n.\r\n",
        b"+OK\r\n.\n1 old1\r\n.\r\n",
    ),
    (  # UIDL n after a reply longer than a held line, in the same read
        [(b"RETR", True), (b"UIDL", True)],
        b"+OK\r\n" + b"x" * (2 * MAX_HELD_LINE) + b"\r\n.\r\n+OK 2 new2\r\n",
        b"+OK\r\n" + b"x" * (2 * MAX_HELD_LINE) + b"\r\n.\r\n+OK 2 old2\r\n",
    ),
]


@pytest.mark.parametrize(("commands", "backend", "expected"), EDGES)
def test_edges_split_at_every_byte(
    commands: list[tuple[bytes, bool]], backend: bytes, expected: bytes
) -> None:
    splits = every_split(backend) if len(backend) < 200 else [[], list(range(1, len(backend), 7))]
    for cuts in [[], *splits]:
        rewriter = UidlRewriter(MAP)
        tracker = ReplyTracker()
        for name, has_argument in commands:
            tracker.expect(name, has_argument, rewriter if name == b"UIDL" else None)
        tracker.insert(REFUSAL)
        assert feed_through_buffer(tracker, backend, cuts) == expected + REFUSAL, cuts
        assert tracker.idle


def test_a_long_line_in_a_rewritten_reply_streams_and_is_left_whole() -> None:
    """Past :data:`MAX_HELD_LINE` a line goes on at once, and its rest is not
    taken for a line of its own (which the rewrite would change)."""
    tracker = ReplyTracker()
    tracker.expect(b"UIDL", False, lambda line: line + b"!")
    out = bytes(tracker.feed(b"+OK\r\n1 " + b"n" * 100))
    assert out == b"+OK\r\n"  # a line to rewrite waits for its end...
    for _ in range(MAX_HELD_LINE // 100 + 1):  # past the limit, and a little more
        out += bytes(tracker.feed(b"n" * 100))
    assert len(out) > MAX_HELD_LINE  # ...but not past the limit
    out += bytes(tracker.feed(b"n" * 50 + b"\r\n2 b\r\n.\r\n"))
    assert out.endswith(b"n" * 150 + b"\r\n2 b!\r\n.\r\n")
    assert b"!" not in out[: -len(b"\r\n2 b!\r\n.\r\n")]
    assert tracker.idle


def test_replies_after_a_rewritten_listing_in_the_same_read_are_left_alone() -> None:
    """The listing ends at its own end, not at a later reply's."""
    rewriter = UidlRewriter(MAP)
    backend = (
        b"+OK\r\n1 new1\r\n.\r\n"  # UIDL
        b"+OK\r\n1 new1\r\n.\r\n"  # LIST (a size that looks like a UIDL)
        b"+OK\r\n2 new2\r\n.\r\n"  # RETR 1
    )
    for cuts in [[], *every_split(backend)]:
        tracker = ReplyTracker()
        tracker.expect(b"UIDL", False, rewriter)
        tracker.expect(b"LIST", False)
        tracker.expect(b"RETR", True)
        assert feed_through_buffer(tracker, backend, cuts) == backend.replace(
            b"new1", b"old1", 1
        ), cuts


@pytest.mark.parametrize("extra", [0, 1])
def test_a_uidl_status_line_is_held_up_to_the_limit_exactly(extra: int) -> None:
    uidl = b"u" * (MAX_HELD_LINE - len(b"+OK 1 \r\n") + extra)
    line = b"+OK 1 " + uidl + b"\r\n"
    tracker = ReplyTracker()
    tracker.expect(b"UIDL", True, UidlRewriter({uidl: b"old"}))
    out = feed_through_buffer(tracker, line, [3, 700])
    assert out == (line if extra else b"+OK 1 old\r\n")


def test_after_a_line_too_long_to_hold_the_next_is_rewritten_again() -> None:
    rewriter = UidlRewriter({b"new1": b"old1", b"new2": b"old2"})
    long_line = b"1 " + b"n" * (MAX_HELD_LINE + 10) + b"\r\n"
    listing = b"+OK\r\n" + long_line + b"2 new2\r\n.\r\n"
    before_lf = listing.index(b"\n2 new2")
    for cuts in ([before_lf], [100, before_lf], [100, before_lf + 1]):
        tracker = ReplyTracker()
        tracker.expect(b"UIDL", False, rewriter)
        assert feed_through_buffer(tracker, listing, cuts) == listing.replace(b"new2", b"old2")
    status = b"+OK 1 " + b"n" * (MAX_HELD_LINE + 10) + b"\r\n"
    tracker = ReplyTracker()
    tracker.expect(b"UIDL", True, rewriter)
    tracker.expect(b"UIDL", True, rewriter)
    out = feed_through_buffer(tracker, status + b"+OK 2 new2\r\n", [100, len(status) + 3])
    assert out == status + b"+OK 2 old2\r\n"
