"""Metrics move by exactly what happened; logs are JSON and hold no secret."""

from __future__ import annotations

import re

from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess
from harness.users import USERS, WRONG_PASSWORD
from harness.wire import Pop3Wire

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
    assert delta(before, after, "pop3proxy_auth_total", **t, result="ok") == 1
    assert delta(before, after, "pop3proxy_auth_total", **t, result="bad_credentials") == 1
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
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login(f"carol@{TENANT}", USERS["carol"])
        wire.command("STAT")
        wire.command("QUIT")
    records = wait_until(
        lambda: [s for s in proxy.sessions() if s.get("tenant") == TENANT and s["end"] == "quit"],
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
