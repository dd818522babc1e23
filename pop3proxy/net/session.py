"""One client connection, from accept to close, driven by the event loop.

The session is a state machine (:data:`Phase`, one section of this class
per phase) run by the callbacks of its socket's I/O watchers and timers:
PROXY header, admission, TLS handshake, AUTHORIZATION (fed to the sans-IO
core), the login, then the relay. Nothing waits in a greenlet except what
has to block: the login (directory, Redis, argon2; the backend's own login
runs on callbacks too, :mod:`pop3proxy.net.backend`, and the greenlet waits
once for it) and, when the per-address limit lives in Redis, the admission;
those greenlets are parked between tasks (:mod:`pop3proxy.net.tasks`).
gevent's socket objects and a greenlet per connection cost about 0.7 ms of
CPU per session, more than nginx spends on a whole one; an idle session
here holds its socket's two watchers and a few objects.

The session knows the domain only through :class:`pop3proxy.interfaces.Logins`
(admission, login, slots), which the app hands it in :class:`Services`.

The session owns its timeouts: the TLS handshake, the whole AUTHORIZATION
phase (``timeouts.auth``), and, through the relay, the idle timeout. It
writes one summary log line at the end. Errors stop at one boundary
(:mod:`pop3proxy.net.boundary`): whatever one client does, the process and
the other sessions go on.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import gevent
from gevent.hub import get_hub

from pop3proxy import metrics
from pop3proxy.config import Config, ListenerConfig
from pop3proxy.interfaces import ClientAddress, Lease, LoggedIn, LoginFailed, Logins
from pop3proxy.net import tls
from pop3proxy.net.backend import BackendSocket
from pop3proxy.net.boundary import Ended, ErrorBoundary
from pop3proxy.net.endpoint import CLIENT_RECV, SHARED_BUFFER, Endpoint
from pop3proxy.net.listener import ProxyHeaderRefused, refuse_proxy_header, trusted
from pop3proxy.net.relay import Relay, TrackedRelay, Traffic
from pop3proxy.net.sockets import READ, WRITE, RawSocket
from pop3proxy.net.tasks import Task, Tasks
from pop3proxy.protocol import client as core
from pop3proxy.protocol import proxyproto, replies

log = logging.getLogger("pop3proxy.session")

_ids = itertools.count(1)
_PREFIX = os.urandom(3).hex()


def new_session_id() -> str:
    """Unique across replicas in practice: random per process, counted within."""
    return f"{_PREFIX}-{next(_ids):x}"


_FAREWELLS = {
    "auth_timeout": replies.err("Authorization timed out", replies.Code.SYS_TEMP),
    "draining": replies.err("Server is restarting, please reconnect", replies.Code.SYS_TEMP),
    "kicked": replies.err("Session ended by the administrator", replies.Code.SYS_TEMP),
}
"""What a client still in AUTHORIZATION hears when the proxy ends its session."""

TOO_MANY_CONNECTIONS = replies.err(
    "Too many connections from your address, try again later", replies.Code.SYS_TEMP
)

_LINGER_ON = frozenset({"quit", "too_many_errors"})
"""Ends where the proxy spoke last in AUTHORIZATION and the client may still be sending.
(After a QUIT relayed in TRANSACTION the backend spoke last, and the client,
which has read everything it sent up to QUIT, has no reason to go on.)"""
LINGER_SECONDS = 1.0
LINGER_BYTES = 65536


Phase = Literal[
    "accepted",
    "proxy_header",
    "admission",
    "tls_handshake",
    "authorization",
    "login",
    "relay",
    "closing",
    "closed",
]
"""Where a client session is in its life, in order::

    accepted
      -> proxy_header     the load balancer's header (listener.proxy_protocol)
      -> admission        one more connection from this address? (may ask Redis)
      -> tls_handshake    implicit TLS, before the greeting
      -> authorization    greeting out; commands go through the sans-IO core
           <-> tls_handshake   after STLS
           <-> login           a login in a greenlet; back here when it fails
      -> relay            TRANSACTION: the relay owns both sockets
    any -> closing        slots go back; the client's last bytes are drained
        -> closed         socket closed, summary logged

Steps that do not apply are skipped (no PROXY header, no TLS). Each phase
is entered in one method below, under a heading of its name.

Strings with a ``Literal`` type, not an ``enum.Enum``: mypy still refuses a
phase that does not exist, and a comparison is a pointer check, where each
read of an Enum member goes through ``EnumType``'s ``__getattr__`` on Python
3.11 (an Enum here measured 8 % more instructions for a connect-and-QUIT
session, ``bench/instructions.py``).
"""

_ENDED: tuple[Phase, ...] = ("closing", "closed")


class SessionEnded(Ended):
    """Ends a login in progress from outside (timeout, drain); ``reason`` goes to the log."""


@dataclass
class Services:
    """What a session needs from the rest of the proxy."""

    config: Config
    logins: Logins
    """The domain: admission, login, slots (:class:`pop3proxy.login.LoginService`)."""
    server_tls: Mapping[str, ssl.SSLContext]
    """Each TLS listener's context, by listener name (swapped whole on a reload)."""
    tasks: Tasks = field(default_factory=Tasks)
    """Greenlets for logins and admissions (:mod:`pop3proxy.net.tasks`)."""
    kicked_during_login: Callable[[ClientSession, float], bool] = lambda session, began: False
    """Whether a kick that arrived since ``began`` (monotonic, the login's start)
    matches a session that just logged in (the app's kicks, :mod:`pop3proxy.sessions`)."""
    _settings: dict[str, tuple[ListenerConfig, Config, core.Settings]] = field(default_factory=dict)

    def client_settings(self, listener: ListenerConfig) -> core.Settings:
        """The protocol core's settings for ``listener``, built once per listener
        and configuration rather than once per connection."""
        config = self.config
        limits = config.limits
        cached = self._settings.get(listener.name)
        if cached is not None and cached[0] is listener and cached[1] is config:
            return cached[2]
        settings = core.Settings(
            tls_active=listener.tls == "implicit",
            stls_offered=listener.tls == "starttls",
            require_tls=listener.require_tls,
            max_line=limits.max_line_length,
            max_errors=limits.max_errors,
            mechanisms=config.auth.mechanisms,
        )
        self._settings[listener.name] = (listener, config, settings)
        return settings


class _Handshake:
    """The ``tls_handshake`` phase: OpenSSL's connection, its deadline, what follows."""

    __slots__ = ("then", "timer", "tls")

    def __init__(self, tls: tls.ServerTLS, timer: Any, then: Callable[[], None]) -> None:
        self.tls = tls
        self.timer = timer
        self.then = then


class ClientSession(ErrorBoundary):
    """One client connection. Slotted, like the relay and the protocol core:
    an idle session's memory is mostly these objects."""

    __slots__ = (  # noqa: RUF023 (grouped by phase, not sorted)
        # The whole session.
        "_loop",
        "_reader",
        "_timer",
        "client",
        "conn",
        "connection_lease",
        "id",
        "listener",
        "local",
        "login",
        "on_closed",
        "peer",
        "phase",
        "result",
        "server_name",
        "services",
        "sock",
        "started",
        "traffic",
        # One phase each.
        "_header",  # proxy_header
        "_header_bytes",  # proxy_header
        "_handshake",  # tls_handshake
        "_when_flushed",  # authorization
        "_task",  # admission, login
        "_relay",  # relay
        "_lingered",  # closing
    )

    log = log
    failure = "session failed"

    def __init__(
        self,
        sock: RawSocket,
        peer: tuple,
        listener: ListenerConfig,
        services: Services,
        on_closed: Callable[[ClientSession], None] = lambda session: None,
    ) -> None:
        """``sock``: the accepted kernel socket, non-blocking; ``on_closed``: once, at the end."""
        self.sock = sock
        self.peer = peer
        self.listener = listener
        self.services = services
        self.on_closed = on_closed
        self.id = new_session_id()
        self.phase: Phase = "accepted"
        self.started = time.monotonic()
        self.local: tuple[str, int] | None = None
        """The address the client connected to, when a PROXY header said so."""
        self.server_name: str | None = None
        """The TLS server name the client asked for (SNI), once a handshake is done."""
        self.connection_lease: Lease | None = None
        """This connection's slot among its address's (from admission to the end)."""
        self.login: LoggedIn | None = None
        """What the login handed over: the backend, tenant and user (from relay on)."""
        self.result = "no_login"
        self.traffic = Traffic()
        self.conn = core.ClientConnection(services.client_settings(listener))
        self.client = Endpoint(sock)
        self._loop = get_hub().loop
        self._reader = self.client.reader
        self._timer: Any = None
        """The deadline of the current phase: PROXY header, AUTHORIZATION, linger."""
        self._header: proxyproto.HeaderReader | None = None
        self._header_bytes = 0
        self._handshake: _Handshake | None = None
        self._when_flushed: Callable[[], None] | None = None
        """What follows once the replies queued so far have left."""
        self._task: Task | None = None
        """The greenlet of a login (or admission) in progress."""
        self._relay: Relay | None = None
        self._lingered = 0

    @property
    def logged_in(self) -> bool:
        return self.login is not None

    @property
    def ended(self) -> bool:
        """Closing or closed: nothing more is done for it from outside."""
        return self.phase in _ENDED

    # -- plumbing --------------------------------------------------------------

    def log_context(self) -> dict[str, object]:
        return {"session": self.id}

    def end_after_error(self, reason: str) -> None:
        self._close(reason)

    def _read_with(self, step: Callable[[], None]) -> None:
        self._reader.stop()
        self._reader.start(self.guarded, step)

    def _arm(self, seconds: float, step: Callable[[], None]) -> None:
        self._disarm()
        self._timer = self._loop.timer(seconds)
        self._timer.start(self.guarded, step)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None

    def _send(self, data: bytes) -> None:
        """Write a reply; a client that does not read its replies is not read either."""
        if not self.client.send(data):
            self._reader.stop()
            self.client.writer.start(self.guarded, self._flush)

    def _flush(self) -> None:
        if self.client.flush():
            self.client.writer.stop()
            then, self._when_flushed = self._when_flushed, None
            if then is not None:
                then()
            else:
                self._resume_reading()

    def _after_flush(self, then: Callable[[], None]) -> None:
        """Run ``then`` once every reply queued so far has left; stop reading until then."""
        if not self.client.outbox:
            then()
            return
        self._reader.stop()
        self._when_flushed = then

    def _spawn(self, task: Callable[..., None], *args: object) -> None:
        self._task = self.services.tasks.spawn(self._run_task, task, args)

    def _abandon_task(self, reason: str) -> None:
        """Stop a login (or admission) in progress: ``SessionEnded`` at its next
        wait (one not started yet finds the session closed). The login gives
        back what it has taken by then (:meth:`LoginService.login`)."""
        task, self._task = self._task, None
        if task is not None and not task.running_here():
            self._loop.run_callback(task.throw, SessionEnded(reason))

    def _run_task(self, task: Callable[..., None], args: tuple) -> None:
        if self.phase in _ENDED:
            return
        try:
            self.guarded(task, *args)
        except gevent.GreenletExit:
            pass  # whoever ended the session closes it
        finally:
            if self._task is not None and self._task.running_here():
                self._task = None

    # -- accepted, proxy_header ------------------------------------------------

    def start(self) -> None:
        """Take over a freshly accepted connection (called from the accept callback)."""
        self.guarded(self._start)

    def _start(self) -> None:
        if self.listener.proxy_protocol:
            self._expect_proxy_header()
        else:
            self._admit()

    def _expect_proxy_header(self) -> None:
        """Behind a load balancer: the client's address comes from its PROXY header,
        and from then on is the session's ``peer`` (logs, limits, forwarding).
        Reads never go past the header, so a TLS ClientHello behind it stays put."""
        self.phase = "proxy_header"
        if not trusted(self.peer, self.listener.proxy_protocol_trusted):
            self._refuse_header(ProxyHeaderRefused("untrusted"))
            return
        self._header = proxyproto.HeaderReader()
        self._arm(self.listener.proxy_protocol_timeout, self._header_timed_out)
        self._read_with(self._read_header)

    def _read_header(self) -> None:
        assert self._header is not None
        size = self.client.recv_into(SHARED_BUFFER[: self._header.wanted()])
        if size is None:
            return
        if not size:
            if self._header_bytes == 0:  # a load balancer's TCP health check
                self._close("client_closed")
            else:
                self._refuse_header(ProxyHeaderRefused("malformed", "truncated"))
            return
        self._header_bytes += size
        try:
            header = self._header.feed(bytes(SHARED_BUFFER[:size]))
        except proxyproto.ProxyProtocolError as error:
            self._refuse_header(ProxyHeaderRefused("malformed", error.reason))
            return
        if header is None:
            return
        self._reader.stop()
        self._disarm()
        self._header = None
        if header.source is not None:
            self.peer = header.source
            self.local = header.destination
        self._admit()

    def _header_timed_out(self) -> None:
        self._refuse_header(ProxyHeaderRefused("timeout"))

    def _refuse_header(self, refused: ProxyHeaderRefused) -> None:
        refuse_proxy_header(refused, self.peer, self.listener)
        self._close("proxy_protocol_error")

    # -- admission -------------------------------------------------------------

    def _admit(self) -> None:
        """One more connection from this address, within its limit? (Redis: in a greenlet.)"""
        self.phase = "admission"
        if self.services.config.limits.max_connections_per_address and self.peer:
            self._spawn(self._admit_blocking)
        else:
            self._admitted(self.services.logins.admit(self.id, None))

    def _admit_blocking(self) -> None:
        lease = self.services.logins.admit(self.id, self.peer[0])
        self._task = None
        self._admitted(lease)

    def _admitted(self, lease: Lease | None) -> None:
        if self.phase in _ENDED:
            self.services.logins.release(lease)
            return
        self.connection_lease = lease
        if lease is None:
            if self.listener.tls != "implicit":  # a TLS client could not read it
                self._send_quietly(TOO_MANY_CONNECTIONS)
            self._close("too_many_connections")
        elif self.listener.tls == "implicit":
            self._start_tls(self._authorize)
        else:
            self._authorize()

    # -- tls_handshake ---------------------------------------------------------

    def _start_tls(self, then: Callable[[], None]) -> None:
        """Implicit TLS before the greeting, or after STLS; ``then`` once done."""
        self.phase = "tls_handshake"
        context = self.services.server_tls[self.listener.name]
        self._reader.stop()
        timer = self._loop.timer(self.services.config.timeouts.tls_handshake)
        self._handshake = _Handshake(tls.ServerTLS(self.sock, context), timer, then)
        timer.start(self.guarded, self._handshake_failed, "timeout")
        self._handshake_step()

    def _stop_handshake(self) -> None:
        handshake, self._handshake = self._handshake, None
        if handshake is not None:
            handshake.timer.stop()
            handshake.timer.close()

    def _handshake_step(self) -> None:
        handshake = self._handshake
        assert handshake is not None
        try:
            wait = handshake.tls.handshake()
        except tls.HandshakeFailed as error:
            self._handshake_failed(error.reason)
            return
        self.client.stop_watchers()
        if wait == READ:
            self._reader.start(self.guarded, self._handshake_step)
        elif wait == WRITE:
            self.client.writer.start(self.guarded, self._handshake_step)
        else:
            self._stop_handshake()
            self.server_name = tls.server_name(handshake.tls)
            sslobj = handshake.tls.sslobj
            self.client.use_tls(sslobj)
            metrics.add(
                metrics.TLS_HANDSHAKES, self.listener.name, sslobj.version(), sslobj.cipher()[0]
            )
            handshake.then()

    def _handshake_failed(self, reason: str) -> None:
        self._stop_handshake()
        metrics.add(metrics.TLS_FAILURES, self.listener.name, reason)
        self._close("tls_failed")

    # -- authorization ---------------------------------------------------------

    def _authorize(self) -> None:
        self.phase = "authorization"
        self._arm(self.services.config.timeouts.auth, self._auth_timed_out)
        self._run_actions(self.conn.greeting())
        self._resume_reading()

    def _resume_reading(self) -> None:
        if self.phase != "authorization" or self.client.outbox:
            return
        self._read_with(self._read_commands)
        if self.client.buffered():
            self._read_commands()

    def _read_commands(self) -> None:
        if self.phase in _ENDED:  # a read queued before the end
            return
        size = self.client.recv_into(SHARED_BUFFER[:CLIENT_RECV])
        if size is None:
            return
        if not size:
            self._close("client_closed")
            return
        self._run_actions(self.conn.receive_data(SHARED_BUFFER[:size]))
        if self._reader.active and self.client.buffered():  # OpenSSL holds more
            self._loop.run_callback(self.guarded, self._read_commands)

    def _run_actions(self, actions: list[core.Action]) -> None:
        """Replies go out in one write per batch; the first action that needs
        more than a write (TLS, a login, the end) takes over the rest."""
        replies_out = bytearray()
        for index, action in enumerate(actions):
            if isinstance(action, core.Send):
                replies_out += action.data
                continue
            if replies_out:
                self._send(bytes(replies_out))
            rest = actions[index + 1 :]
            if isinstance(action, core.StartTLS):
                self._after_flush(lambda: self._start_tls(self._tls_established))
            elif isinstance(action, core.Login):
                self._reader.stop()
                self.phase = "login"
                self._spawn(self._log_in, action, rest, time.monotonic())
            elif isinstance(action, core.Close):
                self._after_flush(functools.partial(self._close, action.reason))
            return
        if replies_out:
            self._send(bytes(replies_out))

    def _tls_established(self) -> None:
        self.phase = "authorization"
        self._run_actions(self.conn.tls_established())
        self._resume_reading()

    def _auth_timed_out(self) -> None:
        self._end_unauthorized("auth_timeout")

    def _end_unauthorized(self, reason: str) -> None:
        """Before TRANSACTION: a last word (when there is one) and close; a login
        in progress is abandoned, and its backend connection closed without QUIT.
        Only a client past its greeting and not mid-handshake can read the word."""
        self._abandon_task(reason)
        farewell = _FAREWELLS.get(reason)
        if farewell and self.phase in ("authorization", "login"):
            self._send_quietly(farewell)
        self._close(reason)

    # -- login (a greenlet) ------------------------------------------------------

    def _client_address(self) -> ClientAddress | None:
        if not self.peer:
            return None
        return ClientAddress(tuple(self.peer[:2]), self.local, self.sock)

    def _log_in(self, action: core.Login, rest: list[core.Action], began: float) -> None:
        try:
            login = self.services.logins.login(
                action.user,
                action.password,
                sni=self.server_name,
                client=self._client_address(),
                session_id=self.id,
                listener=self.listener.name,
                mechanism=action.mechanism,
                token=action.token,
            )
        except LoginFailed as failure:
            self._task = None
            self.result = failure.result
            log.info(
                "login failed",
                extra={
                    "session": self.id,
                    "tenant": failure.tenant,
                    "user": failure.log_user,
                    "result": failure.result,
                    "detail": failure.detail,
                },
            )
            if self.phase not in _ENDED:
                self.phase = "authorization"
                self._run_actions(self.conn.login_failed(failure.reply, failure.challenge) + rest)
                self._resume_reading()
            return
        self._task = None
        if self.phase in _ENDED:  # ended while the login finished: drop it, no QUIT
            self.services.logins.abandon(login)
            return
        self.login = login
        self.result = "ok"
        if self.services.kicked_during_login(self, began):
            # Missed by a kick that arrived mid-login: ended as that kick would have.
            self.services.logins.abandon(login)
            self._end_unauthorized("kicked")
            return
        self._relay_from(login, self.conn.login_succeeded() + rest)

    # -- relay (TRANSACTION) -----------------------------------------------------

    def _relay_from(self, login: LoggedIn, pending: list[core.Action]) -> None:
        self.phase = "relay"
        self._disarm()  # the client's watchers are Relay.start's to stop as it takes them over
        backend = login.backend
        assert isinstance(backend, BackendSocket)  # the shell's own dialer made it
        tenant = metrics.tenant_label(login.tenant)
        metrics.add(metrics.SESSIONS_ACTIVE, tenant)
        relay_args = (
            self.client,
            backend.endpoint,
            self.conn,
            self.services.config.timeouts.idle,
            self.traffic,
            tenant,
            lambda reason: self.guarded(self._relay_ended, reason),
        )
        if login.meter is None and login.uidl_map is None:
            self._relay = Relay(*relay_args)
        else:  # replies followed one by one: only for the sessions that need it
            self._relay = TrackedRelay(*relay_args, meter=login.meter, uidl_map=login.uidl_map)
        self._relay.start(pending, backend.leftover)

    def _relay_ended(self, reason: str) -> None:
        relay, login = self._relay, self.login
        assert relay is not None and login is not None
        login.backend.close()
        metrics.add(metrics.SESSIONS_ACTIVE, relay.tenant, amount=-1)
        metrics.observe(
            metrics.SESSION_DURATION, relay.tenant, value=time.monotonic() - relay.started
        )
        relay.flush_metrics()
        self._relay = None
        # The session's slots go back before the client sees the end, so a
        # client that reconnects at once does not meet its own [IN-USE].
        self.services.logins.release(login.lease, lambda: self._close(reason))

    def end(self, reason: str) -> None:
        """End the session from outside: the proxy is draining or stopping, or an
        operator kicked it (``kicked``); in TRANSACTION, without QUIT to the backend."""
        if self.phase in _ENDED:
            return
        if self._relay is not None:
            self._relay.stop(reason)
        elif not self.logged_in:
            self._end_unauthorized(reason)

    def quiet_for(self, now: float) -> float:
        """Seconds (to monotonic ``now``) its relay has moved nothing with no reply
        in flight; 0 outside TRANSACTION. An evacuation ends a session once it
        has been quiet for a moment, so that no reply is ever cut."""
        relay = self._relay
        if relay is None or relay.in_flight:
            return 0.0
        return now - relay.last_activity

    def flush_metrics(self) -> None:
        """Called every ``metrics.flush_interval`` for all sessions by the app, so
        a long download shows in ``pop3proxy_bytes_total`` while it runs."""
        if self._relay is not None:
            self._relay.flush_metrics()

    # -- closing, closed ---------------------------------------------------------

    def _send_quietly(self, data: bytes) -> None:
        """A last word to a client that may not be listening: one try, never raises."""
        with contextlib.suppress(OSError):
            self.client.send(data)

    def _close(self, reason: str) -> None:
        if self.phase in _ENDED:
            return
        self.phase = "closing"
        self._disarm()
        self._stop_handshake()
        self.client.stop_watchers()
        self._abandon_task(reason)
        linger = reason in _LINGER_ON and not self.logged_in
        lease, self.connection_lease = self.connection_lease, None
        self.services.logins.release(
            lease, lambda: self._linger(reason) if linger else self._closed(reason)
        )

    def _linger(self, reason: str) -> None:
        """Close our side, then read and drop what the client still sends, briefly.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy our last reply (the "too many errors" line) before
        the client reads it. Bounded: one second and 64 KiB at most.
        """
        try:
            self.client.flush()
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._closed(reason)
            return
        self._timer = self._loop.timer(LINGER_SECONDS)
        self._timer.start(self._closed, reason)
        self._reader.start(self._drain_input, reason)

    def _drain_input(self, reason: str) -> None:
        try:
            size = self.client.recv_into(SHARED_BUFFER[:4096])
        except OSError:
            size = 0
        if size is None:
            return
        self._lingered += size
        if not size or self._lingered >= LINGER_BYTES:
            self._closed(reason)

    def _closed(self, reason: str) -> None:
        """The socket goes, and the summary line is written (once)."""
        if self.phase == "closed":
            return
        self.phase = "closed"
        self._disarm()
        self.client.close_watchers()
        self.sock.close()  # the FIN (or a reset, with input unread): no shutdown() first
        self.on_closed(self)
        if log.isEnabledFor(logging.INFO):
            self._log_summary(reason)

    def _log_summary(self, reason: str) -> None:
        login = self.login
        log.info(
            "session",
            extra={
                "session": self.id,
                "listener": self.listener.name,
                "client": self.peer[0] if self.peer else None,
                "tenant": login.tenant if login else None,
                "user": login.log_user if login else None,
                "backend": login.backend.address if login else None,
                "mechanism": login.mechanism if login else None,
                # an app password's id and label ("credential" would be dropped as a secret)
                "app_id": login.credential if login else None,
                "app_label": login.credential_label if login else None,
                "result": self.result,
                "end": reason,
                "bytes_in": self.traffic.to_backend,
                "bytes_out": self.traffic.to_client,
                "commands": sum(self.traffic.commands.values()),
                "duration": round(time.monotonic() - self.started, 3),
            },
        )
