"""Metrics move by exactly what happened; logs are JSON and hold no secret."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess
from harness.users import USERS, WRONG_PASSWORD
from harness.wire import Pop3Wire

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Samples = dict[tuple[str, frozenset], float]


def scrape(proxy: ProxyProcess) -> Samples:
    """The exposition text as ``{(name, labels): value}``; label order does not matter."""
    values: Samples = {}
    for line in proxy.metrics().splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = frozenset(LABEL.findall(match.group(2) or ""))
            values[(match.group(1), labels)] = float(match.group(3))
    return values


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_counters_move_by_exactly_what_happened(proxy, fresh_mailbox, dovecot):
    messages = fresh_mailbox("bob")
    before = scrape(proxy)
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.command(f"USER bob@{TENANT}")
        assert wire.command(f"PASS {WRONG_PASSWORD}").startswith(b"-ERR")
        wire.login(f"bob@{TENANT}", USERS["bob"])
        assert wire.command("RETR 1").startswith(b"+OK")
        body = wire.read_multiline()
        assert wire.command("QUIT").startswith(b"+OK")
    t = {"tenant": TENANT}

    def settled() -> Samples | None:
        """Counters are final once the session's QUIT has been counted."""
        now = scrape(proxy)
        return now if delta(before, now, "pop3proxy_commands_total", **t, command="QUIT") else None

    after = wait_until(settled, 5)
    password = {**t, "mechanism": "password"}
    assert delta(before, after, "pop3proxy_auth_total", **password, result="ok") == 1
    assert delta(before, after, "pop3proxy_auth_total", **password, result="bad_credentials") == 1
    assert delta(before, after, "pop3proxy_commands_total", **t, command="RETR") == 1
    assert delta(before, after, "pop3proxy_commands_total", **t, command="QUIT") == 1
    assert delta(before, after, "pop3proxy_sessions_active", **t) == 0
    assert delta(before, after, "pop3proxy_connections_total", listener="plain") == 1
    sent = delta(before, after, "pop3proxy_bytes_total", **t, direction="client_to_backend")
    assert sent == len(b"RETR 1\r\nQUIT\r\n")
    received = delta(before, after, "pop3proxy_bytes_total", **t, direction="backend_to_client")
    assert received > len(body) >= len(messages[0])
    assert after[("pop3proxy_build_info", frozenset({("version", "0.1.0")}))] == 1


def test_logs_are_json_with_a_session_summary(proxy, fresh_mailbox):
    fresh_mailbox("carol")
    earlier = len(proxy.sessions())  # the proxy is shared: only this test's session counts
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login(f"carol@{TENANT}", USERS["carol"])
        wire.command("STAT")
        wire.command("QUIT")
    records = wait_until(
        lambda: [
            s
            for s in proxy.sessions()[earlier:]
            if s.get("tenant") == TENANT and s["end"] == "quit"
        ],
        5,
    )
    summary = records[-1]
    for field in (
        "session",
        "listener",
        "client",
        "tenant",
        "backend",
        "result",
        "end",
        "bytes_in",
        "bytes_out",
        "commands",
        "duration",
    ):
        assert field in summary, field
    assert summary["commands"] == 2 and summary["result"] == "ok"


def test_no_password_reaches_logs_or_metrics(proxy, fresh_mailbox):
    """Log in well and badly with known passwords, then grep everything the proxy said."""
    fresh_mailbox("alice")
    secret = "Unique-Leak-Canary-7731"
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.command(f"USER alice@{TENANT}")
        wire.command(f"PASS {secret}")
        wire.command(f"USER {secret}@nowhere.example")
        wire.command(f"PASS {secret}")
        wire.login(f"alice@{TENANT}", USERS["alice"])
        wire.command("QUIT")
    wait_until(lambda: any(s.get("tenant") == TENANT for s in proxy.sessions()), 5)
    exposed = proxy.read_log() + proxy.metrics()
    for password in [secret, *USERS.values()]:
        assert password not in exposed


def find_promtool() -> str | None:
    local = ROOT / ".tools/bin/promtool"
    return str(local) if local.is_file() else shutil.which("promtool")


def run_every_kind_of_session(proxy: ProxyProcess, user: str) -> dict[str, int]:
    """One failed TLS handshake, then on ``plain``: an unknown tenant, a tenant whose
    backend is down, a wrong password, a good login, RETR 1 and QUIT.

    Returns the exact byte counts the relay moved, as the client saw them.
    """
    with socket.create_connection((proxy.host, proxy.ports["pop3s"])) as sock:
        sock.sendall(b"this is not a TLS ClientHello\r\n" * 8)
        with contextlib.suppress(ConnectionResetError):
            sock.recv(4096)  # a TLS alert, EOF or a reset: the proxy gave up
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.command("USER nobody@nowhere.example")
        assert wire.command(f"PASS {WRONG_PASSWORD}").startswith(b"-ERR [AUTH]")
        wire.command(f"USER {user}@down.example")
        assert wire.command(f"PASS {USERS[user]}").startswith(b"-ERR [SYS/TEMP]")
        wire.command(f"USER {user}@{TENANT}")
        assert wire.command(f"PASS {WRONG_PASSWORD}").startswith(b"-ERR [AUTH]")
        wire.login(f"{user}@{TENANT}", USERS[user])
        status = wire.command("RETR 1")
        assert status.startswith(b"+OK")
        body = wire.read_multiline()
        goodbye = wire.command("QUIT")
        assert goodbye.startswith(b"+OK")
    return {
        "client_to_backend": len(b"RETR 1\r\nQUIT\r\n"),
        "backend_to_client": len(status) + len(body) + len(goodbye),
    }


def settle(proxy: ProxyProcess, before: Samples) -> Samples:
    """Scrape until the session's QUIT, the TLS failure and both connections are counted."""

    def done() -> Samples | None:
        now = scrape(proxy)
        finished = (
            delta(before, now, "pop3proxy_commands_total", tenant=TENANT, command="QUIT") == 1
            and delta(
                before,
                now,
                "pop3proxy_tls_handshake_failures_total",
                listener="pop3s",
                reason="protocol",
            )
            == 1
            and now.get(("pop3proxy_connections_active", frozenset({("listener", "plain")}))) == 0
            and now.get(("pop3proxy_connections_active", frozenset({("listener", "pop3s")}))) == 0
        )
        return now if finished else None

    return wait_until(done, 10, message="the sessions' metrics")


def test_every_metric_family_moves_by_exactly_what_happened(make_proxy, fresh_mailbox, dovecot):
    """A private proxy, so the directory cache starts empty and every delta is known."""
    proxy = make_proxy()
    fresh_mailbox("dave")
    before = scrape(proxy)
    moved = run_every_kind_of_session(proxy, "dave")
    after = settle(proxy, before)

    def d(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    def value(name: str, **labels: str) -> float | None:
        return after.get((name, frozenset(labels.items())))

    t = {"tenant": TENANT}
    assert d("pop3proxy_connections_total", listener="plain") == 1
    assert d("pop3proxy_connections_total", listener="pop3s") == 1
    assert d("pop3proxy_connections_total", listener="pop3") == 0
    assert d("pop3proxy_tls_handshake_failures_total", listener="pop3s", reason="protocol") == 1
    m = {"mechanism": "password"}
    assert d("pop3proxy_auth_total", tenant="none", result="unknown_tenant", **m) == 1
    assert d("pop3proxy_auth_total", tenant="down.example", result="backend_error", **m) == 1
    assert d("pop3proxy_auth_total", **t, result="bad_credentials", **m) == 1
    assert d("pop3proxy_auth_total", **t, result="ok", **m) == 1
    assert value("pop3proxy_sessions_active", **t) == 0
    assert value("pop3proxy_sessions_limit", **t) == 200
    assert d("pop3proxy_session_duration_seconds_count", **t) == 1
    assert d("pop3proxy_session_duration_seconds_bucket", **t, le="+Inf") == 1
    for direction, count in moved.items():
        assert d("pop3proxy_bytes_total", **t, direction=direction) == count, direction
    assert d("pop3proxy_commands_total", **t, command="RETR") == 1
    assert d("pop3proxy_commands_total", **t, command="QUIT") == 1
    # Only the good login completes a backend login; the wrong password is refused in it.
    assert d("pop3proxy_backend_connect_seconds_count", **t) == 1
    errors = {
        dict(labels)["reason"]: value - before.get((name, labels), 0.0)
        for (name, labels), value in after.items()
        if name == "pop3proxy_backend_errors_total" and ("tenant", "down.example") in labels
    }
    assert sum(errors.values()) == 1 and next(iter(errors)).startswith("connect_"), errors
    assert value("pop3proxy_backend_up", **t, backend=f"{dovecot.host}:{dovecot.port}") == 1
    assert value("pop3proxy_backend_up", tenant="down.example", backend="127.0.0.1:1") == 0
    # nowhere.example: miss; down.example and the first acme lookup: Redis; the second: cache.
    assert d("pop3proxy_directory_lookups_total", source="miss") == 1
    assert d("pop3proxy_directory_lookups_total", source="redis") == 2
    assert d("pop3proxy_directory_lookups_total", source="cache") == 1
    assert d("pop3proxy_directory_redis_seconds_count") == 3
    assert value("pop3proxy_redis_up") == 1
    assert value("pop3proxy_build_info", version="0.1.0") == 1


def test_promtool_accepts_the_exposition(make_proxy, fresh_mailbox):
    """The scrape after real sessions passes ``promtool check metrics``; it is also left in
    ``.tools/metrics.txt``, where ``.ci/k8s-lint.sh`` checks it again."""
    proxy = make_proxy()
    fresh_mailbox("dave")
    before = scrape(proxy)
    run_every_kind_of_session(proxy, "dave")
    settle(proxy, before)
    text = proxy.metrics()
    (ROOT / ".tools").mkdir(exist_ok=True)
    (ROOT / ".tools/metrics.txt").write_text(text)
    promtool = find_promtool()
    if promtool is None:
        pytest.skip("promtool not found on PATH or in .tools/bin (run .ci/k8s-lint.sh once)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_bytes_are_counted_while_a_long_download_runs(make_proxy, fresh_mailbox):
    """A session still open shows its bytes after one ``metrics.flush_interval``."""
    proxy = make_proxy({"metrics": {"flush_interval": "200ms"}})
    messages = fresh_mailbox("erin")
    before = scrape(proxy)
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login(f"erin@{TENANT}", USERS["erin"])
        assert wire.command(f"RETR {len(messages)}").startswith(b"+OK")
        body = wire.read_multiline()
        key = {"tenant": TENANT, "direction": "backend_to_client"}
        during = wait_until(
            lambda: (
                delta(before, now := scrape(proxy), "pop3proxy_bytes_total", **key) > len(body)
                and now
            ),
            5,
            message="bytes counted before the session ends",
        )
        assert during[("pop3proxy_sessions_active", frozenset({("tenant", TENANT)}))] == 1
        assert delta(before, during, "pop3proxy_commands_total", tenant=TENANT, command="RETR")
        wire.command("QUIT")
    after = wait_until(
        lambda: (
            delta(
                before,
                now := scrape(proxy),
                "pop3proxy_commands_total",
                tenant=TENANT,
                command="QUIT",
            )
            and now
        ),
        5,
    )
    total = delta(before, after, "pop3proxy_bytes_total", **key)
    # Counted once: the flush at the end adds only what the periodic flushes had not.
    assert len(body) < total < len(body) + 200
    assert delta(before, after, "pop3proxy_commands_total", tenant=TENANT, command="RETR") == 1


def test_tenant_labels_are_capped(make_proxy, fresh_mailbox):
    """With ``max_tenant_labels: 1`` the first tenant keeps its name, the next is ``other``."""
    proxy = make_proxy({"metrics": {"max_tenant_labels": 1}})
    fresh_mailbox("alice")
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login(f"alice@{TENANT}", USERS["alice"])
        wire.command("QUIT")
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.command("USER alice@off.example")
        assert wire.command(f"PASS {USERS['alice']}").startswith(b"-ERR")
    samples = wait_until(
        lambda: (
            (now := scrape(proxy)).get(
                (
                    "pop3proxy_auth_total",
                    frozenset(
                        {("tenant", "other"), ("result", "disabled"), ("mechanism", "password")}
                    ),
                )
            )
            and now
        ),
        5,
    )
    tenants = {dict(labels).get("tenant") for _, labels in samples} - {None}
    assert tenants == {TENANT, "other"}


def test_every_log_line_is_json_and_log_level_changes_at_runtime(make_proxy, fresh_mailbox):
    """SIGUSR1 turns on debug lines (one per connection), SIGUSR2 turns them off again;
    SIGHUP goes back to the configured level. Every line of the run parses as JSON."""
    proxy = make_proxy()
    fresh_mailbox("bob")

    def connect() -> None:
        with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
            wire.command("QUIT")

    def debug_lines() -> int:
        return sum(r["level"] == "debug" for r in proxy.log_records())

    def level_changes() -> list[str]:
        return [r["log_level"] for r in proxy.log_records() if r["message"] == "log level changed"]

    def sessions() -> int:
        """Ours, not the harness's readiness probes (which close without a word)."""
        return sum(s["end"] == "quit" for s in proxy.sessions())

    connect()
    wait_until(lambda: sessions() == 1, 5)
    assert debug_lines() == 0
    proxy.signal(signal.SIGUSR1)
    wait_until(lambda: level_changes() == ["debug"], 5)
    connect()
    wait_until(lambda: sessions() == 2 and debug_lines() == 1, 5)
    proxy.signal(signal.SIGUSR2)
    wait_until(lambda: level_changes() == ["debug", "info"], 5)
    proxy.signal(signal.SIGUSR1)
    wait_until(lambda: level_changes() == ["debug", "info", "debug"], 5)
    proxy.signal(signal.SIGHUP)
    wait_until(
        lambda: any(r["message"] == "configuration reloaded" for r in proxy.log_records()), 5
    )
    connect()
    wait_until(lambda: sessions() == 3, 5)
    assert debug_lines() == 1
    for record in proxy.log_records():
        assert {"time", "level", "logger", "message"} <= set(record)
    summary = proxy.sessions()[-1]
    assert summary["listener"] == "plain" and summary["client"] == "127.0.0.1"
    assert summary["result"] == "no_login" and summary["end"] == "quit"
