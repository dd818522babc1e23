"""``pop3proxy user delay``: real logins (poplib, through two proxies on one Redis,
to a real Dovecot) wait for a delay and then get in, or hear [LOGIN-DELAY]."""

from __future__ import annotations

import json
import poplib
import threading
import time
import uuid
from typing import Any

import pytest
from harness.ports import wait_until
from harness.proxy import LOCAL_TENANT, TENANT, ProxyProcess, run_cli
from harness.users import USERS, WRONG_PASSWORD

from pop3proxy.delays import PROPAGATION_SECONDS

AUTH_TIMEOUT = 20
"""timeouts.auth of these proxies: with backend_connect's 5 s, a login waits up to 15 s."""


@pytest.fixture
def replicas(make_proxy) -> tuple[ProxyProcess, ProxyProcess]:
    """Two proxies, one Redis and one key prefix: two replicas of one deployment."""
    shared = {
        "directory": {"key_prefix": f"delay-{uuid.uuid4().hex[:8]}"},
        "timeouts": {"auth": f"{AUTH_TIMEOUT}s"},
    }
    return make_proxy(shared), make_proxy(shared)


def delay_cli(proxy: ProxyProcess, *args: str) -> str:
    result = run_cli(proxy.config_path, "user", "delay", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def listed(proxy: ProxyProcess) -> list[dict[str, Any]]:
    return json.loads(delay_cli(proxy, "--list", "--json"))


def wait_for_change(proxies: tuple[ProxyProcess, ...], message: str, count: int = 1) -> None:
    """Every proxy logged ``message`` (``login delay set``/``lifted``) ``count`` times."""

    def followed() -> bool:
        return all(
            sum(r.get("message") == message for r in proxy.log_records()) >= count
            for proxy in proxies
        )

    wait_until(followed, PROPAGATION_SECONDS + 3, message=f"every proxy: {message}")


def timed_login(proxy: ProxyProcess, user: str, password: str) -> tuple[float, bytes]:
    """The time from PASS to its answer, and the answer (``+OK`` or the -ERR line)."""
    client = poplib.POP3(proxy.host, proxy.ports["plain"], timeout=AUTH_TIMEOUT + 10)
    try:
        client.user(user)
        started = time.monotonic()
        try:
            reply = client.pass_(password)
        except poplib.error_proto as error:
            return time.monotonic() - started, error.args[0]
        elapsed = time.monotonic() - started
        assert client.stat()[0] >= 0
        client.quit()
        return elapsed, reply
    finally:
        client.close()


def test_a_delay_set_through_the_cli_makes_logins_on_both_replicas_wait_then_succeed(
    replicas, fresh_mailbox
):
    first, second = replicas
    fresh_mailbox("alice")
    out = delay_cli(second, f"Alice@{TENANT}", "--for", "6s", "--reason", "mailbox move")
    assert f"login delay for user alice@{TENANT}: wait until" in out
    (entry,) = listed(first)
    assert (entry["scope"], entry["key"], entry["mode"]) == ("user", f"alice@{TENANT}", "wait")
    wait_for_change(replicas, "login delay set")
    results: dict[str, tuple[float, bytes]] = {}
    starts: dict[str, float] = {}

    def login(name: str, proxy: ProxyProcess) -> None:
        starts[name] = time.time()
        results[name] = timed_login(proxy, f"alice@{TENANT}", USERS["alice"])

    threads = [threading.Thread(target=login, args=item) for item in (("1", first), ("2", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, (elapsed, reply) in results.items():
        assert reply.startswith(b"+OK"), reply
        # It waited for the end of the delay (less the clock's grain), no more than a second past.
        assert elapsed >= entry["until"] - starts[name] - 0.1, (name, elapsed)
        assert elapsed < entry["until"] - starts[name] + 1.5, (name, elapsed)
    elapsed, reply = timed_login(first, f"bob@{TENANT}", USERS["bob"])  # another user: no wait
    assert reply.startswith(b"+OK") and elapsed < 1.0
    for proxy in replicas:
        wait_until(
            lambda proxy=proxy: (
                'pop3proxy_delayed_logins_total{outcome="waited"} 1.0' in proxy.metrics()
            ),
            10,
            interval=0.5,
        )
    (set_line,) = [r for r in first.log_records() if r.get("message") == "login delay set"]
    assert (set_line["user"], set_line["mode"], set_line["reason"]) == (
        f"alice@{TENANT}",
        "wait",
        "mailbox move",
    )


def test_a_delay_longer_than_the_wait_gets_login_delay_and_lifting_it_lets_logins_in_at_once(
    replicas,
):
    first, second = replicas
    out = delay_cli(first, f"bob@{TENANT}", "--for", "10m")
    assert "logins get [LOGIN-DELAY]" in out  # the note: longer than a login can wait
    wait_for_change(replicas, "login delay set")
    for proxy in replicas:
        elapsed, reply = timed_login(proxy, f"bob@{TENANT}", USERS["bob"])
        assert reply.startswith(b"-ERR [LOGIN-DELAY]"), reply
        assert elapsed < 2.0  # at once, not after a wait that could not be long enough
    assert timed_login(first, f"carol@{TENANT}", USERS["carol"])[1].startswith(b"+OK")
    assert "lifted" in delay_cli(second, f"bob@{TENANT}", "--lift")
    assert listed(first) == []
    wait_for_change(replicas, "login delay lifted")
    for proxy in replicas:
        elapsed, reply = timed_login(proxy, f"bob@{TENANT}", USERS["bob"])
        assert reply.startswith(b"+OK") and elapsed < 1.0, (elapsed, reply)
    failed = [r for r in first.log_records() if r.get("message") == "login failed"]
    assert [r["result"] for r in failed] == ["delayed"]
    wait_until(
        lambda: (
            f'pop3proxy_auth_total{{mechanism="password",result="delayed",tenant="{TENANT}"}} 1.0'
            in first.metrics()
        ),
        10,
        interval=0.5,
    )
    assert "no login delay" in delay_cli(first, f"bob@{TENANT}", "--lift")


def test_a_refusing_tenant_delay_refuses_every_user_of_the_tenant_only(replicas):
    first, _ = replicas
    delay_cli(first, "--tenant", TENANT.upper(), "--for", "1m", "--mode", "refuse")
    wait_for_change((first,), "login delay set")
    for user in ("alice", "dave"):
        reply = timed_login(first, f"{user}@{TENANT}", USERS[user])[1]
        assert reply.startswith(b"-ERR [LOGIN-DELAY]"), reply
    # An unknown tenant still gets [AUTH]: the delay tells a guesser nothing.
    assert timed_login(first, "alice@nowhere.example", "x")[1].startswith(b"-ERR [AUTH]")
    delay_cli(first, "--tenant", TENANT, "--lift")


def test_a_local_tenant_checks_the_password_before_the_delay(make_local_tenant, dovecot):
    proxy = make_local_tenant(dovecot)
    delay_cli(proxy, f"alice@{LOCAL_TENANT}", "--for", "1h")
    wait_for_change((proxy,), "login delay set")
    assert timed_login(proxy, f"alice@{LOCAL_TENANT}", WRONG_PASSWORD)[1].startswith(b"-ERR [AUTH]")
    assert timed_login(proxy, f"bob@{LOCAL_TENANT}", "guess")[1].startswith(b"-ERR [AUTH]")
    reply = timed_login(proxy, f"alice@{LOCAL_TENANT}", "local-pass")[1]
    assert reply.startswith(b"-ERR [LOGIN-DELAY]"), reply


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        ((f"alice@{TENANT}", "--for", "soon"), "--for"),
        ((f"alice@{TENANT}", "--for", "0s"), "--for"),
        (("--for", "1m"), "USER@TENANT or --tenant"),
        ((f"alice@{TENANT}", "--tenant", TENANT, "--for", "1m"), "USER@TENANT or --tenant"),
        (("--list", "--tenant", TENANT), "--list"),
        ((f"alice@{TENANT}",), "one of the arguments"),
    ],
)
def test_bad_usage_exits_2_with_a_reason(replicas, args, complaint):
    result = run_cli(replicas[0].config_path, "user", "delay", *args)
    assert result.returncode == 2, result
    assert complaint in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_tenant_is_refused_and_redis_unreachable_exits_1(replicas, make_proxy):
    result = run_cli(replicas[0].config_path, "user", "delay", "a@typo.example", "--for", "1m")
    assert result.returncode == 1 and "typo.example" in result.stderr
    assert listed(replicas[0]) == []
    proxy = make_proxy(
        {"directory": {"redis_url": "redis://127.0.0.1:1/0"}}, start=False, tenants=False
    )
    for args in ((f"alice@{TENANT}", "--for", "1m"), ("--list",), ("--tenant", "x", "--lift")):
        result = run_cli(proxy.config_path, "user", "delay", *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "redis" in result.stderr.lower() and "Traceback" not in result.stderr


def test_route_shows_the_delay_a_login_meets(replicas):
    first, _ = replicas

    def route(*args: str) -> dict[str, Any]:
        result = run_cli(first.config_path, "route", f"erin@{TENANT}", *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout) if args else {"text": result.stdout}

    assert route("--json")["delay"] is None
    assert "delay:     none" in route()["text"]
    delay_cli(first, f"erin@{TENANT}", "--for", "5m", "--reason", "move")
    delay_cli(first, "--tenant", TENANT, "--for", "8s")
    shown = route("--json")["delay"]
    assert (shown["scope"], shown["key"], shown["mode"]) == ("user", f"erin@{TENANT}", "wait")
    assert shown["login"] == "refused [LOGIN-DELAY]"  # 5 minutes: longer than a login waits
    delay_cli(first, f"erin@{TENANT}", "--lift")
    shown = route("--json")["delay"]
    assert (shown["scope"], shown["key"]) == ("tenant", TENANT)
    assert shown["login"].startswith("waits ") and shown["login"].endswith("s, then proceeds")
    assert f"delay:     tenant {TENANT}: wait" in route()["text"]
    delay_cli(first, "--tenant", TENANT, "--lift")
