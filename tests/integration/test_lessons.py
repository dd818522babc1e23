"""Lessons from other mail proxies' security advisories, each as a regression test.

- Dovecot CVE-2025-30189: a cache keyed on something users share let later
  users in as the first. Here no login result of one user ever shows for
  another, in any cache on the login path.
- Dovecot CVE-2025-59028: one malformed SASL message took down other logins.
  Here a storm of bad base64 in AUTH PLAIN touches only its own session.
- Zimbra CVE-2022-27924: CR LF in a user name poisoned the route cache. Here
  a name (or SNI server name) with a control character is refused before any
  cache or Redis key is built from it.
- nginx CVE-2026-1642: bytes a backend sent before its TLS handshake were
  read as if protected. Here they fail the attempt (STLS and implicit TLS).
- nginx CVE-2025-23419: TLS sessions resumed across SNI certificates. Here a
  session made under one certificate never resumes under another.
"""

from __future__ import annotations

import base64
import select
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from fakes.tls_backend import TLSMischiefBackend
from harness.certs import Certs
from harness.mailbox import sample_messages
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess, attempt_login, run_cli, store_local_tenant
from harness.users import MASTER_USERS, USERS
from harness.wire import Pop3Wire

from pop3proxy.config import SNIEntry, TLSConfig
from pop3proxy.net.sockets import READ
from pop3proxy.net.tls import ServerTLS, server_context

TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]

# -- no TLS session resumed across SNI certificates ---------------------------------


def issue(ca: trustme.CA, directory: Path, name: str) -> tuple[dict[str, str], int]:
    leaf = ca.issue_cert(name)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    serial = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
    return {"cert": str(cert), "key": str(key)}, serial


@pytest.fixture
def two_certificates(make_proxy, certs: Certs, tmp_path: Path):
    """A proxy with a certificate of its own for ``a.example`` and ``b.example``."""
    a_files, a_serial = issue(certs.ca, tmp_path, "a.example")
    b_files, b_serial = issue(certs.ca, tmp_path, "b.example")
    proxy = make_proxy({"tls": {"sni": {"a.example": a_files, "b.example": b_files}}})
    return proxy, {"a.example": a_serial, "b.example": b_serial}


class Handshake:
    """One verified TLS connection to the proxy: which certificate, resumed or not."""

    def __init__(
        self,
        proxy: ProxyProcess,
        context: ssl.SSLContext,
        name: str,
        listener: str,
        session: ssl.SSLSession | None = None,
    ) -> None:
        raw = socket.create_connection((proxy.host, proxy.ports[listener]), timeout=10)
        if listener == "pop3":
            stream = raw.makefile("rb")
            assert stream.readline().startswith(b"+OK")
            raw.sendall(b"STLS\r\n")
            assert stream.readline().startswith(b"+OK")
        self.sock = context.wrap_socket(raw, server_hostname=name, session=session)
        with self.sock.makefile("rb") as stream:
            if listener == "pop3s":
                assert stream.readline().startswith(b"+OK")
            self.sock.sendall(b"NOOP\r\n")  # TLS 1.3 tickets come after the handshake
            assert stream.readline().startswith(b"+OK")
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        self.serial = x509.load_der_x509_certificate(der).serial_number
        self.reused = self.sock.session_reused
        self.session = self.sock.session
        self.sock.close()


@pytest.mark.parametrize("listener", ["pop3s", "pop3"], ids=["implicit", "stls"])
@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_no_session_resumed_across_sni_certificates(two_certificates, certs, version, listener):
    proxy, serials = two_certificates
    context = certs.ssl_client_context()
    context.minimum_version = context.maximum_version = version

    first = Handshake(proxy, context, "a.example", listener)
    assert first.serial == serials["a.example"] and not first.reused
    again = Handshake(proxy, context, "a.example", listener, first.session)
    assert again.reused, "resumption under the same certificate still works"

    other = Handshake(proxy, context, "b.example", listener, first.session)
    assert not other.reused, "a.example's session resumed for b.example"
    assert other.serial == serials["b.example"]

    default = Handshake(proxy, context, "localhost", listener, first.session)
    assert not default.reused and default.serial not in serials.values()


# The same, in process, on the paths a client's packets choose: a ClientHello
# that arrives in pieces (the proxy waits for all of it without spinning), and
# one spread over two TLS records (which the proxy cannot read ahead: OpenSSL's
# SNI callback switches the certificate, and refuses a resumption).


class BioClient:
    """A TLS client over memory BIOs on a real socket, so a test can choose how
    its first flight reaches the server: in pieces, or re-framed."""

    def __init__(self, context: ssl.SSLContext, name: str, session=None) -> None:
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(
            self.incoming, self.outgoing, server_hostname=name, session=session
        )
        self.done = False

    def step(self) -> bytes:
        """Advance the handshake; the bytes to send."""
        if not self.done:
            try:
                self.tls.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
        return self.outgoing.read()


def loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=10)
        server, _ = listener.accept()
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    server.setblocking(False)
    return server, client


def handshake_in_process(server_context, client_context, name, *, session=None, first_flight=None):
    """(certificate serial, resumed, session) for one connection; ``first_flight``
    sends the ClientHello its own way (given the client socket and the bytes)."""
    server_sock, client_sock = loopback_pair()
    with server_sock, client_sock:
        server = ServerTLS(server_sock, server_context)
        client = BioClient(client_context, name, session)
        hello = client.step()
        (first_flight or (lambda sock, data: sock.sendall(data)))(client_sock, hello)
        server_done = False
        deadline = time.monotonic() + 10
        while not (server_done and client.done):
            assert time.monotonic() < deadline, "handshake stuck"
            if not server_done:
                server_done = server.handshake() == 0
            if select.select([client_sock], [], [], 0.01)[0]:
                data = client_sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by the proxy")
                client.incoming.write(data)
            out = client.step()
            if out:
                client_sock.sendall(out)
        server.sslobj.write(b"+OK\r\n")  # TLS 1.3: the ticket comes before it
        while True:
            data = client_sock.recv(65536)
            client.incoming.write(data)
            try:
                if client.tls.read(100) == b"+OK\r\n":
                    break
            except ssl.SSLWantReadError:
                continue
        der = client.tls.getpeercert(binary_form=True)
        serial = x509.load_der_x509_certificate(der).serial_number
        return serial, client.tls.session_reused, client.tls.session


@pytest.fixture
def sni_contexts(certs: Certs, tmp_path: Path):
    a_files, a_serial = issue(certs.ca, tmp_path, "a.example")
    b_files, b_serial = issue(certs.ca, tmp_path, "b.example")
    config = TLSConfig(
        cert=str(certs.cert_file),
        key=str(certs.key_file),
        sni=(SNIEntry("a.example", **a_files), SNIEntry("b.example", **b_files)),
    )
    return server_context(config), {"a.example": a_serial, "b.example": b_serial}


def in_pieces(sock: socket.socket, hello: bytes) -> None:
    """The record header and a few bytes, then the rest: the proxy's first look
    finds it incomplete."""
    sock.sendall(hello[:9])
    sock.sendall(hello[9:])


def in_two_records(sock: socket.socket, hello: bytes) -> None:
    payload, header = hello[5:], hello[:3]
    half = len(payload) // 2
    for part in (payload[:half], payload[half:]):
        sock.sendall(header + len(part).to_bytes(2, "big") + part)


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_a_client_hello_in_pieces_still_gets_its_certificate(sni_contexts, certs, version):
    server_context, serials = sni_contexts
    client_context = certs.ssl_client_context()
    client_context.maximum_version = version
    serial, _, session = handshake_in_process(
        server_context, client_context, "a.example", first_flight=in_pieces
    )
    assert serial == serials["a.example"]
    serial, reused, _ = handshake_in_process(
        server_context, client_context, "b.example", session=session, first_flight=in_pieces
    )
    assert serial == serials["b.example"] and not reused


def test_the_receive_low_water_mark_holds_the_wake_up_until_the_hello_is_whole(sni_contexts, certs):
    """While the ClientHello is incomplete the proxy asks to be woken only when
    all of it is there (no spinning on the bytes it peeked at), and sets the
    mark back once it has it."""
    server_context, _ = sni_contexts
    server_sock, client_sock = loopback_pair()
    with server_sock, client_sock:
        server = ServerTLS(server_sock, server_context)
        hello = BioClient(certs.ssl_client_context(), "b.example").step()
        assert server.handshake() == READ and server.sslobj is None  # nothing yet
        client_sock.sendall(hello[:9])
        assert select.select([server_sock], [], [], 5)[0]
        assert server.handshake() == READ and server.sslobj is None
        low_water = server_sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)
        assert low_water == len(hello)
        assert not select.select([server_sock], [], [], 0.05)[0], "woken by what it peeked at"
        client_sock.sendall(hello[9:])
        assert select.select([server_sock], [], [], 5)[0], "woken once it is whole"
        server.handshake()
        assert server.sslobj is not None
        assert server_sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1


@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_a_hello_in_two_records_is_read_ahead_too(sni_contexts, certs, version):
    server_context, serials = sni_contexts
    client_context = certs.ssl_client_context()
    client_context.maximum_version = version
    _, _, session = handshake_in_process(server_context, client_context, "localhost")
    serial, reused, _ = handshake_in_process(
        server_context, client_context, "b.example", session=session, first_flight=in_two_records
    )
    assert serial == serials["b.example"] and not reused


class Connection:
    """What the SNI callback is given: the connection's owner (see ServerTLS)."""

    def __init__(self, reused: bool) -> None:
        self.sslobj = type("SSLObject", (), {"session_reused": reused})()
        self.context = None
        self.pop3proxy_server_name = None


def test_unread_hellos_switch_certificates_but_a_resumption_is_refused(sni_contexts):
    """A ClientHello the proxy could not read ahead (too long, malformed) is
    made with the default context; the SNI callback switches the certificate,
    and refuses the handshake if it resumes a session: that session was made
    under another certificate's keys."""
    server_context, _ = sni_contexts
    choose = server_context.sni_callback
    fresh = Connection(reused=False)
    assert choose(fresh, "b.example", server_context) is None
    assert fresh.context is not None and fresh.context is not server_context
    assert fresh.pop3proxy_server_name == "b.example"
    resumed = Connection(reused=True)
    assert choose(resumed, "b.example", server_context) == ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
    same = Connection(reused=True)
    assert choose(same, "b.example", fresh.context) is None, "resuming b under b is fine"
    assert choose(Connection(reused=True), "localhost", server_context) is None


# -- no backend byte read before the backend's TLS handshake completes -------------

MISCHIEF_TENANT = "mischief.example"
TEMPORARY = b"-ERR [SYS/TEMP]"


def behind(make_proxy, backend, tls_mode: str, certs: Certs) -> ProxyProcess:
    proxy = make_proxy(start=False, tenants=False)
    result = run_cli(
        proxy.config_path,
        "tenant",
        "set",
        MISCHIEF_TENANT,
        "--backend",
        backend.address,
        "--backend-tls",
        tls_mode,
        "--ca-file",
        str(certs.ca_file),
    )
    assert result.returncode == 0, result.stderr
    return proxy.start()


def backend_errors(proxy: ProxyProcess) -> list[str]:
    return [r["error"] for r in proxy.log_records() if r.get("message") == "backend unavailable"]


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("stls_same_write", "data_before_tls"),
        ("stls_before_handshake", "tls_protocol"),
        ("implicit_plaintext", "tls_protocol"),
        ("implicit_after_hello", "tls_protocol"),
    ],
)
def test_bytes_outside_the_backend_tls_fail_the_attempt(make_proxy, certs, behaviour, reason):
    tls_mode = "starttls" if behaviour.startswith("stls") else "implicit"
    with TLSMischiefBackend(behaviour, certs.ssl_server_context()) as backend:
        proxy = behind(make_proxy, backend, tls_mode, certs)
        reply = attempt_login(proxy, f"alice@{MISCHIEF_TENANT}", USERS["alice"])
        assert reply.startswith(TEMPORARY), reply
        assert not backend.credentials_seen(), backend.lines
        wait_until(lambda: backend_errors(proxy), 5, message="the failure is logged")
        assert set(backend_errors(proxy)) == {reason}


@pytest.mark.parametrize("behaviour", ["stls_honest", "implicit_honest"])
def test_the_same_backend_done_right_logs_in(make_proxy, certs, behaviour):
    """The control: the fake's TLS is sound, so the failures above are the proxy's
    refusal, not a broken fake."""
    tls_mode = "starttls" if behaviour.startswith("stls") else "implicit"
    with TLSMischiefBackend(behaviour, certs.ssl_server_context()) as backend:
        proxy = behind(make_proxy, backend, tls_mode, certs)
        reply = attempt_login(proxy, f"alice@{MISCHIEF_TENANT}", USERS["alice"])
        assert reply.startswith(b"+OK"), reply
        assert b"USER alice" in backend.lines


# -- control characters in a name: refused before any key is built -------------------

MARK = "zq7"
"""In every refused name, and in no other: no Redis command may mention it."""


class RedisCommands:
    """Every command the test's Redis runs while this is open (MONITOR)."""

    END = "zq-monitor-end"

    def __init__(self, redis_server) -> None:
        self._redis = redis_server
        self._client = redis_server.client(socket_timeout=30)
        self._monitor = self._client.monitor()
        self._monitor.__enter__()
        self.commands: list[str] = []
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        for command in self._monitor.listen():
            self.commands.append(command["command"])
            if self.END in command["command"]:
                return

    def close(self) -> list[str]:
        with self._redis.client() as other:
            other.echo(self.END)
        self._thread.join(10)
        self._monitor.__exit__(None, None, None)
        self._client.close()
        return self.commands


def plain_response(authcid: str, password: str = "pw") -> str:
    return base64.b64encode(f"\0{authcid}\0{password}".encode()).decode()


CONTROL_NAMES = [
    f"{MARK}alice\x01@{TENANT}",
    f"{MARK}alice\x1b[31m@{TENANT}",
    f"{MARK}al\x7fice@{TENANT}",
    f"{MARK}alice\u0085@{TENANT}",  # NEL, a C1 line end
    f"{MARK}alice\u2028@{TENANT}",  # LINE SEPARATOR
    f"{MARK}ali\tce@{TENANT}",
    f"{MARK}alice@{TENANT}\x0b",
]
CONTROL_AUTHCIDS = [
    f"{MARK}alice\r\nDELE 1@{TENANT}",
    f"{MARK}alice\n@{TENANT}",
    f"{MARK}alice\r@{TENANT}",
    f"{MARK}alice\x00@{TENANT}",
    *CONTROL_NAMES,
]


def lookups(proxy: ProxyProcess) -> float:
    total = 0.0
    for line in proxy.metrics().splitlines():
        if line.startswith("pop3proxy_directory_lookups_total{"):
            total += float(line.split()[-1])
    return total


def test_control_characters_in_a_name_never_reach_a_key(make_proxy, redis_server, certs):
    proxy = make_proxy({"tenancy": {"sni_tenant": True}})
    before = lookups(proxy)
    commands = RedisCommands(redis_server)
    try:
        for name in CONTROL_NAMES:
            with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
                wire.send(b"USER " + name.encode() + b"\r\n")
                assert wire.read_line().startswith(b"-ERR"), repr(name)
                assert wire.command("PASS pw").startswith(b"-ERR"), "no name was taken"
        for raw in (f"USER {MARK}alice\r@{TENANT}", f"USER {MARK}alice\x00@{TENANT}"):
            with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
                wire.send(raw.encode() + b"\r\n")
                assert wire.read_line().startswith(b"-ERR"), repr(raw)
        for authcid in CONTROL_AUTHCIDS:
            with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
                reply = wire.command(f"AUTH PLAIN {plain_response(authcid)}")
                assert reply.startswith(b"-ERR [AUTH]"), (authcid, reply)
        # A TLS server name is a name too: with sni_tenant it picks the tenant.
        context = certs.ssl_client_context()
        context.check_hostname = False
        for server_name in (f"{MARK}\n.example", f"{MARK} x.example", f"{MARK}\x01.example"):
            raw = socket.create_connection((proxy.host, proxy.ports["pop3s"]), timeout=10)
            with context.wrap_socket(raw, server_hostname=server_name) as sock:
                stream = sock.makefile("rb")
                assert stream.readline().startswith(b"+OK")
                sock.sendall(b"USER alice\r\nPASS pw\r\n")
                assert stream.readline().startswith(b"+OK")
                assert stream.readline().startswith(b"-ERR [AUTH]")
        # The control: a proper name is looked up, and MONITOR sees it.
        raw = socket.create_connection((proxy.host, proxy.ports["pop3s"]), timeout=10)
        with context.wrap_socket(raw, server_hostname=f"{MARK}-ok.example") as sock:
            stream = sock.makefile("rb")
            stream.readline()
            sock.sendall(b"USER alice\r\nPASS pw\r\n")
            stream.readline()
            assert stream.readline().startswith(b"-ERR [AUTH]")
    finally:
        seen = commands.close()
    mentions = [command for command in seen if MARK in command]
    assert mentions and all(f"{MARK}-ok.example" in command for command in mentions), mentions
    assert lookups(proxy) == before + 1, "only the proper name was looked up"


# -- no login result of one user ever shows for another --------------------------------

MASTER_ENV = "POP3PROXY_TEST_LESSONS_MASTER"
CHEAP_AUTH = {
    "argon2_time_cost": 1,
    "argon2_memory_cost": 1024,
    "failure_delay": "0.05s",
    "delay_after": 10_000,
    "block_after": 10_000,
    "block_after_per_address": 100_000,
}


@pytest.fixture
def two_users(make_proxy, dovecot, monkeypatch, tmp_path, request):
    """A proxy whose tenant has alice (2 messages) and bob (3): passthrough (the
    harness tenant, Dovecot's passwords) or local (the proxy's own)."""
    dovecot.reset_mailbox("alice", sample_messages()[:2])
    dovecot.reset_mailbox("bob", sample_messages()[:3])
    monkeypatch.setenv(MASTER_ENV, MASTER_USERS["proxymaster"])
    proxy = make_proxy({"auth": CHEAP_AUTH})
    if request.param == "passthrough":
        return proxy, TENANT, {"alice": USERS["alice"], "bob": USERS["bob"]}
    passwords = {"alice": "alice-local-pw", "bob": "bob-local-pw"}
    store_local_tenant(
        proxy, (dovecot.host, dovecot.port), tmp_path, passwords, master_password_env=MASTER_ENV
    )
    return proxy, "local.example", passwords


def outcome(proxy: ProxyProcess, user: str, password: str) -> str:
    """``ok N`` (N messages: whose mailbox it is) or the refusal's code."""
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.command(f"USER {user}")
        reply = wire.command(f"PASS {password}")
        if not reply.startswith(b"+OK"):
            return reply.split(b"]")[0].decode() + "]"
        stat = wire.command("STAT")
        wire.command("QUIT")
        while wire.read_line():  # closed once its slot is given back
            pass
        return f"ok {stat.split()[1].decode()}"


@pytest.mark.parametrize("two_users", ["passthrough", "local"], indirect=True)
def test_no_cache_lets_one_user_in_as_another(two_users):
    proxy, tenant, passwords = two_users
    alice, bob = f"alice@{tenant}", f"bob@{tenant}"
    expected = {
        (alice, passwords["alice"]): "ok 2",
        (bob, passwords["alice"]): "-ERR [AUTH]",
        (bob, passwords["bob"]): "ok 3",
        (alice, passwords["bob"]): "-ERR [AUTH]",
        (alice.upper(), passwords["bob"]): "-ERR [AUTH]",
    }
    attempts = list(expected)
    # One after another, each order: every cache warm with the other's result.
    for first in range(len(attempts)):
        for user, password in attempts[first:] + attempts[:first]:
            assert outcome(proxy, user, password) == expected[user, password], (user, first)
    # At once: single-flight loads shared between concurrent logins.
    with ThreadPoolExecutor(len(attempts)) as pool:
        for _ in range(3):
            results = list(pool.map(lambda attempt: outcome(proxy, *attempt), attempts))
            assert results == [expected[attempt] for attempt in attempts]


# -- one malformed SASL line affects only its own session ------------------------------

STORM_TENANT = "storm.example"
STORM_USERS = {f"user{number:02d}": f"pw-{number:02d}" for number in range(50)}
BAD_RESPONSES = [b"!!!!", b"abc", b"=====", b"AGFsaWNl\x01", b"*" * 300, b"A" * 5, b"\xff\xfe"]


def storm(proxy: ProxyProcess, stop: threading.Event, replies: list[bytes]) -> None:
    """Invalid base64 in AUTH PLAIN, initial and continuation, connection after
    connection (each ends at the error budget), until told to stop."""
    while not stop.is_set():
        with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
            for number, bad in enumerate(BAD_RESPONSES * 2):
                if number % 2:
                    wire.send(b"AUTH PLAIN\r\n")
                    if not wire.read_line().startswith(b"+"):
                        break
                    wire.send(bad + b"\r\n")
                else:
                    wire.send(b"AUTH PLAIN " + bad + b"\r\n")
                reply = wire.read_line()
                if not reply:
                    break
                replies.append(reply)


def test_a_sasl_storm_touches_only_its_own_sessions(make_proxy, make_dovecot):
    backend = make_dovecot(users=STORM_USERS)
    proxy = make_proxy(start=False, tenants=False)
    address = f"{backend.host}:{backend.port}"
    result = run_cli(proxy.config_path, "tenant", "set", STORM_TENANT, "--backend", address)
    assert result.returncode == 0, result.stderr
    proxy.start()
    stop, replies = threading.Event(), []
    stormer = threading.Thread(target=storm, args=(proxy, stop, replies), daemon=True)
    stormer.start()
    try:
        wait_until(lambda: len(replies) > 20, 10, message="the storm is on")
        with ThreadPoolExecutor(50) as pool:
            logins = list(
                pool.map(
                    lambda user: outcome(proxy, f"{user}@{STORM_TENANT}", STORM_USERS[user]),
                    STORM_USERS,
                )
            )
        during = len(replies)
    finally:
        stop.set()
        stormer.join(10)
    assert logins == ["ok 0"] * 50
    assert during > 20 and all(reply.startswith(b"-ERR") for reply in replies), replies[:5]
