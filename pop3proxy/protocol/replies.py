"""POP3 replies: status lines, multi-line bodies, response codes.

Response codes are the extended ones of RFC 2449 section 8 and RFC 3206, in
square brackets right after ``-ERR``. Clients that know them (most modern
ones) retry on ``SYS/TEMP`` and stop on ``AUTH``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

CRLF = b"\r\n"


class Code(StrEnum):
    """Extended response codes (RFC 2449 section 8, RFC 3206)."""

    AUTH = "AUTH"
    """The credentials are wrong (or the user or tenant does not exist)."""
    SYS_TEMP = "SYS/TEMP"
    """A temporary failure: try again later, maybe on another replica."""
    SYS_PERM = "SYS/PERM"
    """A failure that retrying will not fix."""
    IN_USE = "IN-USE"
    """The maildrop is locked by another session."""
    LOGIN_DELAY = "LOGIN-DELAY"
    """Logged in too recently or too often."""


def ok(text: str = "") -> bytes:
    return b"+OK " + text.encode() + CRLF if text else b"+OK" + CRLF


def err(text: str, code: Code | None = None) -> bytes:
    prefix = f"-ERR [{code}] " if code else "-ERR "
    return prefix.encode() + text.encode() + CRLF


def continuation(challenge: bytes = b"") -> bytes:
    """The SASL continuation line, ``+ `` and a base64 challenge (RFC 5034)."""
    return b"+ " + challenge + CRLF


def dot_stuff(line: bytes) -> bytes:
    """RFC 1939 section 3: a line starting with "." gets another "."."""
    return b"." + line if line.startswith(b".") else line


def multiline(first: bytes, lines: Iterable[bytes]) -> bytes:
    """A multi-line reply: status line, dot-stuffed lines, and the lone ".".

    ``first`` is a complete status line (CRLF included), e.g. ``ok("...")``.
    """
    body = b"".join(dot_stuff(line) + CRLF for line in lines)
    return first + body + b"." + CRLF


def unstuff(line: bytes) -> bytes | None:
    """Undo dot-stuffing of one line of a multi-line reply.

    Returns ``None`` for the terminating lone ".".
    """
    if line == b".":
        return None
    return line[1:] if line.startswith(b"..") else line


def response_code(line: bytes) -> str | None:
    """The response code of a status line, if any: ``-ERR [IN-USE] x`` -> ``IN-USE``."""
    for prefix in (b"-ERR [", b"+OK ["):
        if line.startswith(prefix):
            end = line.find(b"]", len(prefix))
            if end > 0:
                return line[len(prefix) : end].decode("ascii", "replace").upper()
    return None
