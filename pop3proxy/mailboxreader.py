"""Reading a mailbox on a backend for ``pop3proxy migrate``: UIDL, LIST, TOP n 0.

A small POP3 client on the standard library's :mod:`poplib`, with the TLS
settings of the tenant's backend entry (``tls: none|implicit|starttls``,
``verify``, ``ca_file``, ``server_name``) and its login command. It only
reads: the connection is closed without ``QUIT``, so the backend never
enters the UPDATE state and nothing can be deleted or changed.
"""

from __future__ import annotations

import base64
import hashlib
import poplib
import socket
import ssl
from typing import Any

from pop3proxy.migration import Message
from pop3proxy.tenants import Backend

MAX_LINE = 64 * 1024
"""Longest line read from a backend. poplib's own limit, 2048 bytes, is below
some real header lines (unfolded ones, long ``References:``): a mailbox with
one would fail to map."""
poplib._MAXLINE = max(poplib._MAXLINE, MAX_LINE)  # type: ignore[attr-defined]


class MailboxError(Exception):
    """The backend could not be read: connection, TLS, login or a command failed.
    The message never holds the password."""


def tls_context(backend: Backend) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=backend.ca_file)
    if not backend.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Client(poplib.POP3):
    """poplib's client with the backend's TLS name, implicit TLS, STLS, AUTH PLAIN.

    It extends poplib through its internal ``_create_socket`` and ``_shortcmd``
    (stable since Python 3.4, absent from typeshed's stubs): poplib's own
    ``stls`` and ``POP3_SSL`` would verify ``host``, not the entry's ``server_name``.
    """

    def __init__(self, backend: Backend, timeout: float) -> None:
        self.backend = backend
        self.server_name = backend.server_name or backend.host
        self.context = tls_context(backend) if backend.tls != "none" else None
        super().__init__(backend.host, backend.port, timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock: socket.socket = super()._create_socket(timeout)  # type: ignore[misc]
        if self.backend.tls == "implicit":
            assert self.context is not None
            sock = self.context.wrap_socket(sock, server_hostname=self.server_name)
        return sock

    def start_tls(self) -> None:
        assert self.context is not None
        self._shortcmd("STLS")  # type: ignore[attr-defined]
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.server_name)
        self.file = self.sock.makefile("rb")

    def auth_plain(self, login: str, password: bytes) -> None:
        token = base64.b64encode(b"\0" + login.encode() + b"\0" + password).decode()
        self._shortcmd(f"AUTH PLAIN {token}")  # type: ignore[attr-defined]


class Mailbox:
    """A logged-in, read-only connection to one backend's mailbox."""

    def __init__(self, backend: Backend, login: str, password: bytes, timeout: float) -> None:
        """Connect and log in; ``timeout`` bounds the connect and every reply."""
        self.address = backend.address
        try:
            self.client = _Client(backend, timeout)
        except (OSError, poplib.error_proto) as error:
            raise MailboxError(f"{backend.address}: cannot connect: {_reason(error)}") from None
        try:
            if backend.tls == "starttls":
                self.client.start_tls()
            if backend.login_command == "auth_plain":
                self.client.auth_plain(login, password)
            else:
                self.client.user(login)
                self.client.pass_(password.decode("utf-8", "surrogateescape"))
        except (OSError, poplib.error_proto) as error:
            self.close()
            raise MailboxError(f"{backend.address}: login failed: {_reason(error)}") from None

    def messages(self) -> list[Message]:
        """Every message: number, UIDL, size, and a digest of its headers."""
        try:
            uidls = dict(_pairs(self.client.uidl()[1]))
            sizes = {number: int(size) for number, size in _pairs(self.client.list()[1])}
            listing = []
            for number in sorted(sizes):
                if number not in uidls:
                    raise MailboxError(f"{self.address}: message {number} has no UIDL")
                headers = self.client.top(number, 0)[1]
                digest = hashlib.sha256(b"\r\n".join(headers)).digest()
                listing.append(Message(number, uidls[number], sizes[number], digest))
        except (OSError, poplib.error_proto, ValueError) as error:
            raise MailboxError(f"{self.address}: listing failed: {_reason(error)}") from None
        return listing

    def listing(self) -> list[tuple[bytes, int]]:
        """``(UIDL, size)`` of every message, in mailbox order: what a client sees."""
        try:
            uidls = dict(_pairs(self.client.uidl()[1]))
            sizes = {number: int(size) for number, size in _pairs(self.client.list()[1])}
        except (OSError, poplib.error_proto, ValueError) as error:
            raise MailboxError(f"{self.address}: listing failed: {_reason(error)}") from None
        return [(uidls.get(number, b""), sizes[number]) for number in sorted(sizes)]

    def close(self) -> None:
        """Close without QUIT: the backend never enters UPDATE."""
        client = self.client
        for closable in (getattr(client, "file", None), getattr(client, "sock", None)):
            if closable is not None:
                closable.close()

    def __enter__(self) -> Mailbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _pairs(lines: list[bytes]) -> list[tuple[int, Any]]:
    """``b"1 value"`` lines of a UIDL or LIST listing -> ``(1, b"value")``."""
    pairs = []
    for line in lines:
        number, _, value = line.partition(b" ")
        pairs.append((int(number), value.strip()))
    return pairs


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text[:200]
