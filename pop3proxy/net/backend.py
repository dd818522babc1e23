"""One backend connection, driven by the event loop: connect, PROXY header, TLS, login.

:class:`Dialer` is the shell's side of :class:`pop3proxy.interfaces.BackendDialer`:
the domain (:mod:`pop3proxy.backends`) picks the backend and writes the login
machine; the dialer resolves the address, builds the PROXY header and the TLS
context, and runs a :class:`LoginAttempt` while the asking greenlet waits.

The steps are callbacks of one socket's I/O watchers and one timer, like the
client side of a session; the greenlet that asked for the connection waits
once, for the outcome. Driving the same steps through gevent sockets cost
four greenlet waits, each with a watcher, a switch and an exception for the
read that would block, plus a timeout object and gevent's close machinery:
the largest part of a plaintext session's CPU after the relay moved to
callbacks.

The POP3 side is :class:`pop3proxy.protocol.backend.BackendLogin`, sans-IO;
this module only moves its lines. Without a login machine the attempt is an
active health check: connect and read a ``+OK`` greeting.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from gevent.hub import Waiter, get_hub

from pop3proxy.interfaces import (
    Address,
    BackendTarget,
    BackendUnavailable,
    ClientAddress,
    LoginRefused,
)
from pop3proxy.net import tls
from pop3proxy.net.boundary import ErrorBoundary
from pop3proxy.net.endpoint import SHARED_BUFFER, Endpoint
from pop3proxy.net.sockets import READ, WRITE, KernelSocket, RawSocket, is_address, set_nodelay
from pop3proxy.protocol import backend as machine
from pop3proxy.protocol import proxyproto
from pop3proxy.protocol.framing import LINE_TOO_LONG, LineReader

log = logging.getLogger("pop3proxy.upstream")  # the name log filters already know

RECV_SIZE = 16384
"""Status lines are short; a login never reads more than a few hundred bytes."""

Resolved = tuple[int, tuple]
"""An address family and a socket address, as ``getaddrinfo`` gives them."""


@dataclass
class BackendSocket:
    """A logged-in backend connection, ready to relay: the shell's
    :class:`~pop3proxy.interfaces.BackendConnection`."""

    sock: RawSocket
    """The kernel socket, non-blocking."""
    tls: object | None
    """OpenSSL's connection on ``sock`` when the backend speaks TLS."""
    backend: BackendTarget
    leftover: bytes
    """Bytes the backend sent after its login reply (none from a sane server)."""
    endpoint: Endpoint
    """Reads and writes on ``sock`` (through ``tls`` if any), and its watchers:
    the login's, for the relay."""

    @property
    def address(self) -> str:
        return self.backend.address

    def close(self) -> None:
        """End the connection without a word: the backend never enters UPDATE."""
        self.endpoint.close_watchers()
        self.sock.close()


Outcome = BackendSocket | LoginRefused | BackendUnavailable


# Made for every login: a slotted record, not a frozen one (which sets each
# field through object.__setattr__). Not changed after it is made.
@dataclass(slots=True)
class Dial:
    """Where and how to reach one backend."""

    backend: BackendTarget
    addresses: list[Resolved]
    """Tried in order until one accepts the connection."""
    timeout: float
    """Bounds the connect, and then the login exchange."""
    header: bytes = b""
    """A PROXY protocol header to send first (``forward_client: proxy_v1|v2``)."""
    context: ssl.SSLContext | None = None
    """For ``tls: implicit|starttls``."""


class LoginAttempt(ErrorBoundary):
    """Connects to one backend and runs ``login`` on it; ``on_done`` gets the outcome.

    ``on_done`` is called once, from the event loop (or from :meth:`start`
    when no address can even be tried), with a :class:`BackendSocket`, a
    :class:`LoginRefused` or a :class:`BackendUnavailable`. :meth:`cancel`
    drops the attempt without calling it.
    """

    log = log
    failure = "backend login failed"
    connection_lost = "connection_lost"

    def __init__(
        self,
        dial: Dial,
        login: machine.BackendLogin | None,
        on_done: Callable[[Outcome], None],
    ) -> None:
        self.dial = dial
        self.login = login
        self._on_done: Callable[[Outcome], None] | None = on_done
        self._addresses = list(dial.addresses)
        self._loop = get_hub().loop
        self._timer = self._loop.timer(dial.timeout)
        self._sock: RawSocket | None = None
        self._endpoint: Endpoint | None = None
        self._lines = LineReader(machine.MAX_STATUS_LINE)
        self._sslobj: object | None = None
        self._then: Callable[[], None] | None = None
        self._connecting = False
        """Waiting for the greeting before the connect is known to be up."""

    # -- plumbing --------------------------------------------------------------

    def log_context(self) -> dict[str, object]:
        return {"backend": self.dial.backend.address}

    def end_after_error(self, reason: str) -> None:
        """A lost connection or a surprise fails the attempt."""
        self._fail(reason)

    def _wait(self, event: int, step: Callable[[], None]) -> None:
        endpoint = self._endpoint
        assert endpoint is not None
        endpoint.stop_watchers()
        watcher = endpoint.reader if event == READ else endpoint.writer
        watcher.start(self.guarded, step)

    def _arm(self, reason: str) -> None:
        """(Re)start the deadline from now. libev measures timers from the time
        it cached at its last wake-up, which a long stretch of work before this
        (or, in tests, a caller that has not run the loop for a while) makes
        stale: the deadline would fall short, or in the past."""
        self._timer.stop()
        self._loop.update_now()
        self._timer.start(self._deadline, reason)

    def _deadline(self, reason: str) -> None:
        """Time is up. Waiting for a greeting, the connect may have worked all the
        same: then the backend is silent, which is the login's timeout."""
        if self._connecting and _is_connected(self._sock):
            reason = "login_timeout"  # accepted, but no greeting
        self._fail(reason)

    def _end(self, keep_socket: bool) -> Callable[[Outcome], None] | None:
        """Stop the attempt once; returns ``on_done`` the first time, else ``None``.
        A kept socket keeps its endpoint's watchers too, for the relay."""
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            self._timer.stop()
            self._timer.close()
            if keep_socket:
                assert self._endpoint is not None
                self._endpoint.stop_watchers()
            elif self._sock is not None:
                self._release_socket()
        return on_done

    def _finish(self, outcome: Outcome) -> None:
        on_done = self._end(keep_socket=isinstance(outcome, BackendSocket))
        if on_done is not None:
            on_done(outcome)

    def _fail(self, reason: str) -> None:
        self._finish(BackendUnavailable(reason))

    def cancel(self) -> None:
        """Drop the attempt: its connection closes, ``on_done`` is never called."""
        self._end(keep_socket=False)

    # -- connect ---------------------------------------------------------------

    def start(self) -> None:
        self._arm("connect_timeout")
        self._connect_next("connect_failed")

    def _connect_next(self, reason: str) -> None:
        """The next address, or the failure of the last one."""
        if self._sock is not None:
            self._release_socket()
        if not self._addresses:
            self._fail(reason)
            return
        family, address = self._addresses.pop(0)
        # Non-blocking from birth: no fcntl round (two syscalls) after it.
        sock = self._sock = KernelSocket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        set_nodelay(sock)
        self._endpoint = Endpoint(sock)
        error = sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            self._connect_next(_connect_reason(error))
            return
        if self.dial.header or self.dial.backend.tls == "implicit":
            self._wait(WRITE, self._connected)  # the proxy speaks first
        else:
            # The backend does: its greeting shows the connection is up (and a
            # refusal shows as readable too), one wake-up sooner than the connect.
            self._connecting = True
            self._wait(READ, self._readable)

    def _connect_succeeded(self) -> bool:
        """Did the connect work? If not, on to the next address."""
        assert self._sock is not None
        error = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            self._connect_next(_connect_reason(error))
            return False
        self._connection_up()
        return True

    def _connection_up(self) -> None:
        """The deadline starts again, for the login."""
        self._connecting = False
        self._addresses.clear()
        self._arm("login_timeout")

    def _release_socket(self) -> None:
        assert self._sock is not None and self._endpoint is not None
        self._endpoint.close_watchers()
        self._sock.close()
        self._sock = self._endpoint = None
        self._connecting = False

    def _connected(self) -> None:
        if not self._connect_succeeded():
            return
        if self.dial.header:
            self._send(self.dial.header)
        if self.dial.backend.tls == "implicit":
            self._start_tls(self._read)
        else:
            self._read()

    # -- TLS -------------------------------------------------------------------

    def _start_tls(self, then: Callable[[], None]) -> None:
        context = self.dial.context
        assert context is not None and self._sock is not None
        backend = self.dial.backend
        name = backend.server_name or backend.host
        self._sslobj = context._wrap_socket(  # type: ignore[attr-defined]
            self._sock, server_side=False, server_hostname=name
        )
        self._then = then
        self._handshake()

    def _handshake(self) -> None:
        try:
            self._sslobj.do_handshake()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            self._wait(READ, self._handshake)
            return
        except ssl.SSLWantWriteError:
            self._wait(WRITE, self._handshake)
            return
        except OSError as error:
            self._fail(f"tls_{tls.handshake_failure(error).reason}")
            return
        assert self._endpoint is not None and self._then is not None
        self._endpoint.use_tls(self._sslobj)
        then, self._then = self._then, None
        then()

    # -- the login exchange ----------------------------------------------------

    def _send(self, data: bytes) -> None:
        """Commands are short; one the kernel cannot take at once waits for room."""
        assert self._endpoint is not None
        if not self._endpoint.send(data):
            self._wait(WRITE, self._flush)

    def _flush(self) -> None:
        assert self._endpoint is not None
        if self._endpoint.flush():
            self._read()

    def _read(self) -> None:
        endpoint = self._endpoint
        assert endpoint is not None
        if endpoint.outbox:
            return  # _flush reads once the command is out
        self._wait(READ, self._readable)
        if endpoint.buffered():  # OpenSSL already holds the next reply
            self._loop.run_callback(self.guarded, self._readable)

    def _readable(self) -> None:
        endpoint = self._endpoint
        if endpoint is None or self._on_done is None:  # a queued read after the end
            return
        while True:
            try:
                size = endpoint.recv_into(SHARED_BUFFER[:RECV_SIZE])
            except OSError as error:
                if not self._connecting:
                    raise
                # Waiting for the greeting, a failed connect shows here: no
                # SO_ERROR question on the way of every good one.
                self._connect_next(_connect_reason(error.errno or 0))
                return
            if size is None:
                return
            if self._connecting:
                self._connection_up()
            if not size:
                self._fail("closed_during_login")
                return
            self._lines.feed(SHARED_BUFFER[:size])
            if not self._take_lines() or not endpoint.buffered():
                return

    def _take_lines(self) -> bool:
        """Feed the complete lines to the machine; False once the attempt is over."""
        while self._on_done is not None:
            line = self._lines.next_line()
            if line is None:
                return True
            if line is LINE_TOO_LONG:
                self._fail("garbage")
                return False
            assert isinstance(line, bytes)
            if self.login is None:
                self._greeted(line)
                return False
            for action in self.login.receive_line(line):
                self._execute(action)
            if self._sslobj is not None and self._then is not None:
                return False  # a handshake took over
        return False

    def _greeted(self, line: bytes) -> None:
        """An active check: the greeting is all it wants."""
        if line.startswith(b"+OK"):
            self._finish(self._connection(b""))
        else:
            self._fail("bad_greeting")

    def _execute(self, action: machine.BackendAction) -> None:
        if self._on_done is None:
            return
        if isinstance(action, machine.SendToBackend):
            self._send(action.data)
        elif isinstance(action, machine.StartBackendTLS):
            if self._lines.discard():
                self._fail("data_before_tls")
                return
            self._start_tls(self._tls_established)
        elif isinstance(action, machine.LoggedIn):
            leftover = self._lines.take()
            self._finish(self._connection(leftover))
        elif isinstance(action, machine.Failed):
            if action.kind is machine.FailureKind.AUTH:
                self._finish(LoginRefused(action.client_reply, action.reason))
            else:
                self._fail(action.reason)

    def _connection(self, leftover: bytes) -> BackendSocket:
        assert self._sock is not None and self._endpoint is not None
        return BackendSocket(self._sock, self._sslobj, self.dial.backend, leftover, self._endpoint)

    def _tls_established(self) -> None:
        assert self.login is not None
        for action in self.login.tls_established():
            self._execute(action)
        if self._on_done is not None:
            self._read()


def _is_connected(sock: RawSocket | None) -> bool:
    try:
        return sock is not None and bool(sock.getpeername())
    except OSError:
        return False


def _connect_reason(error: int) -> str:
    if error == errno.ECONNREFUSED:
        return "connect_refused"
    if error == errno.ETIMEDOUT:
        return "connect_timeout"
    return "connect_failed"


class Dialer:
    """Connects to backends for the domain (:class:`pop3proxy.interfaces.BackendDialer`)."""

    def dial(
        self,
        backend: BackendTarget,
        timeout: float,
        login: machine.BackendLogin | None,
        client: ClientAddress | None,
    ) -> BackendSocket:
        """Run one attempt on the event loop and wait for its outcome here."""
        addresses = _resolve(backend)
        context = None
        if backend.tls != "none":
            context = tls.client_context(backend.verify, backend.ca_file)
        header = proxy_header(backend, client, addresses[0][1][:2])
        waiter = Waiter()
        attempt = LoginAttempt(
            Dial(backend, addresses, timeout, header, context), login, waiter.switch
        )
        attempt.start()
        try:
            outcome = waiter.get()
        except BaseException:
            attempt.cancel()
            raise
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def _resolve(backend: BackendTarget) -> list[Resolved]:
    """The backend's addresses; an address literal skips the resolver.

    gevent resolves every name on its thread pool, even ``127.0.0.1``: a lock
    hand-off and two context switches per backend session. Backends are very
    often configured by address.
    """
    host, port = backend.host, backend.port
    if is_address(host):
        return [(socket.AF_INET6 if ":" in host else socket.AF_INET, (host, port))]
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise BackendUnavailable("connect_failed") from None
    return [(family, address) for family, _, _, _, address in found]


def proxy_header(backend: BackendTarget, client: ClientAddress | None, peer: Address) -> bytes:
    """The PROXY header for ``forward_client: proxy_v1|proxy_v2``, else nothing.

    Without a client (an active check) it is the LOCAL/UNKNOWN form: the
    connection is the proxy's own. Without the address the client connected
    to, the backend's own stands in.
    """
    if backend.forward_client not in ("proxy_v1", "proxy_v2"):
        return b""
    build = proxyproto.build_v1 if backend.forward_client == "proxy_v1" else proxyproto.build_v2
    if client is None:
        return build(None, None)
    return build(client.source, client.connected_to() or peer)
