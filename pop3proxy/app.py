"""The composition root: config -> directory -> logins -> listeners -> metrics.

This is where the domain meets the gevent shell (they never import each
other, :mod:`pop3proxy.interfaces`): the login service
(:class:`pop3proxy.login.LoginService`) gets the shell's backend dialer
(:class:`pop3proxy.net.backend.Dialer`), and every client session
(:class:`pop3proxy.net.session.ClientSession`) gets the login service.

Also the process lifecycle: start, serve, and drain on SIGTERM (stop
accepting, let sessions finish within ``timeouts.drain``, then cut the rest
without QUIT to their backends, so nothing is deleted); a second SIGTERM or
SIGINT cuts them at once. SIGHUP reloads the configuration and certificates
(:mod:`pop3proxy.reload`); SIGUSR1 and SIGUSR2 make the log more or less
verbose. With ``workers: N`` the process is a supervisor
(:mod:`pop3proxy.supervisor`, which also picks the process model) and each
worker runs an :class:`App` on the supervisor's listening sockets.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import ssl
import time
from collections.abc import Mapping

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from pop3proxy import __version__, logs, metrics
from pop3proxy.backends import EVACUATE, EVACUATE_QUIET
from pop3proxy.config import Config, ConfigError, ListenerConfig, load_config
from pop3proxy.directory import Directory, open_directory
from pop3proxy.filestore import FileStore
from pop3proxy.login import LoginService
from pop3proxy.net.backend import Dialer
from pop3proxy.net.listener import Listener
from pop3proxy.net.session import ClientSession, Services
from pop3proxy.net.sockets import RawSocket
from pop3proxy.reload import CertificateWatcher, changes, live_config
from pop3proxy.sessions import (
    SYNC_INTERVAL,
    Entry,
    Kick,
    KickScope,
    RecentKicks,
    SessionRegistry,
    answer_kick,
    parse_kick,
    replica_name,
)

log = logging.getLogger("pop3proxy")

WORKER_ENV = "POP3PROXY_WORKER"
"""Set by the supervisor in a worker's environment: the worker's slot number."""
LISTEN_FDS_ENV = "POP3PROXY_LISTEN_FDS"
"""``name=fd,name=fd``: the listening sockets a worker inherits."""


class App:
    def __init__(
        self,
        config: Config,
        directory: Directory | None = None,
        *,
        sockets: Mapping[str, socket.socket] | None = None,
        worker: int | None = None,
    ) -> None:
        self.config = config
        self.worker = worker
        self.directory = directory or open_directory(config.directory)
        metrics.configure(config.metrics.max_tenant_labels)
        self.logins = LoginService(config, self.directory, Dialer())
        self.services = Services(config=config, logins=self.logins, server_tls={})
        self.certificates: CertificateWatcher | None = None
        if any(listener.tls != "none" for listener in config.listeners):
            self.certificates = CertificateWatcher(config.tls, config.listeners, self._use_contexts)
            self.services.server_tls = self.certificates.contexts
        sockets = sockets or {}
        self.listeners = [
            Listener(item, self._handle, sock=sockets.get(item.name)) for item in config.listeners
        ]
        metrics.init_listener_labels(item.name for item in config.listeners)
        self.metrics_server: WSGIServer | None = None
        if config.metrics.host is not None and worker is None:
            address = (config.metrics.host, config.metrics.port)
            self.metrics_server = WSGIServer(address, metrics.wsgi_app(self.ready), log=None)
        self.sessions: set[ClientSession] = set()
        self._no_sessions = Event()
        self._no_sessions.set()
        self._accepting = True
        self.draining = False
        self.stopping = Event()
        self._background: list[gevent.Greenlet] = []
        self.replica = replica_name()
        self._redis = self.directory.store.shared_redis()
        self.registry: SessionRegistry | None = None
        if self._redis is not None:
            self.registry = SessionRegistry(self._redis, config.directory.key_prefix, self.replica)
        self.directory.on_kick = self._on_kick
        self.recent_kicks = RecentKicks(lambda: self.config.timeouts.auth + KICK_MEMORY_MARGIN)
        self.services.kicked_during_login = self._kicked_during_login
        self._evacuations: dict[str, gevent.Greenlet] = {}
        """Backend address -> the greenlet ending its sessions (:meth:`evacuate`)."""
        self.logins.backends.states.on_change.append(self._on_backend_state)
        self._wall_offset = time.time() - time.monotonic()
        """Turns a session's monotonic start into Unix time, the same way every time."""

    def _use_contexts(self, contexts: dict[str, ssl.SSLContext]) -> None:
        self.services.server_tls = contexts

    def _handle(self, sock: RawSocket, peer: tuple, listener: ListenerConfig) -> None:
        """A new connection (from a listener's accept callback): its session takes over."""
        metrics.add(metrics.CONNECTIONS, listener.name)
        metrics.add(metrics.CONNECTIONS_ACTIVE, listener.name)
        session = ClientSession(sock, peer, listener, self.services, self._session_closed)
        self.sessions.add(session)
        self._no_sessions.clear()
        if len(self.sessions) >= self.config.limits.max_connections:
            self._pause_accepting()
        log.debug("connection", extra={"session": session.id, "listener": listener.name})
        session.start()

    def _session_closed(self, session: ClientSession) -> None:
        metrics.add(metrics.CONNECTIONS_ACTIVE, session.listener.name, amount=-1)
        self.sessions.discard(session)
        if not self.sessions:
            self._no_sessions.set()
        if not self._accepting and len(self.sessions) < self.config.limits.max_connections:
            self._accepting = True
            for listener in self.listeners:
                listener.resume()

    def _pause_accepting(self) -> None:
        """At ``limits.max_connections``: new clients wait in the kernel's accept queue."""
        self._accepting = False
        for listener in self.listeners:
            listener.pause()

    def ready(self) -> bool:
        return not self.draining and self.directory.ready()

    def start(self) -> None:
        self.directory.start()  # change subscription (Redis) or file watcher
        self.logins.start()  # lease renewal
        if self.metrics_server is not None:
            self.metrics_server.start()
        for listener in self.listeners:
            listener.start()
            host, port = listener.address
            log.info(
                "listening",
                extra={
                    "listener": listener.config.name,
                    "address": f"{host}:{port}",
                    "tls": listener.config.tls,
                },
            )
        if self.certificates is not None:
            self.certificates.start()
        self._background.append(gevent.spawn(self._flush_metrics))
        if self.registry is not None:
            self._background.append(gevent.spawn(self._sync_registry))
        if isinstance(self.directory.store, FileStore):
            self._background.append(gevent.spawn(self._follow_tenants_file, self.directory.store))
        if self.worker is not None:
            self._background.append(gevent.spawn(self._watch_parent, os.getppid()))
        log.info("started", extra={"version": __version__, "pid": os.getpid()})

    def _flush_metrics(self) -> None:
        """Counts reach the exported values every ``flush_interval``, those of
        running sessions (bytes, commands) included."""
        while True:
            gevent.sleep(self.config.metrics.flush_interval)
            for session in list(self.sessions):
                session.flush_metrics()
            metrics.fold()

    # -- who and kick (pop3proxy.sessions) ----------------------------------------

    def describe(self, session: ClientSession) -> Entry:
        """A session as ``who`` lists it and a kick's scope matches it."""
        login = session.login
        return {
            "id": session.id,
            "user": login.user if login else None,
            "tenant": login.tenant if login else None,
            "client": session.peer[0] if session.peer else None,
            "listener": session.listener.name,
            "backend": login.backend.address if login else None,
            "credential": login.credential if login else None,
            "phase": session.phase,
            "started": round(session.started + self._wall_offset, 3),
            "bytes_in": session.traffic.to_backend,
            "bytes_out": session.traffic.to_client,
        }

    def _sync_registry(self) -> None:
        """Every :data:`SYNC_INTERVAL`: the logged-in sessions to Redis, in one
        pipeline. The first write is at once: it lists this replica, whose
        answers a kick then waits for."""
        registry, health = self.registry, self.directory.store.shared_health()
        assert registry is not None and health is not None
        while True:
            # Skipped while Redis is known to be down; everything is written again after.
            health.call(lambda: self._write_registry(registry), lambda: None)
            gevent.sleep(SYNC_INTERVAL)

    def _write_registry(self, registry: SessionRegistry) -> None:
        by_id = {session.id: session for session in self.sessions if session.phase == "relay"}
        states = {
            session_id: (session.traffic.to_backend, session.traffic.to_client)
            for session_id, session in by_id.items()
        }
        registry.sync(states, lambda session_id: self.describe(by_id[session_id]))

    def _on_kick(self, message: str) -> None:
        """A kick from the change channel: end the matching sessions here, then answer."""
        try:
            kick = parse_kick(message)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("kick message unreadable: ignored", extra={"change": message[:200]})
            return
        gevent.spawn(self._kick, kick)

    def _kick(self, kick: Kick) -> None:
        scope, reason = kick.scope, kick.reason
        self.recent_kicks.add(scope, time.monotonic())
        ended = 0
        for session in list(self.sessions):
            if not session.ended and scope.matches(self.describe(session)):
                session.end("kicked")
                ended += 1
        _count_kick(scope, reason or None, ended, kick.by, kick.id)
        if self._redis is not None:
            try:
                answer_kick(
                    self._redis, self.config.directory.key_prefix, kick.id, self.replica, ended
                )
            except Exception as error:
                log.warning("kick: cannot answer", extra={"error": str(error)})

    def _kicked_during_login(self, session: ClientSession, began: float) -> bool:
        """Does a kick applied here since ``began`` (the login's start) match
        ``session``, which has just logged in? Then it ends before TRANSACTION
        (:class:`RecentKicks`): counted and logged like the kick's own sessions."""
        if not self.recent_kicks:  # almost always: no dict built, no clock read
            return False
        scope = self.recent_kicks.matching(self.describe(session), began, time.monotonic())
        if scope is None:
            return False
        metrics.add(metrics.KICKED_SESSIONS, scope.scope)
        log.info(
            "kicked after login",
            extra={"session": session.id, "scope": scope.scope, "value": scope.value},
        )
        return True

    # -- a tenants file that withdraws a tenant ------------------------------------

    def _follow_tenants_file(self, store: FileStore) -> None:
        """With ``directory.store: file`` no kick carries the news that a tenant
        was disabled or removed: each process, after each reload of the file
        (on change or SIGHUP), ends the sessions of such tenants itself, and
        remembers each as a tenant kick for the logins still under way."""
        seen = store.reloads
        enabled = _enabled_tenants(store)
        while True:
            gevent.sleep(TENANTS_FILE_CHECK)
            if store.reloads != seen:
                seen = store.reloads
                now_enabled = _enabled_tenants(store)
                for name in enabled - now_enabled:
                    self.recent_kicks.add(KickScope("tenant", name), time.monotonic())
                enabled = now_enabled
                self._end_withdrawn_tenants(store)

    def _end_withdrawn_tenants(self, store: FileStore) -> None:
        ended: dict[str, int] = {}
        for session in list(self.sessions):
            login = session.login
            if login is None or session.ended:
                continue
            tenant = store.get(login.tenant)
            if tenant is None or not tenant.enabled:
                session.end("kicked")
                ended[login.tenant] = ended.get(login.tenant, 0) + 1
        for name, count in sorted(ended.items()):
            reason = "tenant deleted" if store.get(name) is None else "tenant disabled"
            _count_kick(KickScope("tenant", name), reason, count, "tenants file")

    # -- evacuation (backend state evacuate) ---------------------------------------

    def _on_backend_state(self, address: str, before: str, after: str) -> None:
        """A backend state change applied here: an evacuation starts (also when
        this process starts and finds the backend evacuated: same deadline)."""
        if after == EVACUATE and address not in self._evacuations:
            self._evacuations[address] = gevent.spawn(self.evacuate, address)

    def evacuate(self, address: str) -> None:
        """End this replica's sessions on ``address`` while it stays evacuated:
        each once it has been quiet for :data:`EVACUATE_QUIET` seconds with no
        reply in flight, every one left at the deadline, as a kick does (no
        QUIT to the backend). New logins do not go there (``try_order``), but a
        login under way when the state arrived may still land: it is ended too.
        Costs one pass over this replica's sessions every half second, until
        the state changes or, past the deadline, nothing can land there any more."""
        states = self.logins.backends.states
        begun = time.time()
        ended = {"quiet": 0, "deadline": 0}
        metrics.add(metrics.KICKS, EVACUATE)
        log.info(
            "evacuation started",
            extra={
                "backend": address,
                "deadline": _when(states.deadline(address)),
                "sessions": len(self._sessions_on(address)),
            },
        )
        emptied = False
        try:
            while states.state(address) == EVACUATE:
                deadline = states.deadline(address)
                due = deadline is not None and time.time() >= deadline
                now = time.monotonic()
                remaining = self._sessions_on(address)
                for session in remaining:
                    if due or session.quiet_for(now) >= EVACUATE_QUIET:
                        session.end("evacuated")
                        ended["deadline" if due else "quiet"] += 1
                        metrics.add(metrics.KICKED_SESSIONS, EVACUATE)
                if not remaining and not emptied:
                    log.info("evacuation done", extra={"backend": address, **ended})
                emptied = not remaining
                if emptied and due and time.time() >= max(deadline or 0, begun) + LATE_LOGINS:
                    return  # the backend stays evacuated; nothing is left to end here
                gevent.sleep(EVACUATE_TICK)
        finally:
            del self._evacuations[address]
        log.info(
            "evacuation stopped",
            extra={"backend": address, "state": states.state(address), **ended},
        )

    def _sessions_on(self, address: str) -> list[ClientSession]:
        return [
            session
            for session in self.sessions
            if session.login is not None
            and not session.ended
            and session.login.backend.address == address
        ]

    def _watch_parent(self, parent: int) -> None:
        """A worker whose supervisor is gone drains and exits instead of lingering."""
        while os.getppid() == parent:
            gevent.sleep(1.0)
        log.warning("supervisor gone: draining", extra={"parent": parent})
        self.stopping.set()

    def drain(self) -> None:
        """Stop accepting, wait for sessions up to ``timeouts.drain``, cut the rest."""
        self.draining = True
        for listener in self.listeners:
            listener.close()
        log.info(
            "draining",
            extra={"sessions": len(self.sessions), "timeout": self.config.timeouts.drain},
        )
        for session in list(self.sessions):
            if not session.logged_in:
                session.end("draining")
        if not self._no_sessions.wait(timeout=self.config.timeouts.drain):
            log.warning(
                "drain timeout: closing remaining sessions",
                extra={"sessions": len(self.sessions)},
            )
            self._end_sessions("drain_timeout")
            self._no_sessions.wait(timeout=5)

    def _end_sessions(self, reason: str) -> None:
        for session in list(self.sessions):
            session.end(reason)

    def serve_forever(self) -> None:
        self.start()
        signals = [signal.SIGTERM]
        if self.worker is None:
            signals.append(signal.SIGINT)
        else:
            # A terminal's Ctrl-C reaches the whole process group: the
            # supervisor turns it into one SIGTERM per worker instead.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        for signum in signals:
            gevent.signal_handler(signum, self._on_signal, signum)
        gevent.signal_handler(signal.SIGHUP, self._spawn_reload)
        gevent.signal_handler(signal.SIGUSR1, change_log_level, -1)
        gevent.signal_handler(signal.SIGUSR2, change_log_level, +1)
        self.stopping.wait()
        self.drain()
        for greenlet in [*self._background, *self._evacuations.values()]:
            greenlet.kill(block=False)
        self.directory.stop()
        if self.registry is not None:
            try:
                self.registry.clear()
            except Exception as error:
                log.warning("session registry: cannot clear", extra={"error": str(error)})
        self.logins.stop()
        if self.certificates is not None:
            self.certificates.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop(timeout=1)
        metrics.fold()  # a worker's last counts reach its multiprocess files
        log.info("stopped")

    def _on_signal(self, signum: int) -> None:
        if self.stopping.is_set():
            log.warning("second signal: stopping now")
            self._end_sessions("stopping")
            raise SystemExit(0)
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        self.stopping.set()

    def _spawn_reload(self) -> None:
        gevent.spawn(self.reload)

    def reload(self) -> None:
        """SIGHUP: certificates, then what can change live in the configuration file."""
        log.info("reload requested", extra={"signal": "SIGHUP"})
        new = read_config(self.config)
        if new is None:
            if self.certificates is not None:
                self.certificates.reload()
            return
        live, restart = changes(self.config, new)
        merged = live_config(self.config, new)
        if self.certificates is not None and not self.certificates.reload(merged.tls):
            merged = _with_tls(merged, self.config)
            live = [part for part in live if part != "tls"]
        self.config = merged
        self.services.config = merged
        self.logins.config = merged
        apply_logging(merged)
        metrics.configure(merged.metrics.max_tenant_labels)
        self.directory.reload()  # a tenants file is read again; Redis: the cache expires
        log_reload(live, restart)


TENANTS_FILE_CHECK = 1.0
"""Seconds between two looks at whether the tenants file was reloaded."""
EVACUATE_TICK = 0.5
"""Seconds between two looks at an evacuated backend's sessions."""
KICK_MEMORY_MARGIN = 5.0
"""Seconds a replica keeps a kick beyond ``timeouts.auth``, the longest a login
can take: a login under way when the kick arrived still meets it at its end."""
LATE_LOGINS = 60.0
"""Seconds after an evacuation's deadline (or its start here, if later) during
which a login that was under way when the state arrived may still land on
the backend: its replica keeps looking until then."""


def _enabled_tenants(store: FileStore) -> set[str]:
    return {name for name, tenant in store.tenants.items() if tenant.enabled}


def _when(deadline: float | None) -> str | None:
    return logs.utc_text(deadline) if deadline is not None else None


def _count_kick(
    scope: KickScope,
    reason: str | None,
    sessions: int,
    by: str | None,
    kick_id: str | None = None,
) -> None:
    """One kick acted on here, from the channel or from a tenants file: its
    metrics and its ``kick`` log line."""
    metrics.add(metrics.KICKS, scope.scope)
    metrics.add(metrics.KICKED_SESSIONS, scope.scope, amount=sessions)
    record = {
        "scope": scope.scope,
        "value": scope.value,
        "reason": reason,
        "sessions": sessions,
        "by": by,
    }
    if kick_id is not None:
        record["kick"] = kick_id
    log.info("kick", extra=record)


def _with_tls(config: Config, running: Config) -> Config:
    return dataclasses.replace(config, tls=running.tls)


def read_config(running: Config) -> Config | None:
    """The configuration file as it is now; ``None`` (and a logged reason) if unusable."""
    if running.source is None:
        log.warning("reload: no configuration file to read; certificates only")
        return None
    try:
        return load_config(running.source)
    except ConfigError as error:
        log.error(
            "reload failed: configuration invalid, nothing changed",
            extra={"problems": error.problems},
        )
        return None


def apply_logging(config: Config) -> None:
    """The configured level and format; undoes SIGUSR1/SIGUSR2 steps."""
    logs.set_level(config.logging.level)
    logs.set_format(config.logging.format)


def log_reload(live: list[str], restart: list[str]) -> None:
    log.info("configuration reloaded", extra={"changed": live or None})
    if restart:
        log.warning(
            "configuration changes need a restart to apply",
            extra={"needs_restart": restart},
        )


def change_log_level(steps: int) -> None:
    """SIGUSR1 (``-1``: more verbose) and SIGUSR2 (``+1``: less)."""
    level = logs.step_level(steps)
    # Said at warning so the change shows whatever the new level.
    log.warning("log level changed", extra={"log_level": level})


def inherited_sockets(value: str) -> dict[str, socket.socket]:
    """Parse :data:`LISTEN_FDS_ENV` into listening sockets by listener name."""
    sockets = {}
    for item in filter(None, value.split(",")):
        name, _, fd = item.rpartition("=")
        sockets[name] = socket.socket(fileno=int(fd))
    return sockets
