"""Backend pools against real Dovecots: failover, round robin, hashing, the breaker,
and what a client hears when no backend can take it."""

from __future__ import annotations

import re

import pytest
import yaml
from fakes.backend import FakeBackend
from harness.dovecot import Dovecot
from harness.ports import wait_until
from harness.proxy import ProxyProcess, attempt_login, run_cli
from harness.users import USERS

from pop3proxy.routing import Rotation, candidates
from pop3proxy.tenants import parse_tenant

POOL = "pool.example"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$")


def metric(proxy: ProxyProcess, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    for line in proxy.metrics().splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1) == name and wanted <= set((match.group(2) or "").split(",")):
            return float(match.group(3))
    return 0.0


def address(server: Dovecot | FakeBackend) -> str:
    return f"{server.host}:{server.port}"


def backends(*servers: Dovecot) -> list[dict]:
    return [{"host": server.host, "port": server.port} for server in servers]


def store(proxy: ProxyProcess, *backends: str, policy: str = "failover") -> None:
    args = ["tenant", "set", POOL, "--policy", policy]
    for backend in backends:
        args += ["--backend", backend]
    result = run_cli(proxy.config_path, *args)
    assert result.returncode == 0, result.stderr


def import_tenant(proxy: ProxyProcess, record: dict) -> None:
    path = proxy.workdir / "tenants.yaml"
    path.write_text(yaml.safe_dump({"tenants": [record]}))
    result = run_cli(proxy.config_path, "tenant", "import", str(path))
    assert result.returncode == 0, result.stderr


def login(proxy: ProxyProcess, user: str = "alice") -> bytes:
    """Log in through the proxy, QUIT; returns the PASS reply."""
    return attempt_login(proxy, f"{user}@{POOL}", USERS[user])


def pool_sessions(proxy: ProxyProcess) -> list[dict]:
    return [s for s in proxy.sessions() if s.get("tenant") == POOL and s.get("result") == "ok"]


def login_via(proxy: ProxyProcess, user: str = "alice") -> str:
    """Log ``user`` in and QUIT; returns the backend of that session (from
    the proxy's summary line). Only sessions that ended with the client's
    QUIT count: another session of the test (kicked, evacuated) may end
    meanwhile."""

    def quit_sessions() -> list[dict]:
        return [s for s in pool_sessions(proxy) if s.get("end") == "quit"]

    count = len(quit_sessions())
    assert login(proxy, user).startswith(b"+OK")
    wait_until(lambda: len(quit_sessions()) > count, 5, message="session summary")
    return quit_sessions()[-1]["backend"]


def test_failover_when_the_first_backend_is_stopped(make_dovecot, make_proxy):
    first, second = make_dovecot(), make_dovecot()
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, address(first), address(second))
    proxy.start()
    assert login_via(proxy) == address(first)
    first.stop()
    assert login_via(proxy) == address(second), "the next backend takes the login"
    assert metric(proxy, "pop3proxy_backend_errors_total", reason="connect_refused") == 1
    assert metric(proxy, "pop3proxy_backend_up", backend=address(first)) == 0
    assert metric(proxy, "pop3proxy_backend_up", backend=address(second)) == 1


def test_garbage_and_silent_backends_are_skipped(make_dovecot, make_proxy):
    good = make_dovecot()
    with FakeBackend("garbage") as garbage, FakeBackend("stall") as stall:
        proxy = make_proxy(start=False, tenants=False)
        import_tenant(
            proxy,
            {
                "name": POOL,
                "backends": [
                    {"host": stall.host, "port": stall.port, "connect_timeout": "300ms"},
                    {"host": garbage.host, "port": garbage.port},
                    {"host": good.host, "port": good.port},
                ],
            },
        )
        proxy.start()
        assert login_via(proxy) == address(good)
        assert stall.accepted == 1 and garbage.accepted == 1
        assert metric(proxy, "pop3proxy_backend_errors_total", reason="login_timeout") == 1
        assert metric(proxy, "pop3proxy_backend_errors_total", reason="garbage") == 1


def test_every_backend_down_is_a_short_temporary_failure(make_proxy):
    with FakeBackend("close") as closing, FakeBackend("garbage") as garbage:
        proxy = make_proxy(start=False, tenants=False)
        store(proxy, closing.address, garbage.address, "127.0.0.1:1")
        proxy.start()
        reply = login(proxy)
    assert reply == b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n"
    assert b"garbage" not in reply and b"HTTP" not in reply, "the backend's words stay inside"
    errors = [r for r in proxy.log_records() if r.get("message") == "backend unavailable"]
    assert {r["error"] for r in errors} == {"closed_during_login", "garbage", "connect_refused"}


def test_tries_are_bounded(make_proxy):
    fakes = [FakeBackend("close") for _ in range(4)]
    try:
        proxy = make_proxy({"backends": {"max_attempts": 2}}, start=False, tenants=False)
        store(proxy, *(fake.address for fake in fakes))
        proxy.start()
        assert login(proxy).startswith(b"-ERR [SYS/TEMP]")
        assert [fake.accepted for fake in fakes] == [1, 1, 0, 0]
    finally:
        for fake in fakes:
            fake.close()


def test_round_robin_alternates(make_dovecot, make_proxy):
    first, second = make_dovecot(), make_dovecot()
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, address(first), address(second), policy="round_robin")
    proxy.start()
    seen = [login_via(proxy) for _ in range(4)]
    assert seen[0] != seen[1] and seen[:2] == seen[2:]
    assert set(seen) == {address(first), address(second)}


def test_hash_keeps_users_on_their_backend_when_one_is_added(make_dovecot, make_proxy):
    servers = [make_dovecot(), make_dovecot(), make_dovecot()]
    users = sorted(USERS)

    def placement(count: int) -> dict[str, str]:
        # A fresh proxy each time: the hash needs no shared state, so a
        # restarted proxy (or another replica) places users identically.
        proxy = make_proxy(start=False, tenants=False)
        store(proxy, *(address(s) for s in servers[:count]), policy="hash")
        proxy.start()
        try:
            return {user: login_via(proxy, user) for user in users for _ in range(2)}
        finally:
            proxy.stop()

    before, after = placement(2), placement(3)
    added = address(servers[2])
    for user in users:
        assert after[user] in (before[user], added), f"{user} moved between old backends"
    record = parse_tenant(
        {
            "name": POOL,
            "policy": "hash",
            "backends": [{"host": s.host, "port": s.port} for s in servers],
        }
    )
    predicted = {u: candidates(record, f"{u}@{POOL}", Rotation())[0].address for u in users}
    assert after == predicted, "the proxy places users exactly where rendezvous hashing says"


def test_circuit_breaker_opens_then_closes_after_a_probe(make_dovecot, make_proxy):
    flaky, spare = make_dovecot(), make_dovecot()
    proxy = make_proxy(
        {"backends": {"failure_threshold": 2, "failure_window": "60s", "cooldown": "1s"}},
        start=False,
        tenants=False,
    )
    store(proxy, address(flaky), address(spare))
    proxy.start()
    flaky.stop()
    for _ in range(2):
        assert login_via(proxy) == address(spare)
    refused = metric(proxy, "pop3proxy_backend_errors_total", reason="connect_refused")
    assert refused == 2
    assert any(r.get("message") == "backend circuit open" for r in proxy.log_records())
    assert login_via(proxy) == address(spare)
    assert metric(proxy, "pop3proxy_backend_errors_total", reason="connect_refused") == refused, (
        "while open, the dead backend is not even tried"
    )
    flaky.start()
    # After the cool-down one login probes the backend; its success closes the breaker.
    wait_until(lambda: login_via(proxy) == address(flaky), 10, interval=0.1, message="probe")
    assert login_via(proxy) == address(flaky)
    assert metric(proxy, "pop3proxy_backend_up", backend=address(flaky)) == 1
    assert any(r.get("message") == "backend recovered" for r in proxy.log_records())


def test_open_breaker_with_nothing_else_answers_at_once(make_proxy):
    proxy = make_proxy(
        {
            "backends": {"failure_threshold": 1, "cooldown": "1h"},
            "timeouts": {"backend_connect": "300ms"},
        },
        start=False,
        tenants=False,
    )
    with FakeBackend("stall") as stall:
        store(proxy, stall.address)
        proxy.start()
        assert login(proxy).startswith(b"-ERR [SYS/TEMP]")
        assert login(proxy).startswith(b"-ERR [SYS/TEMP]")
        assert stall.accepted == 1, "the second login did not wait for the hung backend"
    assert metric(proxy, "pop3proxy_backend_errors_total", reason="circuit_open") == 1


def test_active_checks_mark_a_backend_down_and_up(make_dovecot, make_proxy):
    server = make_dovecot()
    proxy = make_proxy({"backends": {"health_check_interval": "200ms"}}, start=False, tenants=False)
    store(proxy, address(server))
    proxy.start()
    assert login_via(proxy) == address(server)  # the backend becomes known
    server.stop()

    def up() -> float:
        return metric(proxy, "pop3proxy_backend_up", backend=address(server))

    wait_until(lambda: up() == 0, 10, message="active check notices the backend is down")
    assert metric(proxy, "pop3proxy_backend_errors_total", reason="check_connect_refused") >= 1
    server.start()
    wait_until(lambda: up() == 1, 10, message="active check notices it is back")


@pytest.mark.parametrize("policy", ["failover", "hash"])
def test_pinned_user_goes_to_the_pinned_backend(make_dovecot, make_proxy, policy):
    """The directory's pin (``pop3proxy user pin``) overrides the policy."""
    first, second = make_dovecot(), make_dovecot()
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, address(first), address(second), policy=policy)
    record = parse_tenant(
        {
            "name": POOL,
            "policy": policy,
            "backends": [{"host": s.host, "port": s.port} for s in (first, second)],
        }
    )
    natural = candidates(record, f"alice@{POOL}", Rotation())[0].address
    pin = address(second) if natural == address(first) else address(first)
    result = run_cli(proxy.config_path, "user", "pin", f"alice@{POOL}", "--backend", pin)
    if "invalid choice" in result.stderr:
        pytest.skip("this tree has no 'pop3proxy user pin' yet")
    assert result.returncode == 0, result.stderr
    proxy.start()
    assert login_via(proxy, "alice") == pin
    assert login_via(proxy, "alice") == pin
