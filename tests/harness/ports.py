"""Free ports and deadline-based polling.

Tests never sleep a fixed time to wait for a server: they poll a condition until
a deadline, so a fast machine is fast and a slow one still passes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free on ``host`` a moment ago.

    The kernel picks it (bind to port 0). There is a small window before the
    server binds it; on a test machine that is an acceptable race.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
