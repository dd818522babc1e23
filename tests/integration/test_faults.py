"""Faults: backends that die, stall or talk garbage, clients that vanish, a proxy
that is killed or drained under load.

For each: what the client sees, that another session on the same proxy goes
on, and that no message is deleted unless its own client sent DELE and QUIT
(the Maildir is compared with the expected set after each run). Faults a real
Dovecot can't show on cue come from ``tests/fakes/rude_backend.py``.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time

import pytest
from _reliability import (
    NORMAL_SESSION_BUDGET,
    Background,
    file_proxy,
    normal_session,
)
from fakes.rude_backend import GARBAGE, PARTIAL_BODY, Fault, RudeBackend
from harness.mailbox import retr_wire, sample_messages
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess
from harness.users import USERS
from harness.wire import Pop3Wire

BIG = 6
"""The 5 MB sample message's number."""


def small_window_client(host: str, port: int) -> socket.socket:
    """A client with a small receive buffer, so a 5 MB RETR is still in flight
    when the test pulls the plug (the kernel cannot swallow it all)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.settimeout(10)
    sock.connect((host, port))
    return sock


class BigRetr:
    """A session 64 KiB into RETR of the 5 MB message, after DELE 1 and DELE 2."""

    def __init__(self, proxy: ProxyProcess, user: str, tenant: str = TENANT) -> None:
        self.sock = small_window_client(proxy.host, proxy.ports["plain"])
        self.stream = self.sock.makefile("rb")
        assert self.stream.readline().startswith(b"+OK")  # greeting
        for line in (f"USER {user}@{tenant}", f"PASS {USERS[user]}", "DELE 1", "DELE 2"):
            self.sock.sendall(line.encode() + b"\r\n")
            assert self.stream.readline().startswith(b"+OK"), line
        self.sock.sendall(f"RETR {BIG}\r\n".encode())
        assert self.stream.readline().startswith(b"+OK")
        self.body = self.stream.read(65536)
        assert len(self.body) == 65536

    def read_until_closed(self, limit: float = 10.0) -> bytes:
        """The rest of the body, until the proxy closes (a reset is a close too)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                data = self.stream.read1(65536)
            except ConnectionResetError:
                return self.body
            if not data:
                return self.body
            self.body += data
        raise AssertionError(f"the connection was still open after {limit}s")

    def reset(self) -> None:
        """Vanish with a TCP reset, as a crashed client does."""
        linger = struct.pack("ii", 1, 0)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        self.close()

    def close(self) -> None:
        self.stream.close()
        self.sock.close()


def surviving_messages(dovecot, user: str) -> set[bytes]:
    return {path.read_bytes() for path in dovecot.message_files(user)}


def session_ends(proxy: ProxyProcess, tenant: str) -> list[str]:
    return [record["end"] for record in proxy.sessions() if record.get("tenant") == tenant]


def doomed_address(server) -> str:
    return f"{server.host}:{server.port}"


def shared_dovecot(dovecot) -> dict[str, str]:
    return {TENANT: f"{dovecot.host}:{dovecot.port}"}


# -- the backend dies or the client goes ---------------------------------------


def test_backend_killed_mid_retr(tmp_path, certs, make_dovecot, dovecot, fresh_mailbox):
    """A 5 MB RETR is cut when the backend is SIGKILLed: the client gets a
    prefix of the message and a closed connection (never a made-up end), the
    proxy logs why, a session on another backend goes on, nothing is deleted."""
    fresh_mailbox("bob")
    doomed = make_dovecot()
    messages = sample_messages()
    doomed.reset_mailbox("alice", messages)
    tenants = {TENANT: f"{dovecot.host}:{dovecot.port}", "doomed.example": doomed_address(doomed)}
    with (
        file_proxy(tmp_path, certs, tenants) as proxy,
        Pop3Wire(proxy.host, proxy.ports["plain"]) as other,
    ):
        other.login(f"bob@{TENANT}", USERS["bob"])
        retr = BigRetr(proxy, "alice", "doomed.example")
        os.killpg(doomed.pid, signal.SIGKILL)
        received = retr.read_until_closed()
        retr.close()
        full = retr_wire(messages[BIG - 1])
        assert len(received) < len(full), "the RETR was not in flight when the backend died"
        assert full.startswith(received), "the client got bytes Dovecot never sent"
        # The other session, on the shared Dovecot, did not notice.
        assert other.command("STAT").startswith(b"+OK")
        assert other.command("QUIT").startswith(b"+OK")
        ends = wait_until(lambda: session_ends(proxy, "doomed.example"), 5)
    doomed.stop()
    assert surviving_messages(doomed, "alice") == set(messages)
    assert ends[0] in ("backend_closed", "connection_error")


@pytest.mark.parametrize("listener", ["plain", "pop3s"])
def test_slow_reader_gets_a_big_retr_intact(proxy, certs, fresh_mailbox, listener):
    """A client with a tiny window that stops reading mid-RETR: the relay stops
    reading the backend until the client catches up (back-pressure), then
    delivers the 5 MB message byte for byte; other sessions go on meanwhile."""
    messages = fresh_mailbox("alice")
    fresh_mailbox("bob")
    sock = small_window_client(proxy.host, proxy.ports[listener])
    if listener == "pop3s":
        sock = certs.ssl_client_context().wrap_socket(sock, server_hostname="localhost")
    stream = sock.makefile("rb")
    try:
        assert stream.readline().startswith(b"+OK")
        for line in (f"USER alice@{TENANT}", f"PASS {USERS['alice']}"):
            sock.sendall(line.encode() + b"\r\n")
            assert stream.readline().startswith(b"+OK"), line
        sock.sendall(f"RETR {BIG}\r\n".encode())
        assert stream.readline().startswith(b"+OK")
        head = stream.read(65536)
        # The client reads nothing while another whole session runs: the
        # proxy's send buffer to it fills and the relay has to hold back.
        assert normal_session(proxy, "bob") < NORMAL_SESSION_BUDGET
        expected = retr_wire(messages[BIG - 1])
        rest = stream.read(len(expected) - len(head))
        assert head + rest == expected
        sock.sendall(b"QUIT\r\n")
        assert stream.readline().startswith(b"+OK")
    finally:
        stream.close()
        sock.close()


def test_client_vanishing_mid_retr_deletes_nothing(proxy, dovecot, fresh_mailbox):
    """The client resets the connection 64 KiB into a 5 MB RETR after DELE 1 and
    DELE 2: Dovecot sees no QUIT (never enters UPDATE), all six messages stay,
    and a parallel session completes."""
    messages = fresh_mailbox("carol")
    fresh_mailbox("erin")
    mark = dovecot.log_mark()
    retr = BigRetr(proxy, "carol")
    elapsed = normal_session(proxy, "erin")
    retr.reset()
    dovecot.wait_for_log(r"pop3\(carol\).*Disconnected.*del=0/", since=mark)
    assert surviving_messages(dovecot, "carol") == set(messages)
    assert elapsed < NORMAL_SESSION_BUDGET


# -- the proxy dies or drains under load ---------------------------------------


def _logged_in(proxy: ProxyProcess, user: str, *deletes: int) -> Pop3Wire:
    wire = Pop3Wire(proxy.host, proxy.ports["plain"])
    wire.login(f"{user}@{TENANT}", USERS[user])
    for number in deletes:
        assert wire.command(f"DELE {number}").startswith(b"+OK")
    return wire


def test_sigkill_under_load_deletes_only_what_was_quit(tmp_path, certs, dovecot, fresh_mailbox):
    """SIGKILL with four sessions in flight: one already sent DELE 1 and QUIT
    (its message is gone), one is mid-RETR after DELE, one idles after DELE,
    one is half-way through its login. Every other message survives."""
    proxy = file_proxy(tmp_path, certs, shared_dovecot(dovecot)).start()
    samples = {user: fresh_mailbox(user) for user in ("alice", "bob", "carol")}
    mark = dovecot.log_mark()
    done = _logged_in(proxy, "alice", 1)
    assert done.command("QUIT").startswith(b"+OK")
    done.drop()
    dovecot.wait_for_log(r"pop3\(alice\).*Logged out.*del=1/", since=mark)
    retr = BigRetr(proxy, "bob")
    idle = _logged_in(proxy, "carol", 1, 2, 3)
    half = socket.create_connection((proxy.host, proxy.ports["plain"]), timeout=5)
    half.sendall(b"USER dave@" + TENANT.encode() + b"\r\n")

    proxy.signal(signal.SIGKILL)
    assert proxy.wait(10) == -signal.SIGKILL
    assert idle.read_line() == b""
    retr.read_until_closed()
    for user in ("bob", "carol"):
        dovecot.wait_for_log(rf"pop3\({user}\).*Disconnected.*del=0/", since=mark)
    assert surviving_messages(dovecot, "alice") == set(samples["alice"][1:])
    assert surviving_messages(dovecot, "bob") == set(samples["bob"])
    assert surviving_messages(dovecot, "carol") == set(samples["carol"])
    retr.close()
    half.close()
    idle.drop()


def test_sigterm_drain_under_load_honours_only_quit(tmp_path, certs, dovecot, fresh_mailbox):
    """SIGTERM while one client is mid-RETR and another idles after DELE: the
    listener stops accepting, the reading client finishes its RETR and QUITs
    during the drain (its DELE counts), the idle one is cut without QUIT when
    the drain time is up (its DELE does not)."""
    overrides = {"timeouts": {"drain": "2s"}}
    proxy = file_proxy(tmp_path, certs, shared_dovecot(dovecot), overrides).start()
    bob, carol = fresh_mailbox("bob"), fresh_mailbox("carol")
    mark = dovecot.log_mark()
    busy = _logged_in(proxy, "bob", 1)
    idle = _logged_in(proxy, "carol", 1, 2)
    assert busy.command(f"RETR {BIG}").startswith(b"+OK")
    proxy.signal(signal.SIGTERM)
    wait_until(lambda: any(r.get("message") == "draining" for r in proxy.log_records()), 5)
    with pytest.raises(OSError):
        socket.create_connection((proxy.host, proxy.ports["plain"]), timeout=2).close()
    assert busy.read_multiline() == retr_wire(bob[BIG - 1])
    assert busy.command("QUIT").startswith(b"+OK")
    assert idle.read_line() == b"", "cut when the drain time is up"
    assert proxy.wait(15) == 0
    dovecot.wait_for_log(r"pop3\(bob\).*Logged out.*del=1/", since=mark)
    dovecot.wait_for_log(r"pop3\(carol\).*Disconnected.*del=0/", since=mark)
    assert surviving_messages(dovecot, "bob") == set(bob[1:])
    assert surviving_messages(dovecot, "carol") == set(carol)
    busy.drop()
    idle.drop()


# -- backends a real server can't imitate --------------------------------------


@pytest.fixture(scope="module")
def rude(tmp_path_factory, certs, dovecot):
    """One proxy in front of one rude backend per fault (tenant ``<fault>.example``)
    and the shared Dovecot; returns ``(proxy, {fault: backend})``."""
    backends = {fault: RudeBackend(fault).__enter__() for fault in Fault}
    tenants = shared_dovecot(dovecot)
    tenants.update(
        {f"{fault.value}.example".replace("_", "-"): b.address for fault, b in backends.items()}
    )
    overrides = {"timeouts": {"backend_connect": "2s", "idle": "2s", "drain": "1s"}}
    proxy = file_proxy(tmp_path_factory.mktemp("rude"), certs, tenants, overrides)
    with proxy:
        yield proxy, backends
    for backend in backends.values():
        backend.__exit__(None, None, None)


def tenant_of(fault: Fault) -> str:
    return f"{fault.value}.example".replace("_", "-")


def rude_login(proxy: ProxyProcess, fault: Fault) -> tuple[Pop3Wire, bytes]:
    wire = Pop3Wire(proxy.host, proxy.ports["plain"])
    assert wire.command(f"USER alice@{tenant_of(fault)}").startswith(b"+OK")
    return wire, wire.command("PASS whatever")


def test_backend_stalling_after_greeting(rude, fresh_mailbox):
    """The backend greets and then never answers: the login fails with
    -ERR [SYS/TEMP] after ``timeouts.backend_connect``, the password is never
    sent, and a normal session during the stall is unaffected."""
    fresh_mailbox("erin")
    proxy, backend = rude[0], rude[1][Fault.STALL_AFTER_GREETING]
    fault = Fault.STALL_AFTER_GREETING
    started = time.monotonic()
    stalled = Background(lambda: rude_login(proxy, fault))
    wait_until(lambda: backend.received(), 5, message="the proxy's USER at the backend")
    elapsed = normal_session(proxy, "erin")
    wire, reply = stalled.result()
    waited = time.monotonic() - started
    assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
    assert 1.5 < waited < 5, waited
    assert wire.command("NOOP") == b"+OK\r\n", "the client may retry on the same connection"
    wire.drop()
    assert not any(line.startswith(b"PASS") for line in backend.received())
    assert elapsed < NORMAL_SESSION_BUDGET


def test_backend_stalling_mid_retr(rude, fresh_mailbox):
    """The backend stops in the middle of a RETR: the client gets what was sent
    and then a closed connection at the idle timeout; QUIT never reaches the
    backend; other sessions go on meanwhile."""
    fresh_mailbox("erin")
    proxy, backend = rude[0], rude[1][Fault.STALL_MID_RETR]
    fault = Fault.STALL_MID_RETR
    wire, reply = rude_login(proxy, fault)
    assert reply.startswith(b"+OK")
    wire.send(b"RETR 1\r\n")
    started = time.monotonic()
    assert wire.read_line().startswith(b"+OK")
    elapsed = normal_session(proxy, "erin")
    rest = b""
    while data := wire._stream.read1(65536):
        rest += data
    waited = time.monotonic() - started
    assert rest == PARTIAL_BODY, "what the backend sent, no more, no less"
    assert 1.5 < waited < 6, waited
    wire.drop()
    wait_until(lambda: "idle_timeout" in session_ends(proxy, tenant_of(fault)), 5)
    assert b"QUIT" not in [line.upper() for line in backend.received()]
    assert elapsed < NORMAL_SESSION_BUDGET


def test_backend_garbage_greeting_fails_fast(rude):
    """A backend that answers binary garbage instead of +OK: -ERR [SYS/TEMP] at
    once (no waiting for a timeout), nothing sent to it but maybe a USER."""
    proxy, backend = rude[0], rude[1][Fault.GARBAGE_GREETING]
    fault = Fault.GARBAGE_GREETING
    started = time.monotonic()
    wire, reply = rude_login(proxy, fault)
    assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
    assert time.monotonic() - started < 2
    assert wire.command("NOOP") == b"+OK\r\n"
    wire.drop()
    assert not any(line.startswith(b"PASS") for line in backend.received())


def test_backend_garbage_after_login_is_relayed_not_parsed(rude):
    """After login the proxy is a splice: backend garbage reaches the client
    byte for byte, the proxy does not choke on it, and the client's QUIT still
    reaches the backend exactly once."""
    proxy, backend = rude[0], rude[1][Fault.GARBAGE_AFTER_LOGIN]
    fault = Fault.GARBAGE_AFTER_LOGIN
    wire, reply = rude_login(proxy, fault)
    assert reply.startswith(b"+OK")
    wire.send(b"STAT\r\n")
    got = b""
    while len(got) < len(GARBAGE):
        got += wire._stream.read1(65536)
    assert got == GARBAGE
    assert wire.command("QUIT") == b"+OK bye\r\n"
    assert wire.read_line() == b""
    wire.drop()
    wait_until(lambda: "quit" in session_ends(proxy, tenant_of(fault)), 5)
    assert [line for line in backend.received() if line.upper() == b"QUIT"] == [b"QUIT"]


def test_backend_closing_after_login(rude, fresh_mailbox):
    """The backend closes right after the login (a crash): the client's next
    command ends in a closed connection, logged as backend_closed; a normal
    session afterwards works."""
    fresh_mailbox("erin")
    proxy, backend = rude[0], rude[1][Fault.CLOSE_AFTER_LOGIN]
    fault = Fault.CLOSE_AFTER_LOGIN
    wire, reply = rude_login(proxy, fault)
    assert reply.startswith(b"+OK")
    wire.send(b"STAT\r\n")
    assert wire._stream.read1(65536) == b"", "closed, with nothing made up"
    wire.drop()
    wait_until(lambda: "backend_closed" in session_ends(proxy, tenant_of(fault)), 5)
    assert backend.received() == [b"USER alice", b"PASS whatever", b"STAT"]
    assert normal_session(proxy, "erin") < NORMAL_SESSION_BUDGET
