#!/usr/bin/env python
"""The least a Python relay on gevent's event loop can cost per session.

    python bench/floor_relay.py LISTEN_PORT BACKEND_PORT [--greenlets | --work KIND:N]

Accepts on 127.0.0.1:LISTEN_PORT and splices every connection to
127.0.0.1:BACKEND_PORT: no POP3 parsing, no login, no metrics, no TLS (the
client's USER and PASS reach Dovecot as they are). By default with raw
non-blocking sockets and libev I/O watchers, no greenlet at all; with
``--greenlets`` the usual gevent way: a ``StreamServer`` with a ``Pool``,
gevent sockets, a greenlet per direction. ``bench/compare.py`` runs both
beside nginx and pop3proxy: the first is what any Python relay costs, the
difference between the two is what gevent's greenlet-and-socket machinery
costs per session.

``--work KIND:N`` adds one kind of work to the callback relay, so that
``bench/compare.py --calibrate`` can price it against the bare relay:
``tight:N`` runs N calls of one small method per read (the same code over
and over), ``diverse:N`` N calls spread over 400 small functions (the same
amount of Python, more distinct code), ``alloc:N`` makes N small records per
read, ``watchers:N`` makes and closes N timers (started) and N I/O watchers
per session, ``greenlet:1`` runs a greenlet per session that waits once for the
backend's first reply, as a login does.
"""

from __future__ import annotations

import contextlib
import socket
import sys

import gevent
from gevent.hub import Waiter, get_hub

LOOPBACK = "127.0.0.1"
READ = 1
WORK: tuple[str, int] = ("", 0)


class Thing:
    __slots__ = ("a", "b")

    def __init__(self, a: int) -> None:
        self.a = a
        self.b = 0

    def step(self, x: int) -> int:
        self.b += x
        return self.b


def _distinct_functions(count: int) -> list:
    """``count`` small functions with their own code objects (what a real proxy has)."""
    functions = []
    for index in range(count):
        namespace: dict = {}
        source = f"def f(t, x):\n    a = t.a + x\n    t.b = a * {index} - x\n    return t.b\n"
        exec(compile(source, f"<work {index}>", "exec"), namespace)
        functions.append(namespace["f"])
    return functions


DISTINCT = _distinct_functions(400)
_next_distinct = [0]


def work_per_read(kind: str, count: int) -> object:
    """One read's worth of the work ``--work`` asks for."""
    thing = Thing(1)
    if kind == "tight":
        for index in range(count):
            thing.step(index)
    elif kind == "diverse":
        start = _next_distinct[0]
        for index in range(count):
            DISTINCT[(start + index) % len(DISTINCT)](thing, index)
        _next_distinct[0] = (start + count) % len(DISTINCT)
    elif kind == "alloc":
        return [(Thing(index), [index], {"n": index}) for index in range(count)]
    return thing


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
        self.extra: list = []
        self.waiter: Waiter | None = None
        kind, count = WORK
        if kind == "watchers":
            for _ in range(count):
                timer = loop.timer(60.0)
                timer.start(self.close)
                self.extra += [timer, loop.io(self.client.fileno(), 2)]
        elif kind == "greenlet":
            gevent.spawn_raw(self.wait_once)

    def wait_once(self) -> None:
        self.waiter = Waiter()
        self.waiter.get()
        self.waiter = None

    def pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Forward one read; replies here are small enough for one send (no back-pressure)."""
        if WORK[0] in ("tight", "diverse", "alloc"):
            work_per_read(*WORK)
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
        if self.waiter is not None and source is self.backend:
            self.waiter.switch(None)

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        for watcher in self.extra:
            watcher.stop()
            watcher.close()
        self.extra = []
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


def serve_with_greenlets(listen_port: int, backend_port: int) -> None:
    from gevent import monkey

    monkey.patch_all()
    from gevent.pool import Pool
    from gevent.server import StreamServer

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_RDWR)

    def handle(client: socket.socket, _peer: tuple) -> None:
        backend = socket.create_connection((LOOPBACK, backend_port))
        for sock in (client, backend):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        other = gevent.spawn(pump, backend, client)
        pump(client, backend)
        other.join()
        backend.close()

    StreamServer((LOOPBACK, listen_port), handle, spawn=Pool(10000)).serve_forever()


if __name__ == "__main__":
    ports = int(sys.argv[1]), int(sys.argv[2])
    if "--work" in sys.argv[3:]:
        kind, _, count = sys.argv[sys.argv.index("--work") + 1].partition(":")
        WORK = (kind, int(count or 1))
    if "--greenlets" in sys.argv[3:]:
        serve_with_greenlets(*ports)
    else:
        serve(*ports)
