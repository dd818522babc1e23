"""Hostile input: each gets a clear -ERR or a closed connection, memory stays
bounded, and a normal session running at the same time finishes within a second.

One proxy for the module (tenants from a file), with short auth and TLS
handshake timeouts so that the slow attacks end within the test.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import ssl
import struct
import time

import pytest
import yaml
from _reliability import (
    NORMAL_SESSION_BUDGET,
    RSS_GROWTH_BOUND_KB,
    Background,
    file_proxy,
    gauge,
    normal_session,
    open_fds,
    rss_kb,
)
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess
from harness.users import USERS
from harness.wire import Pop3Wire

from pop3proxy.config import ConfigError, parse_config

USER = "erin"
"""The parallel normal sessions read this user's mailbox; hostile sessions log in as dave."""
LOGIN = ("dave@" + TENANT, USERS["dave"])
MEGABYTE = 1 << 20


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, certs, dovecot):
    overrides = {"timeouts": {"auth": "3s", "tls_handshake": "2s", "drain": "1s"}}
    tenants = {TENANT: f"{dovecot.host}:{dovecot.port}"}
    with file_proxy(tmp_path_factory.mktemp("hostile"), certs, tenants, overrides) as proxy:
        yield proxy


@pytest.fixture
def proxy(hostile, fresh_mailbox):
    """The module's proxy, a fresh mailbox for the normal sessions, and the
    memory bound checked after the test."""
    fresh_mailbox(USER)
    fresh_mailbox("dave")
    normal_session(hostile, USER)  # warm up: first-use imports and pools are not growth
    before = rss_kb(hostile.proc.pid)
    yield hostile
    grown = rss_kb(hostile.proc.pid) - before
    assert grown < RSS_GROWTH_BOUND_KB, f"RSS grew by {grown} kB"
    assert hostile.proc.poll() is None, "the proxy process died"


def connect(proxy: ProxyProcess, listener: str = "plain") -> Pop3Wire:
    return Pop3Wire(proxy.host, proxy.ports[listener], timeout=10)


def logged_in(proxy: ProxyProcess) -> Pop3Wire:
    wire = connect(proxy)
    wire.login(*LOGIN)
    return wire


# -- lines ---------------------------------------------------------------------


@pytest.mark.parametrize("crlf", [True, False], ids=["with-crlf", "without-crlf"])
def test_overlong_line_before_login(proxy, crlf):
    """A megabyte line gets one "-ERR Line too long" (once, however it ends),
    and the session goes on."""
    with connect(proxy) as wire:
        wire.send(b"NOOP " + b"x" * MEGABYTE + (b"\r\n" if crlf else b""))
        assert wire.read_line() == b"-ERR Line too long\r\n"
        elapsed = normal_session(proxy, USER)
        if not crlf:
            wire.send(b"x" * 1000 + b"\r\n")  # the rest of the overlong line is skipped
        assert wire.command("NOOP") == b"+OK\r\n"
    assert elapsed < NORMAL_SESSION_BUDGET


@pytest.mark.parametrize("crlf", [True, False], ids=["with-crlf", "without-crlf"])
def test_overlong_line_after_login(proxy, crlf):
    """In TRANSACTION the overlong line never reaches the backend as such: a
    placeholder does, so the client's -ERR comes in order and STAT still works."""
    with logged_in(proxy) as wire:
        wire.send(b"LIST " + b"9" * MEGABYTE + (b"\r\n" if crlf else b""))
        if not crlf:
            wire.send(b"\r\n")
        assert wire.read_line().startswith(b"-ERR")
        elapsed = normal_session(proxy, USER)
        assert wire.command("STAT").startswith(b"+OK 6 ")
    assert elapsed < NORMAL_SESSION_BUDGET


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"NOOP\x00", b"-ERR NUL and CR are not allowed in a command\r\n"),
        (b"NO\x00OP", b"-ERR NUL and CR are not allowed in a command\r\n"),
        (b"\xff\xfe\xfd CAPA", b"-ERR Unknown command\r\n"),
        (b"USER \xff\xfe@" + TENANT.encode(), b"-ERR User name must be UTF-8\r\n"),
        (b"USER \xc3\x28@" + TENANT.encode(), b"-ERR User name must be UTF-8\r\n"),
        (b"USER a\rPASS b", b"-ERR NUL and CR are not allowed in a command\r\n"),
        (b"\x80\x81\x82\x83", b"-ERR Unknown command\r\n"),
    ],
    ids=[
        "nul-end",
        "nul-inside",
        "8bit-keyword",
        "bad-utf8-user",
        "overlong-utf8",
        "bare-cr",
        "8bit",
    ],
)
def test_nul_8bit_and_invalid_utf8_before_login(proxy, line, reply):
    """NUL, a bare CR, 8-bit keywords and invalid UTF-8 user names before login:
    each gets its own clear -ERR, and the session goes on."""
    with connect(proxy) as wire:
        wire.send(line + b"\r\n")
        assert wire.read_line() == reply
        assert wire.command("NOOP") == b"+OK\r\n"


def test_nul_8bit_and_invalid_utf8_after_login(proxy, dovecot):
    """NUL or a bare CR in TRANSACTION never reaches Dovecot (it could split the
    line into a command the proxy never saw); 8-bit bytes are the backend's to
    refuse. Every line gets exactly one -ERR, in order."""
    mark = dovecot.log_mark()
    with logged_in(proxy) as wire:
        wire.send(b"STAT\x00\r\nDELE 1\rQUIT\r\nLIST \xff\xfe\r\nUIDL \xc3\x28\r\n")
        for _ in range(4):
            assert wire.read_line().startswith(b"-ERR")
        assert wire.command("STAT").startswith(b"+OK 6 ")
        wire.command("QUIT")
    dovecot.wait_for_log(r"pop3\(dave\).*Logged out.*del=0/", since=mark)
    assert dovecot.message_count("dave") == 6


def test_commands_one_byte_per_packet(proxy):
    """A whole session, every byte its own TCP segment: same replies as usual."""
    with connect(proxy) as wire:
        wire.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def slow(line: bytes) -> bytes:
            for byte in line + b"\r\n":
                wire.send(bytes([byte]))
            return wire.read_line()

        assert slow(b"CAPA").startswith(b"+OK")
        assert b"USER\r\n" in wire.read_multiline()
        assert slow(f"USER {LOGIN[0]}".encode()).startswith(b"+OK")
        assert slow(f"PASS {LOGIN[1]}".encode()).startswith(b"+OK")
        assert slow(b"STAT").startswith(b"+OK 6 ")
        assert slow(b"QUIT").startswith(b"+OK")


# -- volume --------------------------------------------------------------------


def _pipeline(wire: Pop3Wire, payload: bytes, lines: int) -> list[bytes]:
    """Send ``payload`` while reading ``lines`` replies (a client that only
    writes would deadlock against a proxy that answers)."""
    reader = Background(lambda: [wire.read_line() for _ in range(lines)])
    wire.send(payload)
    return reader.result(60)


def test_megabyte_of_pipelined_commands_before_login(proxy):
    """174763 NOOPs in one go get as many +OK, in order; then a login works. A
    normal session meanwhile must finish within a second."""
    count = MEGABYTE // len(b"NOOP\r\n") + 1
    with connect(proxy) as wire:
        reader = Background(lambda: _pipeline(wire, b"NOOP\r\n" * count, count))
        elapsed = normal_session(proxy, USER)
        assert set(reader.result(60)) == {b"+OK\r\n"}
        wire.login(*LOGIN)
        assert wire.command("STAT").startswith(b"+OK 6 ")
    assert elapsed < NORMAL_SESSION_BUDGET


def test_megabyte_of_pipelined_commands_after_login(proxy):
    """A megabyte of pipelined STATs after login all reach Dovecot, in order; a
    normal session meanwhile finishes within a second."""
    count = MEGABYTE // len(b"STAT\r\n") + 1
    with logged_in(proxy) as wire:
        reader = Background(lambda: _pipeline(wire, b"STAT\r\n" * count, count))
        elapsed = normal_session(proxy, USER)
        replies = reader.result(60)
        assert len(replies) == count and all(r.startswith(b"+OK 6 ") for r in replies)
        assert wire.command("NOOP").startswith(b"+OK")
    assert elapsed < NORMAL_SESSION_BUDGET


def test_megabyte_of_garbage_commands_hits_the_error_budget(proxy):
    """Garbage lines by the megabyte: -ERR for each up to the error budget, then
    the connection is closed at once (the rest of the megabyte is never read, so
    the close may come as a reset that swallows the last replies)."""
    expected = [b"-ERR Unknown command\r\n"] * 10
    expected.append(b"-ERR Too many errors, closing connection\r\n")
    with connect(proxy) as wire:
        with contextlib.suppress(OSError):  # the proxy may close while we still send
            wire.send(b"BOGUS\r\n" * (MEGABYTE // 7))
        replies = []
        with contextlib.suppress(ConnectionResetError):
            while line := wire.read_line():
                replies.append(line)
        assert replies == expected[: len(replies)]
    assert normal_session(proxy, USER) < NORMAL_SESSION_BUDGET


# -- slow and half-open clients ------------------------------------------------


def test_slowloris_clients_are_cut_at_the_auth_timeout(proxy):
    """Twenty clients send a USER line one byte a second: normal sessions go on
    meanwhile, and each slow client is told -ERR [SYS/TEMP] and closed when
    ``timeouts.auth`` (3 s here) is up, however busy it keeps the socket."""
    slow = [connect(proxy) for _ in range(20)]
    line = f"USER {LOGIN[0]}\r\n".encode()
    started = time.monotonic()
    timings = []
    for second, byte in enumerate(line):
        for wire in slow:
            with contextlib.suppress(OSError):
                wire.send(bytes([byte]))
        timings.append(normal_session(proxy, USER))
        if time.monotonic() - started > 6:
            break
        # One byte a second: the normal session above takes part of it.
        time.sleep(max(0.0, started + second + 1 - time.monotonic()))
    for wire in slow:
        assert wire.read_line() == b"-ERR [SYS/TEMP] Authorization timed out\r\n"
        assert wire.read_line() == b""
        wire.drop()
    assert max(timings) < NORMAL_SESSION_BUDGET, timings


def test_silence_after_stls_is_cut_at_the_handshake_timeout(proxy):
    """STLS and then nothing: closed after ``timeouts.tls_handshake`` (2 s)."""
    with connect(proxy, "pop3") as wire:
        assert wire.command("STLS").startswith(b"+OK")
        started = time.monotonic()
        wire.sock.settimeout(10)
        assert wire.sock.recv(100) == b""
        assert 1.5 < time.monotonic() - started < 5


@pytest.mark.parametrize("listener", ["pop3", "pop3s"])
def test_garbage_instead_of_client_hello(proxy, listener):
    """Plain POP3 where a ClientHello belongs: closed (maybe after an alert)."""
    with (
        connect(proxy, "pop3")
        if listener == "pop3"
        else socket.create_connection((proxy.host, proxy.ports["pop3s"]), timeout=5) as conn
    ):
        sock = conn.sock if isinstance(conn, Pop3Wire) else conn
        if listener == "pop3":
            assert conn.command("STLS").startswith(b"+OK")
        sock.sendall(b"USER alice\r\nPASS x\r\n" + bytes(range(256)))
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(4096):
                received += data
        assert b"+OK" not in received, "garbage must never be read as POP3"
    assert normal_session(proxy, USER) < NORMAL_SESSION_BUDGET


# -- AUTH PLAIN ----------------------------------------------------------------


def _plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        ([b"AUTH PLAIN !!!not-base64!!!"], b"-ERR Invalid base64 in AUTH PLAIN response\r\n"),
        ([b"AUTH PLAIN", b"@@@@"], b"-ERR Invalid base64 in AUTH PLAIN response\r\n"),
        ([b"AUTH PLAIN " + base64.b64encode(b"no-nul")], b"-ERR [AUTH] Malformed"),
        ([b"AUTH PLAIN " + base64.b64encode(b"\0\0\0\0")], b"-ERR [AUTH] Malformed"),
        ([b"AUTH PLAIN " + b"QUFB" * 50_000], b"-ERR Line too long\r\n"),
        ([b"AUTH PLAIN", b"QUFB" * 50_000], b"-ERR Line too long\r\n"),
        ([b"AUTH PLAIN " + base64.b64encode(b"\0" + b"u" * 300 + b"\0pw")], b"-ERR [AUTH]"),
    ],
    ids=[
        "bad-b64",
        "bad-b64-continued",
        "no-nul",
        "empty-parts",
        "huge",
        "huge-continued",
        "user-too-long",
    ],
)
def test_auth_plain_garbage(proxy, lines, reply):
    """AUTH PLAIN with bad base64, missing NULs, a 200 KB response (inline or as
    a continuation), an overlong user: a specific -ERR, back in AUTHORIZATION,
    and a correct AUTH PLAIN then works on the same connection."""
    with connect(proxy) as wire:
        for line in lines[:-1]:
            assert wire.command(line.decode()) == b"+ \r\n"
        wire.send(lines[-1] + b"\r\n")
        assert wire.read_line().startswith(reply)
        assert wire.command("NOOP") == b"+OK\r\n", "back in AUTHORIZATION"
        wire.send(b"AUTH PLAIN " + _plain(*LOGIN) + b"\r\n")
        assert wire.read_line().startswith(b"+OK")


# -- many connections ----------------------------------------------------------


def _partial_client_hello() -> bytes:
    """The first bytes of a real ClientHello: a handshake the proxy must wait for."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()[:40]


def test_500_connections_dropped_mid_command(proxy):
    """500 clients each start a command (or a TLS handshake) and vanish, half of
    them with a reset: a normal session meanwhile is on time, and afterwards
    the proxy holds no more sockets and no more connections than before."""
    pid = proxy.proc.pid
    baseline_fds = open_fds(pid)
    baseline_active = gauge(proxy, "pop3proxy_connections_active")
    hello = _partial_client_hello()
    socks = []
    timings = []
    for i in range(500):
        listener = ("plain", "pop3", "pop3s")[i % 3]
        sock = socket.create_connection((proxy.host, proxy.ports[listener]), timeout=10)
        sock.sendall(hello if listener == "pop3s" else f"USER {USER}@{TENANT}".encode()[: i % 20])
        socks.append(sock)
        if i % 100 == 50:
            timings.append(normal_session(proxy, USER))
    for i, sock in enumerate(socks):
        if i % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    timings.append(normal_session(proxy, USER))
    wait_until(lambda: open_fds(pid) <= baseline_fds, 10, message=f"fds back to {baseline_fds}")
    wait_until(lambda: gauge(proxy, "pop3proxy_connections_active") <= baseline_active, 10)
    assert max(timings) < NORMAL_SESSION_BUDGET, timings


# -- PROXY protocol --------------------------------------------------------------


def _proxy_protocol_supported() -> bool:
    listener = {
        "name": "lb",
        "address": "127.0.0.1:1",
        "tls": "none",
        "proxy_protocol": True,
        "proxy_protocol_trusted": ["127.0.0.0/8"],
    }
    try:
        parse_config({"listeners": [listener], "metrics": {"address": None}})
    except ConfigError:
        return False
    return True


@pytest.mark.skipif(
    not _proxy_protocol_supported(), reason="listener proxy_protocol is not supported yet"
)
@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n",
        b"PROXY " + b"9" * 200 + b"\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff",
        b"GET / HTTP/1.1\r\n\r\n",
    ],
    ids=["bad-address", "overlong-v1", "v2-huge-length", "http"],
)
def test_malformed_proxy_header_is_closed(tmp_path, certs, dovecot, header):
    """A listener behind a load balancer refuses a connection whose PROXY header
    is malformed: closed, no greeting; a well-formed header still works."""
    server = file_proxy(tmp_path, certs, {TENANT: f"{dovecot.host}:{dovecot.port}"})
    server.config["listeners"][2]["proxy_protocol"] = True
    server.config["listeners"][2]["proxy_protocol_trusted"] = ["127.0.0.0/8"]
    server.config_path.write_text(yaml.safe_dump(server.config))
    with server:
        with socket.create_connection((server.host, server.ports["plain"]), timeout=10) as sock:
            sock.sendall(header)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while data := sock.recv(4096):
                    received += data
            assert not received.startswith(b"+OK"), received
        good = b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 110\r\n"
        with Pop3Wire(server.host, server.ports["plain"], proxy_header=good) as wire:
            assert wire.greeting.startswith(b"+OK")
