"""A POP3 "server" that misbehaves on purpose: garbage, silence, or a slammed door.

A real Dovecot greets correctly or refuses the connection; these are the
other ways a legacy backend fails: a wrong service on the port (``garbage``),
a hung process that accepts and never speaks (``stall``), a server that
accepts and closes at once (``close``). Each counts the connections it got,
so a test can tell whether the proxy tried it at all. ``agree`` is the
other way round: it says ``+OK`` to every line and keeps the lines, so a
test can read what the proxy sent (a PROXY v1 line is kept too, and gets
no reply, as from a ``haproxy = yes`` listener).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from harness.ports import LOOPBACK

GARBAGE = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"

BEHAVIOURS = ("garbage", "stall", "close", "agree")


class FakeBackend:
    def __init__(self, behaviour: str, greeting: bytes = b"+OK ready") -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}")
        self.behaviour = behaviour
        self.greeting = greeting
        """What ``agree`` says first (``+OK [XCLIENT] ...`` offers XCLIENT)."""
        self.accepted = 0
        self.lines: list[bytes] = []
        """What ``agree`` was sent, each line without its CRLF."""
        self._listener = socket.create_server((LOOPBACK, 0))
        self.host = LOOPBACK
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _serve(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            if self.behaviour == "garbage":
                with contextlib.suppress(OSError):
                    conn.sendall(GARBAGE)
                conn.close()
            elif self.behaviour == "close":
                conn.close()
            elif self.behaviour == "agree":
                self._open.append(conn)
                threading.Thread(target=self._agree, args=(conn,), daemon=True).start()
            else:
                self._open.append(conn)  # held open, never a word

    def _agree(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn.makefile("rb") as stream:
            conn.sendall(self.greeting + b"\r\n")
            for line in stream:
                self.lines.append(line.rstrip(b"\r\n"))
                if not line.startswith(b"PROXY "):
                    conn.sendall(b"+OK\r\n")

    def close(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self._listener.close()
        for conn in self._open:
            conn.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
