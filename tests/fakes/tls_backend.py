"""A POP3 backend that crosses its own TLS boundary: bytes that are not TLS
where TLS should be. A real Dovecot never does; a man in the middle does.

``stls_*`` behaviours greet in plaintext and answer STLS; ``implicit_*``
ones are a POP3S port. The ``honest`` ones do everything right (a control:
the proxy logs in through them). The others:

- ``stls_same_write``: ``+OK`` to STLS and a plaintext line in the same write,
  before any handshake (the STARTTLS response-injection of nginx CVE-2026-1642);
- ``stls_before_handshake``: ``+OK`` to STLS, then, once the proxy's ClientHello
  is there, a plaintext line instead of a ServerHello;
- ``implicit_plaintext``: a plaintext greeting on a TLS port, at once;
- ``implicit_after_hello``: reads the ClientHello, answers a plaintext greeting.

It accepts any USER/PASS over TLS and records every line it was sent (in
plaintext or over TLS), so a test can tell whether credentials ever left
the proxy.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading

from harness.ports import LOOPBACK

BEHAVIOURS = (
    "stls_honest",
    "stls_same_write",
    "stls_before_handshake",
    "implicit_honest",
    "implicit_plaintext",
    "implicit_after_hello",
)
INJECTED = b"+OK injected before the handshake\r\n"


class TLSMischiefBackend:
    def __init__(self, behaviour: str, context: ssl.SSLContext) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}")
        self.behaviour = behaviour
        self.context = context
        self.lines: list[bytes] = []
        self.accepted = 0
        self._listener = socket.create_server((LOOPBACK, 0))
        self.host = LOOPBACK
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def credentials_seen(self) -> bool:
        return any(
            line.split(b" ", 1)[0].upper() in (b"USER", b"PASS", b"AUTH") for line in self.lines
        )

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._open.append(conn)
            threading.Thread(target=self._talk_safely, args=(conn,), daemon=True).start()

    def _talk_safely(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        with contextlib.suppress(OSError, ssl.SSLError):
            self._talk(conn)
        with contextlib.suppress(OSError):
            conn.close()

    def _talk(self, conn: socket.socket) -> None:
        behaviour = self.behaviour
        if behaviour.startswith("implicit_"):
            if behaviour == "implicit_plaintext":
                conn.sendall(b"+OK plaintext on a TLS port\r\n")
                self._record_plaintext(conn)
                return
            if behaviour == "implicit_after_hello":
                conn.recv(1, socket.MSG_PEEK)  # the ClientHello is here
                conn.sendall(b"+OK plaintext instead of a ServerHello\r\n")
                self._record_plaintext(conn)
                return
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self._pop3(tls, greet=True)
            return
        conn.sendall(b"+OK plain greeting\r\n")
        stream = conn.makefile("rb")
        while True:
            line = stream.readline(4096)
            if not line:
                return
            self.lines.append(line.rstrip(b"\r\n"))
            if line.strip().upper() != b"STLS":
                conn.sendall(b"+OK\r\n")
                continue
            if behaviour == "stls_same_write":
                conn.sendall(b"+OK Begin TLS\r\n" + INJECTED)
            else:
                conn.sendall(b"+OK Begin TLS\r\n")
            if behaviour == "stls_before_handshake":
                conn.recv(1, socket.MSG_PEEK)  # the ClientHello is here
                conn.sendall(INJECTED)
                self._record_plaintext(conn)
                return
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self._pop3(tls, greet=False)
            return

    def _record_plaintext(self, conn: socket.socket) -> None:
        """Whatever the proxy sends after the broken boundary: kept as lines."""
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
        self.lines += data.split(b"\r\n")

    def _pop3(self, tls: ssl.SSLSocket, greet: bool) -> None:
        if greet:
            tls.sendall(b"+OK TLS greeting\r\n")
        stream = tls.makefile("rb")
        while True:
            line = stream.readline(4096)
            if not line:
                return
            self.lines.append(line.rstrip(b"\r\n"))
            tls.sendall(b"+OK bye\r\n" if line.upper().startswith(b"QUIT") else b"+OK\r\n")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> TLSMischiefBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
