"""The real client address, end to end, as a real Dovecot logs it (``rip=``).

In a loopback-only world the client connects from 127.0.0.2 (Linux routes
all of 127/8 to lo) while the proxy connects from 127.0.0.1, so a backend
that logs rip=127.0.0.2 was told the client's address, not the proxy's.
Behind a "load balancer" the address comes from a PROXY header instead.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from fakes.backend import FakeBackend
from harness.certs import Certs
from harness.dovecot import Dovecot
from harness.ports import LOOPBACK, free_port, wait_until
from harness.proxy import ProxyProcess, run_cli
from harness.redis import RedisServer
from harness.users import USERS
from harness.wire import Pop3Wire

from pop3proxy.protocol.proxyproto import build_v1, build_v2

TENANT = "fwd.example"
CLIENT_IP = "127.0.0.2"


def store(proxy: ProxyProcess, backend: str, forward: str) -> None:
    """Through the real CLI, as a tenants file (``tenant import``)."""
    host, _, port = backend.rpartition(":")
    record = {
        "name": TENANT,
        "backends": [{"host": host, "port": int(port), "forward_client": forward}],
    }
    path = proxy.workdir / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [record]}))
    result = run_cli(proxy.config_path, "tenant", "import", str(path))
    assert result.returncode == 0, result.stderr


def connect_from(ip: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((ip, 0))
    sock.connect((LOOPBACK, port))
    return sock


def login_from(ip: str, port: int, header: bytes = b"") -> bytes:
    sock = connect_from(ip, port)
    with sock, sock.makefile("rb") as stream:
        if header:
            sock.sendall(header)
        assert stream.readline().startswith(b"+OK")
        sock.sendall(f"USER alice@{TENANT}\r\n".encode())
        stream.readline()
        sock.sendall(f"PASS {USERS['alice']}\r\n".encode())
        reply = stream.readline()
        sock.sendall(b"QUIT\r\n")
        stream.readline()
        return reply


def rip(dovecot: Dovecot, mark: int) -> str:
    return dovecot.wait_for_log(r"Login: user=<alice>[^\n]*rip=([0-9a-f.:]+)", since=mark).group(1)


@pytest.fixture
def lb_proxy(
    tmp_path: Path, certs: Certs, redis_server: RedisServer
) -> Iterator[Callable[..., ProxyProcess]]:
    """A proxy with PROXY-protocol listeners: ``lb`` (plain) and ``lbs`` (implicit TLS)."""
    started: list[ProxyProcess] = []

    def make(trusted: list[str], timeout: str = "5s", start: bool = True) -> ProxyProcess:
        ports = {"lb": free_port(), "lbs": free_port(), "plain": free_port()}
        common = {"proxy_protocol": True, "proxy_protocol_trusted": trusted}
        overrides = {
            "listeners": [
                {"name": "lb", "address": f"{LOOPBACK}:{ports['lb']}", "tls": "none", **common},
                {"name": "lbs", "address": f"{LOOPBACK}:{ports['lbs']}", "tls": "implicit"}
                | common,
                {"name": "plain", "address": f"{LOOPBACK}:{ports['plain']}", "tls": "none"},
            ],
            "directory": {"redis_url": redis_server.url, "key_prefix": f"lb{len(started)}"},
        }
        overrides["listeners"][0]["proxy_protocol_timeout"] = timeout
        # The harness names its default listeners pop3/pop3s/plain; ours replace them.
        harness_ports = {"pop3": ports["lb"], "pop3s": ports["lbs"], "plain": ports["plain"]}
        server = ProxyProcess(tmp_path / f"lb{len(started)}", certs, overrides, ports=harness_ports)
        server.ports.update(ports)
        started.append(server)
        return server.start() if start else server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def trusting_dovecot(make_dovecot) -> Dovecot:
    """XCLIENT accepted from 127/8, and a ``haproxy = yes`` listener."""
    return make_dovecot(login_trusted_networks="127.0.0.0/8", haproxy_port=True)


def test_without_forwarding_the_backend_sees_the_proxy(make_proxy, trusting_dovecot):
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, f"{trusting_dovecot.host}:{trusting_dovecot.port}", "none")
    proxy.start()
    mark = trusting_dovecot.log_mark()
    assert login_from(CLIENT_IP, proxy.ports["plain"]).startswith(b"+OK")
    assert rip(trusting_dovecot, mark) == "127.0.0.1"


def test_xclient_tells_dovecot_the_client_address(make_proxy, trusting_dovecot):
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, f"{trusting_dovecot.host}:{trusting_dovecot.port}", "xclient")
    proxy.start()
    mark = trusting_dovecot.log_mark()
    assert login_from(CLIENT_IP, proxy.ports["plain"]).startswith(b"+OK")
    assert rip(trusting_dovecot, mark) == CLIENT_IP


def test_xclient_not_offered_still_logs_in(make_proxy, make_dovecot):
    untrusting = make_dovecot()  # no login_trusted_networks: no [XCLIENT] in the greeting
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, f"{untrusting.host}:{untrusting.port}", "xclient")
    proxy.start()
    mark = untrusting.log_mark()
    assert login_from(CLIENT_IP, proxy.ports["plain"]).startswith(b"+OK")
    assert rip(untrusting, mark) == "127.0.0.1"
    notes = [r for r in proxy.log_records() if r.get("message") == "client address not forwarded"]
    assert [r["xclient"] for r in notes] == ["not_offered"]


@pytest.mark.parametrize("forward", ["proxy_v1", "proxy_v2"])
def test_proxy_protocol_to_a_haproxy_listener(make_proxy, trusting_dovecot, forward):
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, f"{trusting_dovecot.host}:{trusting_dovecot.haproxy_port}", forward)
    proxy.start()
    mark = trusting_dovecot.log_mark()
    assert login_from(CLIENT_IP, proxy.ports["plain"]).startswith(b"+OK")
    assert rip(trusting_dovecot, mark) == CLIENT_IP


@pytest.mark.parametrize("build", [build_v1, build_v2], ids=["v1", "v2"])
def test_inbound_header_address_reaches_logs_and_the_backend(lb_proxy, trusting_dovecot, build):
    """Load balancer -> proxy (PROXY header) -> Dovecot (XCLIENT): Dovecot logs the
    address the load balancer saw, and so does the proxy's session line."""
    proxy = lb_proxy(["127.0.0.0/8"], start=False)
    store(proxy, f"{trusting_dovecot.host}:{trusting_dovecot.port}", "xclient")
    proxy.start()
    mark = trusting_dovecot.log_mark()
    header = build(("192.0.2.77", 40000), (LOOPBACK, proxy.ports["lb"]))
    assert login_from(LOOPBACK, proxy.ports["lb"], header).startswith(b"+OK")
    assert rip(trusting_dovecot, mark) == "192.0.2.77"
    wait_until(lambda: any(s.get("client") == "192.0.2.77" for s in proxy.sessions()), 5)


def test_inbound_header_before_implicit_tls(lb_proxy, trusting_dovecot, certs):
    """The header is read without eating the TLS ClientHello behind it."""
    proxy = lb_proxy(["127.0.0.0/8"], start=False)
    store(proxy, f"{trusting_dovecot.host}:{trusting_dovecot.port}", "xclient")
    proxy.start()
    mark = trusting_dovecot.log_mark()
    header = build_v2(("198.51.100.9", 40000), (LOOPBACK, proxy.ports["lbs"]))
    context = certs.ssl_client_context()
    with Pop3Wire(proxy.host, proxy.ports["lbs"], context=context, proxy_header=header) as wire:
        wire.login(f"alice@{TENANT}", USERS["alice"])
        wire.command("QUIT")
    assert rip(trusting_dovecot, mark) == "198.51.100.9"


def closed_without_greeting(port: int, data: bytes = b"") -> bool:
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        if data:
            sock.sendall(data)
        try:
            return sock.recv(100) == b""
        except ConnectionResetError:
            return True


def errors(proxy: ProxyProcess, reason: str) -> float:
    prefix = f'pop3proxy_proxy_protocol_errors_total{{listener="lb",reason="{reason}"}} '
    for line in proxy.metrics().splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize(
    "data",
    [
        b"USER alice\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c",
    ],
    ids=["no-header", "bad-port", "bad-v2-version"],
)
def test_malformed_header_closes_only_that_connection(lb_proxy, data):
    proxy = lb_proxy(["127.0.0.0/8"])
    with socket.create_connection((LOOPBACK, proxy.ports["lb"]), timeout=10) as bystander:
        bystander.sendall(build_v1(("192.0.2.1", 1), (LOOPBACK, 2)))
        assert closed_without_greeting(proxy.ports["lb"], data)
        assert bystander.recv(100).startswith(b"+OK"), "the other connection goes on"
    wait_until(lambda: errors(proxy, "malformed") == 1, 5, message="error counted")


def test_untrusted_peer_is_closed(lb_proxy):
    proxy = lb_proxy(["10.0.0.0/8"])
    before = errors(proxy, "untrusted")  # the harness's readiness probes count too
    header = build_v1(("192.0.2.1", 1), (LOOPBACK, proxy.ports["lb"]))
    assert closed_without_greeting(proxy.ports["lb"], header)
    wait_until(lambda: errors(proxy, "untrusted") == before + 1, 5, message="error counted")
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        assert wire.greeting.startswith(b"+OK"), "listeners without PROXY protocol are unaffected"


def test_header_timeout(lb_proxy):
    proxy = lb_proxy(["127.0.0.0/8"], timeout="300ms")
    with socket.create_connection((LOOPBACK, proxy.ports["lb"]), timeout=10) as sock:
        sock.sendall(b"PROXY TCP4 ")  # and then nothing
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    wait_until(lambda: errors(proxy, "timeout") == 1, 5, message="timeout counted")


def test_health_check_connect_and_close_is_not_an_error(lb_proxy):
    proxy = lb_proxy(["127.0.0.0/8"])
    socket.create_connection((LOOPBACK, proxy.ports["lb"]), timeout=10).close()
    wait_until(lambda: any(s.get("listener") == "lb" for s in proxy.sessions()), 5)
    assert "pop3proxy_proxy_protocol_errors_total{" not in proxy.metrics()


@pytest.mark.parametrize("zone", [b"a\rQUIT", b"a\nQUIT", b"eth0"], ids=["cr", "lf", "plain"])
@pytest.mark.parametrize("forward", ["xclient", "proxy_v1"])
def test_a_zone_id_in_the_header_never_reaches_the_backend(lb_proxy, forward, zone):
    """A trusted balancer's v1 header whose address carries a zone id (with a
    CR or LF in it, which a lenient backend may take for a line end): refused
    as malformed, so no byte of it is written to the backend, in XCLIENT or
    in the PROXY header sent on."""
    with FakeBackend("agree", greeting=b"+OK [XCLIENT] ready") as fake:
        proxy = lb_proxy(["127.0.0.0/8"], start=False)
        store(proxy, fake.address, forward)
        proxy.start()
        injected = b"PROXY TCP6 fe80::1%" + zone + b" 2001:db8::1 40000 110\r\n"
        refused = closed_without_greeting(proxy.ports["lb"], injected)
        if not refused:  # greeted: show what a login would have sent on
            login_from(LOOPBACK, proxy.ports["lb"], injected)
        assert refused, "the header was accepted"
        wait_until(lambda: errors(proxy, "malformed") == 1, 5, message="counted as malformed")

        header = build_v1(("2001:db8::7", 40000), ("2001:db8::1", 110))
        assert login_from(LOOPBACK, proxy.ports["lb"], header).startswith(b"+OK")
        wait_until(lambda: b"QUIT" in fake.lines, 5, message="the good session ended")
        assert fake.accepted == 1, "only the good header's session reached the backend"
        first = {
            "xclient": b"XCLIENT ADDR=2001:db8::7 PORT=40000",
            "proxy_v1": b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 110",
        }[forward]
        assert fake.lines[0] == first
        assert not any(b"%" in line for line in fake.lines)
