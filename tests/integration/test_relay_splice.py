"""The relay's kernel pipe for bulk replies, in this process, over real loopback TCP.

The proxy-level tests show big downloads arriving intact; these show the
pipe itself: it opens for a bulk reply, holds back the backend while a slow
client catches up, and closes again once replies are small or the session
ends.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import gevent
import gevent.event
import gevent.socket
import pytest
from harness.ports import LOOPBACK

from pop3proxy.net.endpoint import Endpoint
from pop3proxy.net.relay import Relay, Traffic
from pop3proxy.protocol.client import ClientConnection, Settings


def _largest_send_buffer() -> int:
    return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[-1])


CLIENT_RECEIVE_BUFFER = 65536
"""Set before connecting (shrinking it later makes TCP stall), so it stays small."""

BODY = os.urandom(_largest_send_buffer() + CLIENT_RECEIVE_BUFFER * 32).replace(b"\n", b"x")
"""More than the kernel buffers between the relay and a client that stopped
reading, so the relay has to hold back."""


def tcp_pair(receive_buffer: int = 0) -> tuple[gevent.socket.socket, socket.socket]:
    """An application's end (cooperative) and the proxy's end (non-blocking, raw)."""
    with socket.create_server((LOOPBACK, 0)) as server:
        app = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            app.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        app.connect(server.getsockname())
        proxy, _ = server.accept()
    proxy.setblocking(False)
    return app, proxy


def logged_in() -> ClientConnection:
    conn = ClientConnection(Settings(tls_active=True, stls_offered=False))
    conn.receive_data(b"USER alice\r\nPASS pw\r\n")
    conn.login_succeeded()
    return conn


class Wired:
    """A relay between a client application and a backend application."""

    def __init__(self) -> None:
        self.client, client_side = tcp_pair(CLIENT_RECEIVE_BUFFER)
        self.backend, backend_side = tcp_pair()
        self.ended = gevent.event.AsyncResult()
        self.traffic = Traffic()
        self._endpoints = [Endpoint(client_side), Endpoint(backend_side)]
        self.relay = Relay(
            *self._endpoints,
            logged_in(),
            30.0,
            self.traffic,
            "splice.example",
            self.ended.set,
        )
        self.relay.start([], b"")
        self._sockets = [client_side, backend_side]

    def command(self, line: bytes) -> bytes:
        """The client sends ``line``; returns what the backend received."""
        self.client.sendall(line)
        received = b""
        with gevent.Timeout(5):
            while not received.endswith(b"\r\n"):
                received += self.backend.recv(4096)
        return received

    def read(self, size: int) -> bytes:
        data = b""
        with gevent.Timeout(10):
            while len(data) < size:
                chunk = self.client.recv(65536)
                assert chunk, "the relay closed the client early"
                data += chunk
        return data

    def close(self) -> None:
        self.relay.stop("test_over")
        for endpoint in self._endpoints:
            endpoint.close_watchers()
        for sock in (self.client, self.backend, *self._sockets):
            sock.close()


@pytest.fixture
def wired() -> Iterator[Wired]:
    relay = Wired()
    yield relay
    relay.close()


def wait_for(condition, what: str) -> None:
    with gevent.Timeout(5, AssertionError(f"timed out waiting for {what}")):
        while not condition():
            gevent.sleep(0.005)


def test_a_bulk_reply_goes_through_the_pipe_intact(wired: Wired) -> None:
    assert wired.command(b"RETR 1\r\n") == b"RETR 1\r\n"
    reply = b"+OK bulk\r\n" + BODY + b"\r\n.\r\n"
    sender = gevent.spawn(wired.backend.sendall, reply)
    # The first big read goes through user space (and opens the pipe); read
    # past it, then stop reading: the pipe holds what the client cannot take.
    head = wired.read(1024 * 1024)
    wait_for(lambda: wired.relay._pipe is not None and wired.relay._pipe.pending, "a full pipe")
    assert not wired.relay._active("backend_read"), "the backend was read while the client stalled"
    assert head + wired.read(len(reply) - len(head)) == reply
    sender.get(timeout=5)
    assert wired.traffic.to_client == len(reply)
    # A small reply: back to user space, the pipe's descriptors are gone.
    wired.command(b"NOOP\r\n")
    wired.backend.sendall(b"+OK\r\n")
    assert wired.read(5) == b"+OK\r\n"
    wait_for(lambda: wired.relay._pipe is None, "the pipe to close")


def test_the_end_of_the_session_closes_an_open_pipe(wired: Wired) -> None:
    before = len(os.listdir("/proc/self/fd"))
    wired.command(b"RETR 1\r\n")
    sender = gevent.spawn(wired.backend.sendall, b"+OK\r\n" + BODY)
    wired.read(65536)
    wait_for(lambda: wired.relay._pipe is not None, "the pipe to open")
    assert len(os.listdir("/proc/self/fd")) == before + 2
    sender.kill()  # first: a socket closed under a blocked sendall makes gevent report it
    wired.backend.close()  # the backend dies mid-reply, the client goes too
    wired.client.close()
    assert wired.ended.get(timeout=5) in ("client_closed", "connection_error", "backend_closed")
    assert len(os.listdir("/proc/self/fd")) == before - 2  # the two applications' and the pipe's


def test_small_replies_never_open_a_pipe(wired: Wired) -> None:
    for _ in range(20):
        wired.command(b"STAT\r\n")
        wired.backend.sendall(b"+OK 1 100\r\n")
        assert wired.read(11) == b"+OK 1 100\r\n"
        assert wired.relay._pipe is None
