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

Operators set a state per backend address (``pop3proxy backend set``),
shared by every replica and tenant through one Redis hash,
``<prefix>:backend-state``. :class:`BackendStates` reads that hash in a
greenlet of its own every :data:`STATE_REFRESH` seconds, so a login never
waits for Redis to learn it. :func:`try_order` applies the states to the
routing order: ``online`` backends in the policy's order, then ``standby``
ones (tried only when no online backend could take the login); ``evacuate``
and ``offline`` take no new logins.

An ``evacuate`` state also has a deadline, an absolute time in a second
hash, ``<prefix>:backend-deadline``, so that every replica (and one that
restarts meanwhile) ends the backend's last sessions at the same moment. The
state hash keeps holding plain state names, which a replica of an older
version still reads. Ending the sessions is the composition root's
(:meth:`pop3proxy.app.App.evacuate`), started by :attr:`BackendStates.on_change`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

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
from pop3proxy.logs import utc_text
from pop3proxy.protocol import backend as machine
from pop3proxy.redisconn import BackgroundReader, RedisHealth, as_text
from pop3proxy.routing import Rotation, candidates
from pop3proxy.tenants import Backend, Tenant

log = logging.getLogger("pop3proxy.backends")

ONLINE, STANDBY, EVACUATE, OFFLINE = "online", "standby", "evacuate", "offline"
STATES = (ONLINE, STANDBY, EVACUATE, OFFLINE)
"""Backend states, as Dovecot Pro names them. A backend with no state set is online."""
STATE_REFRESH = 1.0
"""Seconds between two reads of the state hash: how soon every replica follows a change."""
EVACUATE_DEADLINE = 300.0
"""Seconds ``backend set --state evacuate`` gives a backend's sessions when no
``--deadline`` is given: after it every remaining session is ended."""
EVACUATE_QUIET = 2.0
"""Seconds a session of an evacuated backend must have moved nothing, with no
reply outstanding, before it is ended: long enough to never cut a reply."""


def state_key(prefix: str) -> str:
    """The Redis hash of backend states: ``HOST:PORT`` -> state (absent: online)."""
    return f"{prefix}:backend-state"


def deadline_key(prefix: str) -> str:
    """The Redis hash of evacuation deadlines: ``HOST:PORT`` -> Unix time."""
    return f"{prefix}:backend-deadline"


def read_states(client: Any, prefix: str) -> dict[str, str]:
    """Every state stored in Redis (unknown values are ignored: they were not
    written by ``backend set``)."""
    return _states(client.hgetall(state_key(prefix)))


def read_backend_states(client: Any, prefix: str) -> tuple[dict[str, str], dict[str, float]]:
    """The states and the deadlines of the evacuated backends, in one round trip.
    (No MULTI: the two hashes may live on two nodes of a Redis Cluster.
    :func:`write_state` orders its writes so that a state read here is never
    newer than its deadline.)"""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(state_key(prefix))
    pipe.hgetall(deadline_key(prefix))
    stored_states, stored_deadlines = pipe.execute()
    states = _states(stored_states)
    deadlines = {}
    for raw_address, raw_deadline in stored_deadlines.items():
        address = as_text(raw_address)
        if states.get(address) != EVACUATE:
            continue
        try:
            deadlines[address] = float(raw_deadline)
        except ValueError:
            continue  # not written by ``backend set``: the evacuation has no deadline
    return states, deadlines


def _states(stored: dict) -> dict[str, str]:
    states = {}
    for raw_address, raw_state in stored.items():
        state = as_text(raw_state)
        if state in STATES:
            states[as_text(raw_address)] = state
    return states


def write_state(
    client: Any, prefix: str, address: str, state: str, deadline: float | None = None
) -> None:
    """Store ``address``'s state (online: no entry) and, for evacuate, its
    deadline (Unix time): a new deadline before the state, an old one removed
    after it, so that a replica reading in between never ends sessions early."""
    if state == EVACUATE and deadline is not None:
        client.hset(deadline_key(prefix), address, repr(deadline))
    if state == ONLINE:
        client.hdel(state_key(prefix), address)
    else:
        client.hset(state_key(prefix), address, state)
    if state != EVACUATE:
        client.hdel(deadline_key(prefix), address)


def try_order(
    tenant: Tenant,
    user: str,
    rotation: Rotation,
    pinned: str | None,
    state_of: Callable[[str], str],
) -> list[Backend]:
    """The backends a login of ``user`` tries, best first: the routing order
    (policy, then pin) of the online backends, then the standby ones. Pure;
    the ``pop3proxy route`` command shows the same order."""
    ordered = candidates(tenant, user, rotation, pinned)
    online = [backend for backend in ordered if state_of(backend.address) == ONLINE]
    standby = [backend for backend in ordered if state_of(backend.address) == STANDBY]
    return online + standby


StateChange = Callable[[str, str, str], None]
"""``(address, old state, new state)``: called in the process that applies a change."""


class BackendStates(BackgroundReader):
    """This process's copy of the backend states, refreshed from Redis in the background.

    Without Redis (a file store) every backend is online. When Redis cannot
    be reached the last states read stay in force.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        health: RedisHealth | None = None,
        refresh: float = STATE_REFRESH,
    ) -> None:
        super().__init__(client, prefix, health, refresh)
        self.states: dict[str, str] = {}
        self.deadlines: dict[str, float] = {}
        """Evacuated backends' deadlines (Unix time), as stored by ``backend set``."""
        self.on_change: list[StateChange] = []
        """Hooks run for each applied change (the app starts an evacuation)."""

    def state(self, address: str) -> str:
        return self.states.get(address, ONLINE)

    def deadline(self, address: str) -> float | None:
        """When an evacuated backend's last sessions are ended (Unix time)."""
        return self.deadlines.get(address)

    def update(self) -> None:
        """Read the hash once and apply what changed."""
        read = self.health.call(lambda: read_backend_states(self.client, self.prefix), lambda: None)
        if read is None:
            return
        fresh, self.deadlines = read
        old, self.states = self.states, fresh
        for address in sorted(set(old) | set(fresh)):
            before, after = old.get(address, ONLINE), fresh.get(address, ONLINE)
            if before != after:
                self._applied(address, before, after)

    def _applied(self, address: str, before: str, after: str) -> None:
        deadline = self.deadline(address)
        log.info(
            "backend state applied",
            extra={
                "backend": address,
                "state": after,
                "previous": before,
                "deadline": utc_text(deadline) if deadline is not None else None,
            },
        )
        metrics.add(metrics.BACKEND_STATE_CHANGES, after)
        show_state(address, after)
        for hook in self.on_change:
            hook(address, before, after)


def show_state(address: str, state: str) -> None:
    """``pop3proxy_backend_state{backend, state}``: 1 for the current state, 0 for the others."""
    for each in STATES:
        metrics.set_gauge(metrics.BACKEND_STATE, address, each, value=int(each == state))


class BackendPicker:
    """Backend selection, health and active checks for this process."""

    def __init__(
        self,
        settings: BackendsConfig,
        connect_timeout: float,
        dialer: BackendDialer,
        states: BackendStates | None = None,
    ) -> None:
        self.settings = settings
        self.states = states or BackendStates(None, "")
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
        token: bytes | None = None,
    ) -> BackendConnection:
        """Log in to the best usable backend of ``tenant`` for ``user``.

        ``token``: a client's bearer token, passed on to the backend (its
        ``login_command: xoauth2``) instead of ``password``.

        Raises :class:`LoginRefused` when a backend refused the credentials (no
        other backend is tried: it would judge the same password), and
        :class:`BackendUnavailable` when none could be used.
        """
        self._start_checks()
        label = metrics.tenant_label(tenant.name)
        reasons: list[str] = []
        attempts = 0
        order = try_order(tenant, user, self.rotation, pinned, self.states.state)
        if not order:
            reasons.append("no_backend_online")
        for backend in order:
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
                connection = self._login(backend, login_name, password, client, token)
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
        if entry is None:
            show_state(backend.address, self.states.state(backend.address))
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
        self.states.start()
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
        self.states.stop()
        if self._checker is not None:
            self._checker.kill(block=False)

    # -- one backend ---------------------------------------------------------

    def _login(
        self,
        backend: Backend,
        login_name: str,
        password: bytes,
        client: ClientAddress | None,
        token: bytes | None = None,
    ) -> BackendConnection:
        forward = backend.forward_client == "xclient" and client is not None
        pass_token = token is not None and backend.login_command == "xoauth2"
        login = machine.BackendLogin(
            login_name,
            token if pass_token and token is not None else password,
            starttls=backend.tls == "starttls",
            xclient=client.source if forward and client else None,
            sasl_plain=backend.login_command == "auth_plain",
            xoauth2=pass_token,
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
