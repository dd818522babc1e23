"""A raw POP3 client for tests that must see the exact bytes on the wire.

poplib hides what matters to a relay: it strips line ends, un-stuffs dots and
refuses lines over 2048 bytes. This client returns bytes as received, and can
drop the connection without QUIT (the "client vanished" case).
"""

from __future__ import annotations

import socket
import ssl
from types import TracebackType

TERMINATOR = b".\r\n"


class Pop3Wire:
    """One POP3 connection; the greeting is read on connect.

    Args:
        proxy_header: bytes sent before anything is read, such as a PROXY
            protocol v1/v2 header for a listener that expects one.
        context: wrap the socket in TLS at once (implicit TLS, like POP3S).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        context: ssl.SSLContext | None = None,
        proxy_header: bytes = b"",
        timeout: float = 10.0,
    ) -> None:
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        if proxy_header:
            self.sock.sendall(proxy_header)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname=host)
        self._stream = self.sock.makefile("rb")
        self.greeting = self.read_line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_line(self) -> bytes:
        """One line including its CRLF; b"" when the server closed."""
        return self._stream.readline()

    def command(self, line: str) -> bytes:
        """Send ``line`` + CRLF and return the status line."""
        self.send(line.encode() + b"\r\n")
        return self.read_line()

    def read_multiline(self) -> bytes:
        """The raw body of a multi-line reply, up to and including ".\\r\\n"."""
        chunks = []
        while True:
            line = self.read_line()
            if not line:
                raise ConnectionError("connection closed inside a multi-line reply")
            chunks.append(line)
            if line == TERMINATOR:
                return b"".join(chunks)

    def login(self, user: str, password: str) -> None:
        for line in (f"USER {user}", f"PASS {password}"):
            reply = self.command(line)
            if not reply.startswith(b"+OK"):
                raise AssertionError(f"{line.split()[0]} refused: {reply!r}")

    def drop(self) -> None:
        """Close the socket without QUIT, as a client that vanishes does."""
        self._stream.close()
        self.sock.close()

    def __enter__(self) -> Pop3Wire:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.drop()
