"""The download budget across two proxy processes on one Redis, with a real
Dovecot and poplib: a download past the budget on one replica ends RETR on
the other one's session and new logins everywhere."""

from __future__ import annotations

import json
import poplib
import uuid

import pytest
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess, run_cli
from harness.users import USERS

from pop3proxy.delays import PROPAGATION_SECONDS
from pop3proxy.downloads import BUDGET_REASON, FLUSH_INTERVAL, window

BUDGET = 4000
"""Less than the sample's fourth message (5188 bytes), more than the first three together."""
LEARNT_WITHIN = FLUSH_INTERVAL * 2 + PROPAGATION_SECONDS + 2
"""A flush of the replica that crossed, the delay's read, a flush of the other."""


@pytest.fixture
def replicas(make_proxy) -> tuple[ProxyProcess, ProxyProcess]:
    shared = {
        "directory": {"key_prefix": f"budget-{uuid.uuid4().hex[:8]}"},
        "limits": {"download_per_user_day": BUDGET},
    }
    return make_proxy(shared), make_proxy(shared)


def pop(proxy: ProxyProcess, user: str) -> poplib.POP3:
    client = poplib.POP3(proxy.host, proxy.ports["plain"], timeout=30)
    try:
        client.user(f"{user}@{TENANT}")
        client.pass_(USERS[user])
    except BaseException:
        client.close()
        raise
    return client


def metric_value(proxy: ProxyProcess, name: str) -> float:
    for line in proxy.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def refused(client: poplib.POP3, command: str) -> bytes | None:
    """The -ERR line ``command`` got, or ``None`` when it was answered +OK."""
    try:
        if command.startswith("TOP"):
            _, number, lines = command.split()
            client.top(int(number), int(lines))
        else:
            client.retr(int(command.split()[1]))
    except poplib.error_proto as error:
        return error.args[0]
    return None


def test_a_download_past_the_budget_on_one_replica_refuses_retr_and_logins_on_both(
    replicas, fresh_mailbox, dovecot
):
    first, second = replicas
    messages = fresh_mailbox("alice")
    fresh_mailbox("bob")
    held = pop(second, "alice")  # a session held on the other replica
    assert held.stat()[0] == len(messages)
    downloader = pop(first, "alice")
    for number in (1, 2, 3):
        downloader.retr(number)  # 911 bytes: within the budget
    # The message that crosses the budget arrives whole.
    _, lines, _ = downloader.retr(4)
    assert lines == messages[3].rstrip(b"\n").split(b"\n")

    def listed_delay() -> dict | None:
        result = run_cli(first.config_path, "user", "delay", "--list", "--json")
        assert result.returncode == 0, result.stderr
        rows = [row for row in json.loads(result.stdout) if row["key"] == f"alice@{TENANT}"]
        return rows[0] if rows else None

    wait_until(lambda: listed_delay() is not None, LEARNT_WITHIN, message="the budget's delay")
    delay = listed_delay()
    assert delay is not None
    assert (delay["scope"], delay["mode"], delay["reason"]) == ("user", "refuse", BUDGET_REASON)
    assert delay["until"] == window(delay["until"] - 1)[1]  # the end of the UTC day
    explained = run_cli(second.config_path, "route", f"alice@{TENANT}", "--json")
    route = json.loads(explained.stdout)
    assert route["limits"]["download"]["budget"] == BUDGET
    assert route["limits"]["download"]["used_today"] >= BUDGET
    assert (route["delay"]["reason"], route["delay"]["login"]) == (
        BUDGET_REASON,
        "refused [LOGIN-DELAY]",
    )

    # The session held on the other replica: its next RETR (or TOP) is refused.
    wait_until(lambda: refused(held, "TOP 1 0") is not None, LEARNT_WITHIN, message="second learns")
    reply = refused(held, "RETR 5")
    assert reply is not None and reply.startswith(b"-ERR [SYS/TEMP]"), reply
    assert held.noop().startswith(b"+OK")  # the session itself goes on
    reply = refused(downloader, "RETR 5")
    assert reply is not None and reply.startswith(b"-ERR [SYS/TEMP]"), reply
    for client in (held, downloader):
        client.quit()
    # New logins, on both replicas: [LOGIN-DELAY]; another user is untouched.
    for proxy in replicas:
        with pytest.raises(poplib.error_proto) as error:
            pop(proxy, "alice")
        assert error.value.args[0].startswith(b"-ERR [LOGIN-DELAY]")
    bob = pop(second, "bob")
    assert bob.retr(4)[0].startswith(b"+OK")
    bob.quit()
    assert dovecot.message_count("alice") == len(messages)  # nothing deleted on the way

    crossings = [r for r in first.log_records() if r.get("message") == "download budget used up"]
    assert [(r["user"], r["budget"]) for r in crossings] == [(f"alice@{TENANT}", BUDGET)]
    assert crossings[0]["downloaded"] >= BUDGET
    assert not [r for r in second.log_records() if r.get("message") == "download budget used up"]
    wait_until(
        lambda: "pop3proxy_download_budget_exhausted_total 1.0" in first.metrics(),
        10,
        interval=0.5,
    )
    wait_until(  # its RETR 5 (the TOPs that probed it were refused as well)
        lambda: (
            "pop3proxy_download_budget_refusals_total" in first.metrics()
            and metric_value(first, "pop3proxy_download_budget_refusals_total") >= 1
        ),
        10,
        interval=0.5,
    )
    refusals = (
        f'pop3proxy_auth_total{{mechanism="password",result="download_budget",tenant="{TENANT}"}}'
        " 1.0"
    )
    for proxy in replicas:
        wait_until(
            lambda proxy=proxy: refusals in proxy.metrics(),
            10,
            interval=0.5,
        )


def test_with_the_budget_off_nothing_is_counted(make_proxy, fresh_mailbox, redis_server):
    proxy = make_proxy()
    fresh_mailbox("carol")
    client = pop(proxy, "carol")
    client.retr(6)  # 5 MB
    client.quit()
    prefix = proxy.config["directory"]["key_prefix"]
    redis = redis_server.client()
    assert redis.keys(f"{prefix}:downloads:*") == []
    redis.close()
