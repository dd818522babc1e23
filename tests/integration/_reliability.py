"""Helpers shared by the fault, hostile-input and no-secrets tests.

A "normal session" is the yardstick: while something hostile happens to the
proxy, an ordinary client logs in, reads a message and quits, and must be done
within :data:`NORMAL_SESSION_BUDGET`.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from harness.certs import Certs
from harness.mailbox import retr_wire, sample_messages
from harness.proxy import TENANT, ProxyProcess
from harness.users import USERS
from harness.wire import Pop3Wire

NORMAL_SESSION_BUDGET = 1.0
"""Seconds a normal session may take while the proxy is under attack (issue 9)."""

RSS_GROWTH_BOUND_KB = 64 * 1024
"""How much a hostile burst may grow the proxy's resident memory: generous for
allocator slack, far below what buffering the attacker's bytes would cost."""


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def normal_session(proxy: ProxyProcess, user: str, message: int = 1) -> float:
    """Log in on the plain listener, STAT, RETR ``message``, QUIT; returns seconds.

    The body must be exactly what Dovecot stores (the user's mailbox holds the
    samples), so a session that "finishes" with corrupted data still fails.
    """
    started = time.monotonic()
    with Pop3Wire(proxy.host, proxy.ports["plain"], timeout=5) as wire:
        assert wire.greeting.startswith(b"+OK"), wire.greeting
        wire.login(f"{user}@{TENANT}", USERS[user])
        assert wire.command("STAT").startswith(b"+OK")
        assert wire.command(f"RETR {message}").startswith(b"+OK")
        assert wire.read_multiline() == retr_wire(sample_messages()[message - 1])
        assert wire.command("QUIT").startswith(b"+OK")
    return time.monotonic() - started


class Background:
    """Run ``target`` in a thread; ``result()`` re-raises what it raised."""

    def __init__(self, target: Callable[[], object]) -> None:
        self._target = target
        self._value: object = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._target()
        except BaseException as error:  # handed to the test thread
            self._error = error

    def result(self, timeout: float = 30.0) -> object:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background work did not finish"
        if self._error is not None:
            raise self._error
        return self._value


def file_proxy(
    workdir: Path,
    certs: Certs,
    backends: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> ProxyProcess:
    """A proxy (not started) whose tenants come from a tenants file.

    ``backends`` maps tenant name to ``HOST:PORT``. The file store is a real,
    supported directory, and it spares these tests a CLI subprocess per tenant.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    tenants = []
    for name, address in backends.items():
        host, port = address.rsplit(":", 1)
        tenants.append(
            {"name": name, "backends": [{"host": host, "port": int(port)}], "login": "{local}"}
        )
    path = workdir / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": tenants}))
    config: dict[str, Any] = {"directory": {"store": "file", "file": str(path)}}
    for key, value in (overrides or {}).items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return ProxyProcess(workdir, certs, config)


def read_until_closed(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the peer sends until it closes (a reset counts as a close)."""
    sock.settimeout(limit)
    chunks = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    else:
        raise AssertionError(f"the connection was still open after {limit}s")
    return b"".join(chunks)


def gauge(proxy: ProxyProcess, name: str) -> float:
    """Sum of a metric over all its label sets."""
    total = 0.0
    for line in proxy.metrics().splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
