"""One client connection, from accept to close.

The session owns its sockets and its timeouts: the TLS handshake, the whole
AUTHORIZATION phase (``timeouts.auth``), and the idle timeout while relaying.
It feeds the protocol core, executes its actions, and writes one summary log
line at the end. Errors stop here: whatever one client does, the process and
the other sessions go on.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass

import gevent
from gevent import Timeout

from pop3proxy import metrics
from pop3proxy.backends import ClientAddress
from pop3proxy.config import Config, ListenerConfig
from pop3proxy.limits import Lease
from pop3proxy.login import LoginFailed, LoginService, Session
from pop3proxy.net import tls
from pop3proxy.net.listener import ProxyHeaderRefused, read_proxy_header
from pop3proxy.net.relay import Relay, Traffic
from pop3proxy.net.sockets import send_all, set_nodelay, shutdown
from pop3proxy.protocol import client as core
from pop3proxy.protocol import replies

log = logging.getLogger("pop3proxy.session")

_ids = itertools.count(1)
_PREFIX = os.urandom(3).hex()


def new_session_id() -> str:
    """Unique across replicas in practice: random per process, counted within."""
    return f"{_PREFIX}-{next(_ids):x}"


FLOOD = 4096
"""A client read this large is a pipeline flood, not a person typing: the
reader lets the loop run other sessions before it goes on."""


def share_the_loop(received: int) -> None:
    """Let other sessions run after a large read.

    A gevent socket does not switch while data is ready, so a client that
    keeps its socket readable would hold the loop for as long as it sends.
    ``gevent.idle`` waits until the loop has polled I/O and run everyone
    ready; ordinary clients never read this much at once and never pay.
    """
    if received >= FLOOD:
        gevent.idle()


_FAREWELLS = {
    "auth_timeout": replies.err("Authorization timed out", replies.Code.SYS_TEMP),
    "draining": replies.err("Server is restarting, please reconnect", replies.Code.SYS_TEMP),
}
"""What a client still in AUTHORIZATION hears when the proxy ends its session."""


TOO_MANY_CONNECTIONS = replies.err(
    "Too many connections from your address, try again later", replies.Code.SYS_TEMP
)

_LINGER_ON = frozenset({"quit", "too_many_errors"})
"""Ends where the proxy spoke last in AUTHORIZATION and the client may still be sending.
(After a QUIT relayed in TRANSACTION the backend spoke last, and the client,
which has read everything it sent up to QUIT, has no reason to go on.)"""


class SessionEnded(Exception):
    """Ends the session early; ``reason`` goes to the summary line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Services:
    """What a session needs from the rest of the proxy."""

    config: Config
    logins: LoginService
    server_tls: ssl.SSLContext | None


class ClientSession:
    def __init__(
        self, sock: socket.socket, peer: tuple, listener: ListenerConfig, services: Services
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.listener = listener
        self.services = services
        self.id = new_session_id()
        self.local: tuple[str, int] | None = None
        """The address the client connected to, when a PROXY header said so."""
        self.started = time.monotonic()
        self.traffic = Traffic()
        self._counted = Traffic()
        """What :meth:`flush_metrics` has already added to the counters."""
        self._tenant_label: str | None = None
        self.session: Session | None = None
        self.user: str | None = None
        self.result = "no_login"
        self.connection_lease: Lease | None = None
        settings = core.Settings(
            tls_active=listener.tls == "implicit",
            stls_offered=listener.tls == "starttls",
            require_tls=listener.require_tls,
            max_line=services.config.limits.max_line_length,
            max_errors=services.config.limits.max_errors,
        )
        self.conn = core.ClientConnection(settings)

    @property
    def logged_in(self) -> bool:
        return self.session is not None

    def run(self) -> None:
        reason = "error"
        try:
            reason = self._run()
        except SessionEnded as ended:
            reason = ended.reason
        except OSError:
            reason = "connection_error"
        except Exception:
            log.exception("session failed", extra={"session": self.id})
            reason = "internal_error"
        finally:
            self._close(reason)

    def _run(self) -> str:
        set_nodelay(self.sock)
        timeouts = self.services.config.timeouts
        if self.listener.proxy_protocol:
            self._proxy_header()
        self._admit()
        if self.listener.tls == "implicit":
            self._start_tls()
        with Timeout(timeouts.auth, SessionEnded("auth_timeout")):
            try:
                pending = self._authorize()
            except SessionEnded as ended:
                farewell = _FAREWELLS.get(ended.reason)
                if farewell:
                    self._send_quietly(farewell)
                raise
        return self._relay(pending)

    def _authorize(self) -> list[core.Action]:
        """AUTHORIZATION at the proxy; returns actions queued for TRANSACTION."""
        actions = self.conn.greeting()
        while True:
            pending = self._run_actions(actions)
            if pending is not None:
                return pending
            data = self.sock.recv(4096)
            if not data:
                raise SessionEnded("client_closed")
            actions = self.conn.receive_data(data)
            share_the_loop(len(data))

    def _run_actions(self, actions: list[core.Action]) -> list[core.Action] | None:
        """Execute in order, replies batched into one write; once logged in,
        returns what is left for TRANSACTION."""
        queue = deque(actions)
        replies = bytearray()
        while queue:
            action = queue.popleft()
            if isinstance(action, core.Send):
                replies += action.data
                continue
            if replies:
                send_all(self.sock, replies)
                replies.clear()
            follow_up = self._execute(action)
            if follow_up is not None:
                if self.session is not None:
                    return follow_up + list(queue)
                queue.extendleft(reversed(follow_up))
        if replies:
            send_all(self.sock, replies)
        return None

    def _execute(self, action: core.Action) -> list[core.Action] | None:
        """Run one action other than Send; returns the core's follow-up actions."""
        if isinstance(action, core.StartTLS):
            self._start_tls()
            return self.conn.tls_established()
        elif isinstance(action, core.Login):
            return self._login(action)
        elif isinstance(action, core.Close):
            raise SessionEnded(action.reason)
        return None

    def _start_tls(self) -> None:
        context = self.services.server_tls
        assert context is not None
        try:
            self.sock = tls.accept_tls(
                self.sock, context, self.services.config.timeouts.tls_handshake
            )
        except tls.HandshakeFailed as error:
            metrics.add(metrics.TLS_FAILURES, self.listener.name, error.reason)
            raise SessionEnded("tls_failed") from None

    def _proxy_header(self) -> None:
        """Behind a load balancer: the client's address comes from its PROXY header,
        and from then on is the session's ``peer`` (logs, limits, forwarding)."""
        try:
            header = read_proxy_header(self.sock, self.peer, self.listener)
        except ProxyHeaderRefused:
            raise SessionEnded("proxy_protocol_error") from None
        if header is None:
            raise SessionEnded("client_closed")
        if header.source is not None:
            self.peer = header.source
            self.local = header.destination

    def _admit(self) -> None:
        """One more connection from this address, within its limit?"""
        address = self.peer[0] if self.peer else None
        self.connection_lease = self.services.logins.admit(self.id, address)
        if self.connection_lease is None:
            if self.listener.tls != "implicit":  # a TLS client could not read it
                self._send_quietly(TOO_MANY_CONNECTIONS)
            raise SessionEnded("too_many_connections")

    def _client_address(self) -> ClientAddress | None:
        if not self.peer:
            return None
        local = self.local
        if local is None:
            try:
                local = self.sock.getsockname()[:2]
            except OSError:
                local = None
        return ClientAddress(tuple(self.peer[:2]), local)

    def _login(self, action: core.Login) -> list[core.Action]:
        self.user = action.user
        try:
            self.session = self.services.logins.login(
                action.user,
                action.password,
                sni=tls.server_name(self.sock),
                client=self._client_address(),
                session_id=self.id,
            )
        except LoginFailed as failure:
            self.result = failure.result
            log.info(
                "login failed",
                extra={
                    "session": self.id,
                    "tenant": failure.tenant,
                    "result": failure.result,
                    "detail": failure.detail,
                },
            )
            return self.conn.login_failed(failure.reply)
        self.result = "ok"
        return self.conn.login_succeeded()

    def _relay(self, pending: list[core.Action]) -> str:
        assert self.session is not None
        tenant = metrics.tenant_label(self.session.tenant.name)
        self._tenant_label = tenant
        metrics.add(metrics.SESSIONS_ACTIVE, tenant)
        logged_in = time.monotonic()
        upstream = self.session.upstream
        try:
            relay = Relay(
                self.sock,
                upstream.sock,
                self.conn,
                self.services.config.timeouts.idle,
                self.traffic,
            )
            return relay.run(pending, upstream.leftover)
        finally:
            upstream.sock.close()
            self.services.logins.release(self.session.lease)
            metrics.add(metrics.SESSIONS_ACTIVE, tenant, amount=-1)
            metrics.observe(metrics.SESSION_DURATION, tenant, value=time.monotonic() - logged_in)
            self.flush_metrics()
            self._tenant_label = None

    def flush_metrics(self) -> None:
        """Add the bytes and commands relayed since the last call to the counters.

        Called at the end of the session, and every ``metrics.flush_interval``
        for all sessions by the app, so a long download shows in
        ``pop3proxy_bytes_total`` while it runs, at no cost per chunk.
        """
        tenant = self._tenant_label
        if tenant is None:
            return
        now, counted = self.traffic, self._counted
        sent, received = now.to_backend - counted.to_backend, now.to_client - counted.to_client
        if sent:
            metrics.add(metrics.BYTES, tenant, "client_to_backend", amount=sent)
            counted.to_backend = now.to_backend
        if received:
            metrics.add(metrics.BYTES, tenant, "backend_to_client", amount=received)
            counted.to_client = now.to_client
        for command, count in list(now.commands.items()):
            new = count - counted.commands.get(command, 0)
            if new:
                metrics.add(metrics.COMMANDS, tenant, command, amount=new)
                counted.commands[command] = count

    def _linger(self) -> None:
        """Close our side, then read and drop what the client still sends, briefly.

        Closing a socket with unread input makes the kernel send a reset,
        which can destroy our last reply (the "too many errors" line) before
        the client reads it. Bounded: one second and 64 KiB at most.
        """
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.settimeout(0.2)
            deadline = time.monotonic() + 1.0
            drained = 0
            while drained < 65536 and time.monotonic() < deadline:
                data = self.sock.recv(4096)
                if not data:
                    break
                drained += len(data)

    def _send_quietly(self, data: bytes) -> None:
        """A last word to a client that may not be listening: bounded, never raises."""
        try:
            self.sock.settimeout(1.0)
            self.sock.sendall(data)
        except OSError:
            pass

    def _close(self, reason: str) -> None:
        self.services.logins.release(self.connection_lease)
        if reason in _LINGER_ON and not self.logged_in:
            self._linger()
        shutdown(self.sock)
        self.sock.close()
        if log.isEnabledFor(logging.INFO):
            self._log_summary(reason)

    def _log_summary(self, reason: str) -> None:
        tenant = self.session.tenant.name if self.session else None
        backend = self.session.upstream.backend.address if self.session else None
        log.info(
            "session",
            extra={
                "session": self.id,
                "listener": self.listener.name,
                "client": self.peer[0] if self.peer else None,
                "tenant": tenant,
                "backend": backend,
                "result": self.result,
                "end": reason,
                "bytes_in": self.traffic.to_backend,
                "bytes_out": self.traffic.to_client,
                "commands": sum(self.traffic.commands.values()),
                "duration": round(time.monotonic() - self.started, 3),
            },
        )
