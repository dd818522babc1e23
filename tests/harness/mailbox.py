"""Deterministic fixture messages, and what a POP3 server must send for them.

The samples are chosen for the places a POP3 relay breaks: dot-stuffing, a
lone "." line, 8-bit bytes, very long lines, an empty body, and a message big
enough (5 MB) that it cannot fit in one read or one buffer. They are stored with
LF line endings, as Maildir files are.
"""

from __future__ import annotations

import base64
import functools
import hashlib

#: Size of the large sample message, in bytes.
BIG_MESSAGE_SIZE = 5 * 1024 * 1024

#: Readable names of :func:`sample_messages`, in the same order (for pytest ids).
SAMPLE_IDS = ("dot-stuffing", "lone-dot", "utf8-8bit", "long-lines", "empty-body", "5mb")

#: Lengths of the long lines. 998 is RFC 5322's limit; poplib refuses lines of
#: more than 2048 bytes (``poplib._MAXLINE``), so 2000 is the most it can read.
LONG_LINE_LENGTHS = (998, 1000, 1001, 2000)


def _headers(number: int, subject: str, extra: tuple[str, ...] = ()) -> bytes:
    lines = (
        "From: Sender <sender@example.org>",
        f"To: Recipient {number} <rcpt{number}@example.com>",
        f"Subject: {subject}",
        f"Date: Tue, 01 Oct 2024 12:{number:02d}:00 +0000",
        f"Message-ID: <sample-{number}@pop3proxy.test>",
        "MIME-Version: 1.0",
        *extra,
    )
    return "".join(f"{line}\n" for line in lines).encode("ascii") + b"\n"


def _dot_stuffing() -> bytes:
    body = (
        b".starts with one dot\n"
        b"..starts with two dots\n"
        b"...three dots\n"
        b". dot and space\n"
        b"middle . dot\n"
        b".\t\n"
        b"last line\n"
    )
    return _headers(1, "dot-stuffing") + body


def _lone_dot() -> bytes:
    body = b"A lone dot follows; a naive relay ends the message there.\n.\nAnd text after it.\n"
    return _headers(2, "lone dot") + body


def _utf8() -> bytes:
    extra = ("Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit")
    # Cyrillic on purpose: multi-byte UTF-8 from several scripts.
    body = "Grüße aus Köln, naïve café, smörgåsbord.\nЗдравствуйте. 日本語のテキスト. 📬\n"  # noqa: RUF001
    return _headers(3, "8-bit body", extra) + body.encode("utf-8")


def _long_lines() -> bytes:
    body = b"".join(
        bytes([ord("a") + i]) * length + b"\n" for i, length in enumerate(LONG_LINE_LENGTHS)
    )
    return _headers(4, "long lines") + body


def _empty_body() -> bytes:
    return _headers(5, "empty body")


def big_message(size_bytes: int, seed: bytes = b"pop3proxy") -> bytes:
    """A message of exactly ``size_bytes`` bytes with a base64-looking body.

    The body is SHAKE-256 output of ``seed`` in 76-character lines: the same
    bytes on every run and every Python version, and not compressible.
    """
    headers = _headers(
        6,
        f"big message ({size_bytes} bytes)",
        ("Content-Type: application/octet-stream", "Content-Transfer-Encoding: base64"),
    )
    if size_bytes < len(headers):
        raise ValueError(f"size_bytes must be at least {len(headers)} (the headers)")
    # base64.encodebytes yields 77-byte lines (76 + LF) for every 57 input bytes.
    raw = hashlib.shake_256(seed).digest((size_bytes // 77 + 1) * 57)
    body = base64.encodebytes(raw)[: size_bytes - len(headers)]
    if not body.endswith(b"\n"):
        body = body[:-1] + b"\n"
    return headers + body


@functools.cache
def _samples() -> tuple[bytes, ...]:
    return (
        _dot_stuffing(),
        _lone_dot(),
        _utf8(),
        _long_lines(),
        _empty_body(),
        big_message(BIG_MESSAGE_SIZE),
    )


def sample_messages() -> list[bytes]:
    """The six sample messages, in :data:`SAMPLE_IDS` order (a fresh list each call)."""
    return list(_samples())


def crlf(message: bytes) -> bytes:
    """``message`` with every bare LF turned into CRLF (existing CRLFs stay)."""
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def retr_lines(message: bytes) -> list[bytes]:
    """What ``poplib.POP3.retr()`` returns as lines for a stored ``message``.

    poplib splits on line ends and removes one leading "." from stuffed lines.
    """
    text = crlf(message)
    if text.endswith(b"\r\n"):
        text = text[:-2]
    return text.split(b"\r\n")


def retr_wire(message: bytes) -> bytes:
    """The exact bytes a POP3 server sends after "+OK ...\\r\\n" for RETR.

    CRLF line ends, a "." doubled at the start of any line that begins with
    one (RFC 1939 §3), a CRLF added if the message does not end with one, and
    the ".\\r\\n" terminator.
    """
    lines = retr_lines(message)
    stuffed = (b"." + line if line.startswith(b".") else line for line in lines)
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"
