"""The backend connection on the event loop, in this process, against a real Dovecot.

The proxy-level tests (routing, backend TLS, faults) cover what a client
sees; these cover what only the driver itself shows: a name with several
addresses, the outcome kinds, the connection being usable for the relay
afterwards, and that an abandoned login leaves no descriptor behind.
"""

from __future__ import annotations

import os
import socket
import time

import gevent
import gevent.event
import pytest
from fakes.backend import FakeBackend
from harness.dovecot import Dovecot
from harness.ports import LOOPBACK, free_port
from harness.users import MASTER_USERS, USERS, WRONG_PASSWORD

from pop3proxy.backends import BackendPicker
from pop3proxy.config import BackendsConfig
from pop3proxy.interfaces import BackendUnavailable, LoginRefused
from pop3proxy.net.backend import BackendSocket, Dial, Dialer, LoginAttempt
from pop3proxy.protocol.backend import BackendLogin
from pop3proxy.tenants import Backend, Tenant


def picker() -> BackendPicker:
    return BackendPicker(BackendsConfig(max_attempts=1), 5.0, Dialer())


def tenant(*backends: Backend) -> Tenant:
    return Tenant("upstream.example", backends)


def log_in(backend: Backend, password: str = USERS["alice"]) -> BackendSocket:
    connection = picker().open(tenant(backend), "alice", password.encode(), user="alice")
    assert isinstance(connection, BackendSocket)
    return connection


def command(upstream: BackendSocket, line: bytes) -> bytes:
    """One command over the logged-in connection, through the relay's endpoint."""
    endpoint = upstream.endpoint
    assert endpoint.send(line)
    received = bytearray()
    buffer = memoryview(bytearray(4096))
    hub = gevent.get_hub()
    readable = hub.loop.io(endpoint.fd, 1)
    try:
        with gevent.Timeout(5):
            while not received.endswith(b"\r\n"):
                hub.wait(readable)
                size = endpoint.recv_into(buffer)
                if size:
                    received += buffer[:size]
    finally:
        readable.close()
    return bytes(received)


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_logged_in_connection_is_ready_to_relay(dovecot: Dovecot) -> None:
    upstream = log_in(Backend(dovecot.host, dovecot.port))
    try:
        assert upstream.leftover == b""
        assert upstream.tls is None
        assert upstream.sock.gettimeout() == 0.0  # non-blocking, for the relay's watchers
        assert command(upstream, b"STAT\r\n").startswith(b"+OK ")
    finally:
        upstream.close()


def test_every_address_of_a_name_is_tried(dovecot: Dovecot) -> None:
    """A name resolving to several addresses (``localhost``: ::1 and 127.0.0.1)
    is tried address by address until one answers."""
    backend = Backend("localhost", dovecot.port)
    nobody = (socket.AF_INET, (LOOPBACK, free_port()))
    listening = (socket.AF_INET, (LOOPBACK, dovecot.port))
    outcome = gevent.event.AsyncResult()
    login = BackendLogin("alice", USERS["alice"].encode(), starttls=False)
    LoginAttempt(Dial(backend, [nobody, listening], 5.0), login, outcome.set).start()
    upstream = outcome.get(timeout=10)
    assert isinstance(upstream, BackendSocket)
    assert upstream.sock.getpeername()[:2] == listening[1]
    upstream.close()


def test_a_name_resolves(dovecot: Dovecot) -> None:
    upstream = log_in(Backend("localhost", dovecot.port))
    upstream.close()


def test_tls_to_the_backend_reads_through_openssl(dovecot: Dovecot) -> None:
    assert dovecot.pop3s_port is not None
    backend = Backend(dovecot.host, dovecot.pop3s_port, tls="implicit", verify=False)
    upstream = log_in(backend)
    try:
        assert upstream.tls is not None
        assert command(upstream, b"STAT\r\n").startswith(b"+OK ")
    finally:
        upstream.close()


def test_a_wrong_password_is_a_refusal_not_an_outage(dovecot: Dovecot) -> None:
    with pytest.raises(LoginRefused):
        log_in(Backend(dovecot.host, dovecot.port), WRONG_PASSWORD)


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("garbage", "garbage"), ("close", "closed_during_login")],
)
def test_a_broken_backend_says_how(behaviour: str, reason: str) -> None:
    with FakeBackend(behaviour) as fake, pytest.raises(BackendUnavailable) as failure:
        log_in(Backend(fake.host, fake.port))
    assert failure.value.reason == reason


def test_nothing_listening_is_refused() -> None:
    with pytest.raises(BackendUnavailable) as failure:
        log_in(Backend(LOOPBACK, free_port()))
    assert failure.value.reason == "connect_refused"


def test_a_silent_backend_times_out() -> None:
    with FakeBackend("stall") as fake, pytest.raises(BackendUnavailable) as failure:
        log_in(Backend(fake.host, fake.port, connect_timeout=0.3))
    assert failure.value.reason == "login_timeout"


def test_a_connect_that_never_completes_times_out_as_a_connect() -> None:
    """The login waits for the greeting rather than the connect; when the
    deadline comes first, it still tells an unanswered connect (here: a full
    accept queue, where Linux drops the SYN) from a silent backend."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        queued = socket.create_connection((LOOPBACK, port))  # fills the queue of one
        with queued, pytest.raises(BackendUnavailable) as failure:
            log_in(Backend(LOOPBACK, port, connect_timeout=0.3))
    assert failure.value.reason == "connect_timeout"


def test_deadlines_count_from_now_even_after_the_loop_stood_still(dovecot: Dovecot) -> None:
    """libev caches the time at each wake-up: a deadline armed after the loop
    stood still for longer than the deadline itself must not fire at once."""
    backend = Backend(dovecot.host, dovecot.port, connect_timeout=1.0)
    log_in(backend).close()  # the loop runs and notes the time
    time.sleep(1.5)  # then stands still: a long stretch of work, or a caller not running it
    log_in(backend).close()


def test_an_abandoned_login_leaves_no_descriptor() -> None:
    """A session that ends mid-login kills its greenlet: the attempt must close its socket."""
    before = open_descriptors()
    with FakeBackend("stall") as fake:
        logins = [gevent.spawn(log_in, Backend(fake.host, fake.port)) for _ in range(20)]
        with gevent.Timeout(5):
            while fake.accepted < len(logins):  # every login is waiting for a greeting
                gevent.sleep(0.01)
        gevent.killall(logins, timeout=5)
        assert all(login.dead for login in logins)
        # what is left open is the fake's own side (its listener and the 20 it holds)
        assert open_descriptors() == before + 1 + len(logins)
    assert open_descriptors() == before


def test_auth_plain_logs_in_to_dovecot_in_one_command(dovecot: Dovecot) -> None:
    """``login_command: auth_plain``: Dovecot takes AUTH PLAIN with the
    initial response, and the connection relays as after USER and PASS."""
    upstream = log_in(Backend(dovecot.host, dovecot.port, login_command="auth_plain"))
    try:
        assert command(upstream, b"STAT\r\n").startswith(b"+OK ")
    finally:
        upstream.close()


def test_auth_plain_as_a_master_user(dovecot: Dovecot) -> None:
    """``auth: local`` tenants log in as ``user*master``: Dovecot reads the
    separator in AUTH PLAIN's login name as it does in USER's."""
    (master, password), *_ = MASTER_USERS.items()
    backend = Backend(dovecot.host, dovecot.port, login_command="auth_plain")
    name = f"alice*{master}"
    upstream = picker().open(tenant(backend), name, password.encode(), user="alice")
    assert isinstance(upstream, BackendSocket)
    try:
        assert command(upstream, b"STAT\r\n").startswith(b"+OK ")
    finally:
        upstream.close()


def test_auth_plain_with_a_wrong_password_is_a_refusal(dovecot: Dovecot) -> None:
    backend = Backend(dovecot.host, dovecot.port, login_command="auth_plain")
    with pytest.raises(LoginRefused) as refused:
        log_in(backend, WRONG_PASSWORD)
    assert refused.value.reply.startswith(b"-ERR [AUTH]")


def test_auth_plain_too_long_for_one_line_goes_after_the_challenge(dovecot: Dovecot) -> None:
    """A password that makes the command pass 255 octets: AUTH PLAIN alone,
    then the response to Dovecot's empty challenge (here, refused: the
    password is wrong, but it was read as a password, not as garbage)."""
    backend = Backend(dovecot.host, dovecot.port, login_command="auth_plain")
    with pytest.raises(LoginRefused):
        log_in(backend, "x" * 300)


@pytest.mark.parametrize(
    ("login_command", "sent"),
    [
        ("user_pass", [b"USER alice", b"PASS secret"]),
        ("auth_plain", [b"AUTH PLAIN AGFsaWNlAHNlY3JldA=="]),
    ],
)
def test_the_backend_hears_the_login_command_of_its_record(
    login_command: str, sent: list[bytes]
) -> None:
    with FakeBackend("agree") as fake:
        backend = Backend(fake.host, fake.port, login_command=login_command)
        upstream = log_in(backend, "secret")
        upstream.close()
        assert fake.lines == sent
