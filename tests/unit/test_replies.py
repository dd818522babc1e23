"""replies: status lines, multi-line bodies with dot-stuffing, response codes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3proxy.protocol import replies
from pop3proxy.protocol.replies import Code


def test_status_lines() -> None:
    assert replies.ok() == b"+OK\r\n"
    assert replies.ok("Bye") == b"+OK Bye\r\n"
    assert replies.err("No") == b"-ERR No\r\n"
    assert replies.err("No", Code.IN_USE) == b"-ERR [IN-USE] No\r\n"
    assert replies.continuation() == b"+ \r\n"


def test_a_body_line_starting_with_a_dot_is_stuffed() -> None:
    """RFC 1939 section 3: a line beginning with "." gets one more, so a line
    holding a lone "." cannot end the reply early."""
    body = replies.multiline(replies.ok("Follows"), [b".", b".hidden", b"plain", b"a.b", b""])
    assert body == b"+OK Follows\r\n..\r\n..hidden\r\nplain\r\na.b\r\n\r\n.\r\n"


def test_an_empty_body_is_the_status_line_and_the_dot() -> None:
    assert replies.multiline(replies.ok(), []) == b"+OK\r\n.\r\n"


@pytest.mark.parametrize(
    ("received", "line"),
    [(b"..", b"."), (b"...x", b"..x"), (b"..hidden", b".hidden"), (b"plain", b"plain"), (b"", b"")],
)
def test_unstuff_takes_one_dot_away(received: bytes, line: bytes) -> None:
    assert replies.unstuff(received) == line


def test_unstuff_sees_the_end_of_the_reply() -> None:
    assert replies.unstuff(b".") is None


@given(st.lists(st.binary().filter(lambda line: b"\r" not in line and b"\n" not in line)))
def test_unstuff_undoes_the_stuffing_of_any_body(lines: list[bytes]) -> None:
    received = replies.multiline(b"+OK\r\n", lines).split(b"\r\n")[1:-1]
    assert [replies.unstuff(line) for line in received] == [*lines, None]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"-ERR [IN-USE] Mailbox is locked", "IN-USE"),
        (b"-ERR [in-use] Mailbox is locked", "IN-USE"),
        (b"+OK [XCLIENT] Dovecot ready.", "XCLIENT"),
        (b"-ERR [SYS/TEMP]", "SYS/TEMP"),
        # The code is the first bracket only: text after it may hold more brackets.
        (b"-ERR [IN-USE] Mailbox [INBOX] is locked", "IN-USE"),
        (b"-ERR [AUTH] bad [x]", "AUTH"),
        (b"-ERR []", ""),
        (b"-ERR [\xffX] garbage from a backend", "\ufffdX"),
    ],
)
def test_response_code(line: bytes, code: str) -> None:
    assert replies.response_code(line) == code


@pytest.mark.parametrize(
    "line",
    [
        b"-ERR Mailbox is locked",
        b"-ERR [IN-USE without its bracket",
        b"-ERR  [IN-USE] not right after the status",
        b"+OK",
        b"[IN-USE]",
        b"",
    ],
)
def test_no_response_code(line: bytes) -> None:
    assert replies.response_code(line) is None
