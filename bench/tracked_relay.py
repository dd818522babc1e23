#!/usr/bin/env python
"""What following each reply costs: the plain relay against the tracked one.

    .venv/bin/python bench/tracked_relay.py [--megabytes 50] [--messages 10000] [--rounds 3]

A session with a download meter or a UIDL map runs ``TrackedRelay``, which
reads every backend byte in user space (no kernel pipe) and searches it for
the end of each reply. This runs, in this process, the real ``Relay`` and
``TrackedRelay`` between a real Dovecot session and a client in a thread of
its own, and measures, per mode:

* bulk: a ``--megabytes`` RETR, ``--reps`` times: MB/s and the relay's CPU
  (this thread's CPU time: the event loop and the relay, not the client);
* listing: ``UIDL`` of a ``--messages`` mailbox: listings per second and CPU
  per listing, without a map and with one that translates every UIDL.

Modes: ``plain`` (``Relay``: what sessions without meter or map run),
``meter`` (``TrackedRelay`` with a meter), ``map`` (with a meter and a map).
Figures wander with the machine's load; compare the modes of one run.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

import gevent  # noqa: E402
from harness.dovecot import Dovecot  # noqa: E402
from harness.ports import LOOPBACK  # noqa: E402

from pop3proxy.net.endpoint import Endpoint  # noqa: E402
from pop3proxy.net.relay import Relay, TrackedRelay, Traffic  # noqa: E402
from pop3proxy.protocol.client import ClientConnection, Settings  # noqa: E402

USERS = {"bulk": "bulk-secret", "many": "many-secret"}
END = b"\r\n.\r\n"


class Meter:
    """A budget that never runs out: the cost of counting, not of refusing."""

    def __init__(self) -> None:
        self.added = 0

    @property
    def exhausted(self) -> bool:
        return False

    def add(self, octets: int) -> None:
        self.added += octets


def read_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("Dovecot closed the connection")
        line += chunk
    return line


def login(dovecot: Dovecot, user: str) -> socket.socket:
    sock = socket.create_connection((dovecot.host, dovecot.port), timeout=30)
    read_line(sock)
    sock.sendall(b"USER %s\r\nPASS %s\r\n" % (user.encode(), USERS[user].encode()))
    read_line(sock)
    if not read_line(sock).startswith(b"+OK"):
        raise ConnectionError("Dovecot refused the login")
    return sock


def uidls(dovecot: Dovecot, user: str) -> list[bytes]:
    sock = login(dovecot, user)
    sock.sendall(b"UIDL\r\n")
    reply = bytearray()
    while not reply.endswith(END):
        reply += sock.recv(65536)
    sock.sendall(b"QUIT\r\n")
    sock.close()
    return [line.split()[1] for line in bytes(reply).split(b"\r\n")[1:-2]]


def client_run(sock: socket.socket, command: bytes, reps: int, result: dict[str, float]) -> None:
    """In a thread: ``command`` ``reps`` times, each reply read to its end."""
    received = 0
    started = time.perf_counter()
    for _ in range(reps):
        sock.sendall(command)
        tail = b""
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the relay closed the client")
            received += len(chunk)
            tail = (tail + chunk)[-5:] if len(chunk) < 5 else chunk[-5:]
            if tail == END:
                break
    result["seconds"] = time.perf_counter() - started
    result["bytes"] = received


def measure(
    dovecot: Dovecot,
    user: str,
    command: bytes,
    reps: int,
    make: Callable[..., Relay],
) -> tuple[float, float, int]:
    """Seconds, relay CPU seconds, bytes for ``reps`` replies to ``command``."""
    with socket.create_server((LOOPBACK, 0)) as server:
        app = socket.create_connection(server.getsockname())
        proxy_side, _ = server.accept()
    proxy_side.setblocking(False)
    backend = login(dovecot, user)
    backend.setblocking(False)
    conn = ClientConnection(Settings(tls_active=True, stls_offered=False))
    conn.receive_data(b"USER x\r\nPASS y\r\n")
    conn.login_succeeded()
    endpoints = [Endpoint(proxy_side), Endpoint(backend)]
    relay = make(*endpoints, conn, 300.0, Traffic(), "bench", lambda reason: None)
    relay.start([], b"")
    result: dict[str, float] = {}
    cpu = time.thread_time()
    thread = threading.Thread(target=client_run, args=(app, command, reps, result))
    thread.start()
    while thread.is_alive():
        gevent.sleep(0.01)
    cpu = time.thread_time() - cpu
    thread.join()
    relay.stop("bench_over")
    for endpoint in endpoints:
        endpoint.close_watchers()
    for sock in (app, proxy_side, backend):
        sock.close()
    return result["seconds"], cpu, int(result["bytes"])


def modes(uidl_map: Mapping[bytes, bytes]) -> dict[str, Callable[..., Relay]]:
    def tracked(**options: object) -> Callable[..., Relay]:
        return lambda *args: TrackedRelay(*args, **options)  # type: ignore[arg-type]

    return {
        "plain": Relay,
        "meter": tracked(meter=Meter()),
        "map": tracked(meter=Meter(), uidl_map=uidl_map),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    line = b"x" * 76 + b"\n"
    big = b"Subject: bulk\n\n" + line * (options.megabytes * 1_000_000 // len(line))
    small = [b"Subject: %d\n\nbody %d\n" % (n, n) for n in range(options.messages)]
    with Dovecot(USERS) as dovecot:
        dovecot.deliver("bulk", [big])
        dovecot.deliver("many", small)
        uidl_map = {uidl: b"old-" + uidl for uidl in uidls(dovecot, "many")}
        figures: dict[str, list[tuple[float, float, float, float]]] = {}
        for _ in range(options.rounds):  # the modes in turn, so load drifts hit them alike
            for name, make in modes(uidl_map).items():
                seconds, cpu, size = measure(dovecot, "bulk", b"RETR 1\r\n", options.reps, make)
                listings = options.reps * 4
                list_seconds, list_cpu, _ = measure(dovecot, "many", b"UIDL\r\n", listings, make)
                megabytes = size / 1e6
                figures.setdefault(name, []).append(
                    (
                        megabytes / seconds,
                        cpu * 1000 / megabytes,
                        listings / list_seconds,
                        list_cpu * 1000 / listings,
                    )
                )
    print(f"medians of {options.rounds} rounds; CPU is the relay's thread only")
    print(f"{'mode':6} {'bulk MB/s':>10} {'CPU ms/MB':>10} {'UIDL/s':>8} {'CPU ms/UIDL':>12}")
    for name, rows in figures.items():
        mb_s, ms_mb, uidl_s, ms_uidl = (
            statistics.median(column) for column in zip(*rows, strict=True)
        )
        print(f"{name:6} {mb_s:10.0f} {ms_mb:10.2f} {uidl_s:8.1f} {ms_uidl:12.2f}")


if __name__ == "__main__":
    main()
