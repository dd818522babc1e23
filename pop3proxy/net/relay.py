"""TRANSACTION relay: client commands parsed and counted, backend replies streamed.

Two directions, two greenlets. Backend to client is a byte splice in large
chunks with no per-line work, so a big RETR costs a few syscalls per 64 KiB.
Client to backend goes through the protocol core, which bounds line length
and notes whether the client sent QUIT.

Rule 1 lives here: the backend only ever sees QUIT if the client sent it.
When the client vanishes, times out or the proxy stops, the backend socket
is closed without a word, and the backend never enters UPDATE.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from dataclasses import dataclass, field

import gevent

from pop3proxy.net.sockets import send_all, shutdown
from pop3proxy.protocol.client import Action, ClientConnection, Close, Forward, Send

CHUNK = 65536
CLIENT_RECV = 16384
FLOOD = 4096
"""A client read this large is a pipeline flood, not a person typing: the
reader lets the loop run other sessions before it goes on."""
CHUNKS_BETWEEN_TURNS = 16
"""A bulk download yields to other sessions after this many chunks (1 MiB)."""


def share_the_loop(received: int) -> None:
    """Let other sessions run after a large read.

    A gevent socket does not switch while data is ready, so a client that
    keeps its socket readable would hold the loop for as long as it sends.
    ``gevent.idle`` waits until the loop has polled I/O and run everyone
    ready; ordinary clients never read this much at once and never pay.
    """
    if received >= FLOOD:
        gevent.idle()


@dataclass
class Traffic:
    """What one session moved; read by the session summary and metrics."""

    to_backend: int = 0
    to_client: int = 0
    commands: Counter[str] = field(default_factory=Counter)


class Relay:
    """Runs one session's TRANSACTION phase until either side is done."""

    def __init__(
        self,
        client: socket.socket,
        backend: socket.socket,
        conn: ClientConnection,
        idle_timeout: float,
        traffic: Traffic,
    ) -> None:
        self.client = client
        self.backend = backend
        self.conn = conn
        self.idle_timeout = idle_timeout
        self.traffic = traffic
        self.last_activity = time.monotonic()
        self.end_reason: str | None = None
        """Whichever side ended first says why; the other only follows."""

    def _ended(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason

    def run(self, pending: list[Action], leftover: bytes) -> str:
        """Relay until the session ends; returns why it ended."""
        pump = gevent.spawn(self._backend_to_client, leftover)
        try:
            self.client.settimeout(self.idle_timeout)
            self._ended(self._execute(pending) or self._client_to_backend())
        finally:
            shutdown(self.backend)
            pump.join(timeout=5)
            pump.kill(block=False)
        return self.end_reason or "error"

    def _backend_to_client(self, leftover: bytes) -> None:
        try:
            data = leftover
            chunks = 0
            while True:
                if data:
                    send_all(self.client, data)
                    self.traffic.to_client += len(data)
                    self.last_activity = time.monotonic()
                    chunks += 1
                    if chunks % CHUNKS_BETWEEN_TURNS == 0:
                        gevent.idle()
                data = self.backend.recv(CHUNK)
                if not data:
                    self._ended("quit" if self.conn.client_sent_quit else "backend_closed")
                    break
        except OSError:
            self._ended("connection_error")
        finally:
            shutdown(self.client)

    def _client_to_backend(self) -> str:
        while True:
            try:
                data = self.client.recv(CLIENT_RECV)
            except TimeoutError:
                if time.monotonic() - self.last_activity >= self.idle_timeout:
                    return "idle_timeout"
                continue
            except OSError:
                return "connection_error"
            if not data:
                return "client_closed"
            self.last_activity = time.monotonic()
            ended = self._execute(self.conn.receive_data(data))
            if ended:
                return ended
            share_the_loop(len(data))

    def _execute(self, actions: list[Action]) -> str | None:
        """Forward the commands in one write per batch (pipelining costs one syscall)."""
        batch = bytearray()
        for action in actions:
            if isinstance(action, Forward):
                batch += action.data
                self.traffic.commands[action.command] += 1
            elif isinstance(action, Send):
                send_all(self.client, action.data)
            elif isinstance(action, Close):
                return action.reason
        if batch:
            try:
                send_all(self.backend, batch)
            except OSError:
                return "connection_error"
            self.traffic.to_backend += len(batch)
        return None
