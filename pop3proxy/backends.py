"""Choose a tenant's backend, connect to it, and log in.

Before the backend has accepted the login, a backend that cannot be reached
or answers garbage is skipped for the next one (``failover`` order, bounded
by the list). After the login, nothing switches silently: the relay ends
the session instead.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from dataclasses import dataclass

import gevent

from pop3proxy import metrics
from pop3proxy.net import tls
from pop3proxy.protocol import backend as machine
from pop3proxy.protocol.framing import LINE_TOO_LONG, LineReader
from pop3proxy.tenants import Backend, Tenant

log = logging.getLogger("pop3proxy.backends")

RECV_SIZE = 65536


@dataclass
class Upstream:
    """A logged-in backend connection, ready to relay."""

    sock: socket.socket
    backend: Backend
    leftover: bytes
    """Bytes the backend sent after its login reply (none from a sane server)."""


class LoginRefused(Exception):
    """The backend judged the credentials; ``reply`` is the -ERR line for the client."""

    def __init__(self, reply: bytes, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


class BackendUnavailable(Exception):
    """No backend of the tenant could be used; the client gets -ERR [SYS/TEMP]."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle: POP3 is request/response, and Nagle plus delayed ACKs
    stalls every exchange by 40 ms or more."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def open_upstream(
    tenant: Tenant, login_name: str, password: bytes, *, connect_timeout: float
) -> Upstream:
    """Log in to the first usable backend of ``tenant`` (failover order).

    Raises :class:`LoginRefused` when a backend refused the credentials (no
    other backend is tried: it would judge the same password), and
    :class:`BackendUnavailable` when none could be used.
    """
    tenant_label = metrics.tenant_label(tenant.name)
    reasons = []
    for backend in tenant.backends:
        started = time.perf_counter()
        try:
            upstream = _login(backend, login_name, password, connect_timeout)
        except BackendUnavailable as error:
            metrics.BACKEND_ERRORS.labels(tenant_label, error.reason).inc()
            metrics.BACKEND_UP.labels(tenant_label, backend.address).set(0)
            log.warning(
                "backend unavailable",
                extra={"tenant": tenant.name, "backend": backend.address, "error": error.reason},
            )
            reasons.append(error.reason)
            continue
        metrics.BACKEND_UP.labels(tenant_label, backend.address).set(1)
        metrics.BACKEND_CONNECT.labels(tenant_label).observe(time.perf_counter() - started)
        return upstream
    raise BackendUnavailable(reasons[-1] if reasons else "no_backends")


def _connect(backend: Backend, timeout: float) -> socket.socket:
    try:
        sock = socket.create_connection((backend.host, backend.port), timeout=timeout)
    except TimeoutError:
        raise BackendUnavailable("connect_timeout") from None
    except OSError:
        raise BackendUnavailable("connect_failed") from None
    set_nodelay(sock)
    if backend.tls == "implicit":
        sock = _wrap(sock, backend, timeout)
    return sock


def _wrap(sock: socket.socket, backend: Backend, timeout: float) -> socket.socket:
    context = tls.client_context(backend.verify, backend.ca_file)
    try:
        return tls.connect_tls(sock, context, backend.server_name or backend.host, timeout)
    except tls.HandshakeFailed as error:
        sock.close()
        raise BackendUnavailable(f"tls_{error.reason}") from None


def _login(backend: Backend, login_name: str, password: bytes, timeout: float) -> Upstream:
    sock = _connect(backend, timeout)
    login = machine.BackendLogin(login_name, password, starttls=backend.tls == "starttls")
    reader = LineReader(machine.MAX_STATUS_LINE)
    try:
        with gevent.Timeout(timeout, BackendUnavailable("login_timeout")):
            while True:
                line = reader.next_line()
                if line is None:
                    data = sock.recv(RECV_SIZE)
                    if not data:
                        raise BackendUnavailable("closed_during_login")
                    reader.feed(data)
                    continue
                if line is LINE_TOO_LONG:
                    raise BackendUnavailable("garbage")
                for action in login.receive_line(line):
                    sock = _execute(action, sock, backend, login, reader, timeout)
                if login.done:
                    leftover = reader.take()
                    sock.settimeout(None)
                    return Upstream(sock, backend, leftover)
    except BaseException:
        sock.close()
        raise


def _execute(
    action: machine.BackendAction,
    sock: socket.socket,
    backend: Backend,
    login: machine.BackendLogin,
    reader: LineReader,
    timeout: float,
) -> socket.socket:
    if isinstance(action, machine.SendToBackend):
        sock.sendall(action.data)
    elif isinstance(action, machine.StartBackendTLS):
        if reader.discard():
            raise BackendUnavailable("data_before_tls")
        sock = _wrap(sock, backend, timeout)
        for follow_up in login.tls_established():
            sock = _execute(follow_up, sock, backend, login, reader, timeout)
    elif isinstance(action, machine.Failed):
        if action.kind is machine.FailureKind.AUTH:
            raise LoginRefused(action.client_reply, action.reason)
        raise BackendUnavailable(action.reason)
    return sock
