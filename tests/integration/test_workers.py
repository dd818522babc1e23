"""``workers: 2``: two processes accept on the same sockets, one merged /metrics."""

from __future__ import annotations

import os
import signal

from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess
from harness.users import USERS
from harness.wire import Pop3Wire
from test_observability import Samples, delta, scrape


def workers_started(proxy: ProxyProcess) -> dict[int, int]:
    """The pid of each worker slot, latest start first wins."""
    return {
        r["worker"]: r["pid"]
        for r in proxy.log_records()
        if r["message"] == "worker started" and r["logger"] == "pop3proxy.supervisor"
    }


def worker_ready(proxy: ProxyProcess, slots: int) -> dict[int, int]:
    """Wait until every slot's current worker logged its own "started"."""

    def check() -> dict[int, int] | None:
        pids = workers_started(proxy)
        running = {r["pid"] for r in proxy.log_records() if r["message"] == "started"}
        return pids if len(pids) == slots and set(pids.values()) <= running else None

    return wait_until(check, 20, message="workers started")


def login_and_quit(proxy: ProxyProcess, user: str) -> None:
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login(f"{user}@{TENANT}", USERS[user])
        assert wire.command("QUIT").startswith(b"+OK")


def quits(proxy: ProxyProcess) -> list[dict]:
    return [s for s in proxy.sessions() if s["end"] == "quit" and s["result"] == "ok"]


def settled(proxy: ProxyProcess, sessions: int, before: Samples) -> Samples:
    """Metrics once ``sessions`` logins are counted and every accepted connection ended.

    A worker writes its counts into the shared files one series after another,
    so a scrape can land between two of them: wait for each figure asserted on.
    """

    def check() -> Samples | None:
        now = scrape(proxy)
        plain = frozenset({("listener", "plain")})
        summaries = [s for s in proxy.sessions() if s["listener"] == "plain"]
        done = (
            delta(before, now, "pop3proxy_commands_total", tenant=TENANT, command="QUIT")
            == sessions
            and delta(before, now, "pop3proxy_session_duration_seconds_count", tenant=TENANT)
            == sessions
            and now.get(("pop3proxy_connections_active", plain)) == 0
            and now.get(("pop3proxy_connections_total", plain)) == len(summaries)
        )
        return now if done else None

    return wait_until(check, 10, message="merged metrics")


def test_both_workers_take_sessions_and_metrics_are_summed(make_proxy, fresh_mailbox):
    proxy = make_proxy({"workers": 2})
    pids = worker_ready(proxy, 2)
    assert len(set(pids.values())) == 2
    fresh_mailbox("alice")
    before = scrape(proxy)
    count = 0
    while len({s["worker"] for s in quits(proxy)}) < 2:
        assert count < 100, "one worker took every session"
        login_and_quit(proxy, "alice")
        count += 1
        wait_until(lambda n=count: len(quits(proxy)) == n, 5)
    after = settled(proxy, count, before)
    # Each summary line names its worker; session ids carry a per-process prefix.
    by_worker = {s["worker"]: s["session"].split("-")[0] for s in quits(proxy)}
    assert len(set(by_worker.values())) == 2
    logins = {"tenant": TENANT, "result": "ok", "mechanism": "password"}
    assert delta(before, after, "pop3proxy_auth_total", **logins) == count
    assert delta(before, after, "pop3proxy_session_duration_seconds_count", tenant=TENANT) == count
    assert after[("pop3proxy_sessions_active", frozenset({("tenant", TENANT)}))] == 0
    assert after[("pop3proxy_build_info", frozenset({("version", "0.1.0")}))] == 1
    assert proxy.http_get("/readyz") == (200, "ready\n")


def test_dead_worker_is_restarted_and_drain_reaches_every_worker(make_proxy, fresh_mailbox):
    """SIGKILL one worker: its slot gets a new process and its counts stay in /metrics.
    Then SIGTERM to the supervisor drains both workers: a logged-in session finishes,
    and the whole tree exits 0."""
    proxy = make_proxy({"workers": 2, "timeouts": {"drain": "20s"}})
    pids = worker_ready(proxy, 2)
    fresh_mailbox("bob")
    before = scrape(proxy)
    for _ in range(4):
        login_and_quit(proxy, "bob")
    counted = settled(proxy, 4, before)
    os.kill(pids[1], signal.SIGKILL)
    restarted = wait_until(
        lambda: (now := workers_started(proxy)).get(1) not in (None, pids[1]) and now, 10
    )
    assert restarted[2] == pids[2]
    worker_ready(proxy, 2)
    after_kill = scrape(proxy)
    labels = {("tenant", TENANT), ("result", "ok"), ("mechanism", "password")}
    key = ("pop3proxy_auth_total", frozenset(labels))
    assert after_kill[key] == counted[key]  # the dead worker's logins are not forgotten
    assert any(r["message"] == "worker exited: restarting" for r in proxy.log_records())

    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login(f"bob@{TENANT}", USERS["bob"])
        proxy.signal(signal.SIGTERM)
        wait_until(lambda: proxy.http_get("/readyz")[0] != 200, 5)
        assert wire.command("STAT").startswith(b"+OK")
        assert wire.command("QUIT").startswith(b"+OK")
    assert proxy.wait(20) == 0
    stopped = [r for r in proxy.log_records() if r["message"] == "worker stopped"]
    assert sorted(r["worker"] for r in stopped) == [1, 2]
    assert all(r["exit_code"] == 0 for r in stopped)
