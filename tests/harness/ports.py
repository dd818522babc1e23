"""Free ports and deadline-based polling.

Tests never sleep a fixed time to wait for a server: they poll a condition until
a deadline, so a fast machine is fast and a slow one still passes.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


ALL_PORTS = range(10000, 20000)
"""Where servers of the suite listen: below the kernel's ephemeral range, which
outgoing connections draw their source ports from (a port the kernel hands
out for "bind to port 0" can be taken by any client before the server binds
it), and low enough that a Redis Cluster node's bus port (port + 10000)
stays out of it too."""


def _share_of_ports() -> range:
    """This test process's share of :data:`ALL_PORTS`: under pytest-xdist each
    worker draws from its own slice, so two workers never hand out one port
    in the moment between checking it and a server binding it."""
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = len(ALL_PORTS) // max(count, 1)
    start = ALL_PORTS.start + index * size
    return range(start, start + size)


PORTS = _share_of_ports()
_handed_out: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free on ``host`` a moment ago, never the same twice."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        port = random.choice(PORTS)
        if port in _handed_out:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {PORTS} on {host}")


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Exceptions raised by ``predicate`` propagate (a predicate can fail fast,
    for example when the server process died). Raises ``TimeoutError`` naming
    ``message`` when the deadline passes; the predicate is always tried once
    more at the deadline, so a zero timeout still checks.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {message}")
        time.sleep(interval)


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a TCP connect to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on ``host:port``."""
    wait_until(
        lambda: port_is_open(host, port),
        timeout,
        interval=0.02,
        message=f"{host}:{port} to accept connections",
    )
