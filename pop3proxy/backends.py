"""Choose a tenant's backend, and log in to it through the shell's dialer.

:class:`BackendPicker` is the per-process front: routing (:mod:`pop3proxy.routing`)
gives the order, health (:mod:`pop3proxy.health`) skips backends whose breaker
is open, and up to ``backends.max_attempts`` backends are tried. Before the
backend has accepted the login, a backend that cannot be reached, is slow,
or answers garbage is skipped for the next one. After the login nothing
switches silently: the relay ends the session instead.

Connecting to one backend is the shell's (a
:class:`~pop3proxy.interfaces.BackendDialer`, :mod:`pop3proxy.net.backend`):
TCP with the backend's connect timeout, then the PROXY header if
``forward_client`` is ``proxy_v1``/``proxy_v2`` (before anything else, TLS
included, as HAProxy does), then TLS for ``implicit``. What is said once
connected is decided here: the login machine
(:mod:`pop3proxy.protocol.backend`) does greeting, STLS, XCLIENT, USER and
PASS. The greenlet here waits once per backend.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import gevent

from pop3proxy import metrics
from pop3proxy.config import BackendsConfig
from pop3proxy.health import Health
from pop3proxy.interfaces import (
    BackendConnection,
    BackendDialer,
    BackendUnavailable,
    ClientAddress,
    LoginRefused,
)
from pop3proxy.protocol import backend as machine
from pop3proxy.routing import Rotation, candidates
from pop3proxy.tenants import Backend, Tenant

log = logging.getLogger("pop3proxy.backends")


class BackendPicker:
    """Backend selection, health and active checks for this process."""

    def __init__(
        self, settings: BackendsConfig, connect_timeout: float, dialer: BackendDialer
    ) -> None:
        self.settings = settings
        self.connect_timeout = connect_timeout
        self.dialer = dialer
        self.health = Health(settings.failure_threshold, settings.failure_window, settings.cooldown)
        self.rotation = Rotation()
        self._known: dict[str, tuple[Backend, set[str]]] = {}
        """Backends seen in logins, with their tenant labels: what active checks visit."""
        self._checker: gevent.Greenlet | None = None

    def timeout(self, backend: Backend) -> float:
        return backend.connect_timeout or self.connect_timeout

    def open(
        self,
        tenant: Tenant,
        login_name: str,
        password: bytes,
        *,
        user: str,
        client: ClientAddress | None = None,
        pinned: str | None = None,
    ) -> BackendConnection:
        """Log in to the best usable backend of ``tenant`` for ``user``.

        Raises :class:`LoginRefused` when a backend refused the credentials (no
        other backend is tried: it would judge the same password), and
        :class:`BackendUnavailable` when none could be used.
        """
        self._start_checks()
        label = metrics.tenant_label(tenant.name)
        reasons: list[str] = []
        attempts = 0
        for backend in candidates(tenant, user, self.rotation, pinned):
            self._remember(backend, label)
            if attempts >= self.settings.max_attempts:
                break
            address = backend.address
            if not self.health.allow(address):
                reasons.append("circuit_open")
                continue
            attempts += 1
            started = time.perf_counter()
            try:
                connection = self._login(backend, login_name, password, client)
            except BackendUnavailable as error:
                self._failed(backend, [label], tenant.name, error.reason)
                reasons.append(error.reason)
                continue
            except LoginRefused:
                self._succeeded(backend)
                raise
            except BaseException:
                self.health.release(address)
                raise
            self._succeeded(backend)
            metrics.observe(metrics.BACKEND_CONNECT, label, value=time.perf_counter() - started)
            return connection
        reason = _summary(reasons)
        if reason == "circuit_open":
            metrics.add(metrics.BACKEND_ERRORS, label, reason)
        raise BackendUnavailable(reason)

    def _remember(self, backend: Backend, label: str) -> None:
        entry = self._known.get(backend.address)
        if entry is None or (entry[0] is not backend and entry[0] != backend):
            labels = entry[1] if entry else set()
            self._known[backend.address] = entry = (backend, labels)
        entry[1].add(label)

    def _succeeded(self, backend: Backend) -> None:
        if self.health.succeeded(backend.address):
            log.info("backend recovered", extra={"backend": backend.address})
        self._set_up(backend.address, 1)

    def _failed(
        self, backend: Backend, labels: Iterable[str], tenant: str | None, reason: str
    ) -> None:
        for label in labels:
            metrics.add(metrics.BACKEND_ERRORS, label, reason)
        log.warning(
            "backend unavailable",
            extra={"tenant": tenant, "backend": backend.address, "error": reason},
        )
        if self.health.failed(backend.address):
            log.warning(
                "backend circuit open",
                extra={"backend": backend.address, "cooldown": self.settings.cooldown},
            )
        self._set_up(backend.address, 0)

    def _set_up(self, address: str, value: int) -> None:
        entry = self._known.get(address)
        for label in entry[1] if entry else ():
            metrics.set_gauge(metrics.BACKEND_UP, label, address, value=value)

    # -- active checks -------------------------------------------------------

    def _start_checks(self) -> None:
        if self.settings.health_check_interval > 0 and self._checker is None:
            self._checker = gevent.spawn(self._check_forever)

    def _check_forever(self) -> None:
        while True:
            gevent.sleep(self.settings.health_check_interval)
            for backend, _labels in list(self._known.values()):
                self.check(backend)

    def check(self, backend: Backend) -> bool:
        """Connect and read the greeting (an active check); updates health and metrics."""
        try:
            self.dialer.dial(backend, self.timeout(backend), None, None).close()
        except BackendUnavailable as error:
            labels = self._known.get(backend.address, (backend, set()))[1]
            self._failed(backend, labels, None, f"check_{error.reason}")
            return False
        self._succeeded(backend)
        return True

    def close(self) -> None:
        if self._checker is not None:
            self._checker.kill(block=False)

    # -- one backend ---------------------------------------------------------

    def _login(
        self, backend: Backend, login_name: str, password: bytes, client: ClientAddress | None
    ) -> BackendConnection:
        forward = backend.forward_client == "xclient" and client is not None
        login = machine.BackendLogin(
            login_name,
            password,
            starttls=backend.tls == "starttls",
            xclient=client.source if forward and client else None,
            sasl_plain=backend.login_command == "auth_plain",
        )
        connection = self.dialer.dial(backend, self.timeout(backend), login, client)
        if login.xclient_result not in (None, "sent"):
            log.warning(
                "client address not forwarded",
                extra={"backend": backend.address, "xclient": login.xclient_result},
            )
        return connection


def _summary(reasons: list[str]) -> str:
    """The reason a login found no backend: the last real failure, if any."""
    real = [reason for reason in reasons if reason != "circuit_open"]
    if real:
        return real[-1]
    return reasons[-1] if reasons else "no_backends"
