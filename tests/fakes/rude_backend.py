"""A POP3 backend that misbehaves on purpose: faults a real Dovecot can't show.

Only for what a real server can't be made to do on cue: stall after the
greeting, stall in the middle of a reply, answer garbage, half-close the
connection after the login. Everything else in the tests runs against a real
Dovecot.

It runs in threads of the test process on a free loopback port, accepts any
USER/PASS, and records every line each connection sent, so a test can check
that the proxy never forwarded QUIT (rule 1) when the client did not send it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field
from enum import Enum

from harness.ports import LOOPBACK


class Fault(Enum):
    STALL_AFTER_GREETING = "stall_after_greeting"
    """Greets ``+OK``, then never answers (the proxy's login must time out)."""
    GARBAGE_GREETING = "garbage_greeting"
    """Answers a binary blob without a line end instead of a greeting."""
    GARBAGE_AFTER_LOGIN = "garbage_after_login"
    """Logs in, then answers every command with bytes that are not POP3."""
    STALL_MID_RETR = "stall_mid_retr"
    """Logs in, answers RETR with ``+OK`` and part of a message, then stalls."""
    CLOSE_AFTER_LOGIN = "close_after_login"
    """Logs in, then closes its side at the first command (a crashed backend)."""


PARTIAL_BODY = b"Subject: cut short\r\n\r\n" + b"x" * 1000 + b"\r\n"
GARBAGE = bytes(range(256)) * 4


@dataclass
class Connection:
    lines: list[bytes] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)


class RudeBackend:
    """``with RudeBackend(Fault.X) as backend:`` serves on ``backend.port``."""

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.host = LOOPBACK
        self._server = socket.create_server((LOOPBACK, 0))
        self.port: int = self._server.getsockname()[1]
        self.connections: list[Connection] = []
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def received(self) -> list[bytes]:
        """Every line any connection sent, in order of connection."""
        return [line for conn in list(self.connections) for line in conn.lines]

    def __enter__(self) -> RudeBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            conn = Connection()
            with self._lock:
                self._sockets.append(sock)
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(sock, conn), daemon=True).start()

    def _serve(self, sock: socket.socket, conn: Connection) -> None:
        try:
            self._talk(sock, conn)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            conn.closed.set()

    def _talk(self, sock: socket.socket, conn: Connection) -> None:
        fault = self.fault
        if fault is Fault.GARBAGE_GREETING:
            sock.sendall(GARBAGE * 64)  # 64 KiB, no line end a parser could stop at
            self._stop.wait()
            return
        sock.sendall(b"+OK rude backend ready\r\n")
        stream = sock.makefile("rb")
        logged_in = False
        while True:
            line = stream.readline(4096)
            if not line:
                return
            conn.lines.append(line.rstrip(b"\r\n"))
            command = line.split(b" ", 1)[0].strip().upper()
            if fault is Fault.STALL_AFTER_GREETING:
                self._stop.wait()  # until the test ends; the proxy has to give up
                return
            if logged_in and fault is Fault.STALL_MID_RETR and command == b"RETR":
                sock.sendall(b"+OK 5000 octets\r\n" + PARTIAL_BODY)
                self._stop.wait()
                return
            if command in (b"USER", b"PASS"):
                sock.sendall(b"+OK\r\n")
                logged_in = logged_in or command == b"PASS"
            elif command == b"QUIT":
                sock.sendall(b"+OK bye\r\n")
                return
            elif logged_in and fault is Fault.CLOSE_AFTER_LOGIN:
                return
            elif logged_in and fault is Fault.GARBAGE_AFTER_LOGIN:
                sock.sendall(GARBAGE)
            else:
                sock.sendall(b"+OK 1 100\r\n")
