#!/usr/bin/env python
"""The least a Python relay on gevent's event loop costs per session (``compare.py --floor``).

    python bench/floor_relay.py LISTEN_PORT BACKEND_PORT

Accepts on 127.0.0.1:LISTEN_PORT and splices every connection to
127.0.0.1:BACKEND_PORT with raw non-blocking sockets and libev I/O watchers,
no greenlet: no POP3 parsing, no login, no metrics, no TLS (the client's
USER and PASS reach Dovecot as they are). Beside nginx and pop3proxy it shows
how much of a proxy's CPU per session any Python relay pays here.
"""

from __future__ import annotations

import socket
import sys

import gevent
from gevent.hub import get_hub

LOOPBACK = "127.0.0.1"
READ = 1


class Splice:
    """One client connection and its backend connection, until either closes."""

    def __init__(self, client: socket.socket, backend_port: int) -> None:
        loop = get_hub().loop
        self.client = client
        self.backend = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.backend.setblocking(False)
        for sock in (self.client, self.backend):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.backend.connect_ex((LOOPBACK, backend_port))
        self.watchers = [loop.io(self.client.fileno(), READ), loop.io(self.backend.fileno(), READ)]
        self.watchers[0].start(self.pump, self.client, self.backend)
        self.watchers[1].start(self.pump, self.backend, self.client)

    def pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Forward one read; replies here are small enough for one send (no back-pressure)."""
        try:
            data = source.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        sink.send(data)

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        self.client.close()
        self.backend.close()


def serve(listen_port: int, backend_port: int) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, listen_port))
    listener.listen(1024)
    listener.setblocking(False)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                return
            client.setblocking(False)
            Splice(client, backend_port)

    get_hub().loop.io(listener.fileno(), READ).start(accept)
    gevent.wait()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
