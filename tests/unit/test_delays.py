"""Login delays: the shared hash in a real Redis, each replica's copy, and a login's hold."""

from __future__ import annotations

import json
import logging
import time
import uuid

import gevent
import pytest

from pop3proxy import metrics
from pop3proxy.delays import (
    REFUSE,
    TENANT,
    USER,
    WAIT,
    Delay,
    Delays,
    delays_key,
    lift_delay,
    read_delays,
    set_delay,
)

ALICE = "alice@acme.example"


@pytest.fixture
def shared(redis_server):
    """A Redis client and a key prefix of this test's own."""
    client = redis_server.client()
    yield client, f"delays-{uuid.uuid4().hex[:8]}"
    client.close()


def test_a_delay_is_stored_in_the_agreed_form(shared):
    client, prefix = shared
    until = time.time() + 60
    set_delay(client, prefix, USER, ALICE, until, WAIT, "mailbox move")
    stored = client.hgetall(delays_key(prefix))
    assert list(stored) == [f"user:{ALICE}".encode()]
    assert json.loads(stored[f"user:{ALICE}".encode()]) == {
        "until": until,
        "mode": "wait",
        "reason": "mailbox move",
    }
    assert read_delays(client, prefix) == {
        f"user:{ALICE}": Delay(USER, ALICE, until, WAIT, "mailbox move")
    }


def test_ended_and_foreign_entries_are_ignored_and_removed_by_the_next_writer(shared):
    client, prefix = shared
    key = delays_key(prefix)
    client.hset(key, "user:old@acme.example", json.dumps({"until": time.time() - 1, "mode": WAIT}))
    client.hset(key, "garbage", "not json")
    client.hset(key, "tenant:x.example", json.dumps({"until": time.time() + 60, "mode": "nap"}))
    assert read_delays(client, prefix) == {}
    set_delay(client, prefix, TENANT, "acme.example", time.time() + 60, REFUSE)
    assert client.hkeys(key) == [b"tenant:acme.example"]


def test_lift_removes_the_delay_and_says_what_was_in_force(shared):
    client, prefix = shared
    set_delay(client, prefix, USER, ALICE, time.time() + 60, WAIT)
    lifted = lift_delay(client, prefix, USER, ALICE)
    assert lifted is not None and lifted.key == ALICE
    assert read_delays(client, prefix) == {}
    assert lift_delay(client, prefix, USER, ALICE) is None


def test_a_bad_scope_or_mode_is_refused(shared):
    client, prefix = shared
    with pytest.raises(ValueError, match="scope"):
        set_delay(client, prefix, "domain", "acme.example", time.time() + 1, WAIT)
    with pytest.raises(ValueError, match="mode"):
        set_delay(client, prefix, USER, ALICE, time.time() + 1, "nap")


def test_a_replica_follows_set_and_lift_and_logs_and_counts_each_change(shared, caplog):
    client, prefix = shared
    caplog.set_level(logging.INFO, logger="pop3proxy.delays")
    delays = Delays(client, prefix, refresh=0.05, log_user=lambda user: "hashed")
    delays.start()
    try:
        set_delay(client, prefix, USER, ALICE, time.time() + 60, WAIT, "move")
        deadline = time.monotonic() + 2
        while delays.current("acme.example", ALICE) is None and time.monotonic() < deadline:
            gevent.sleep(0.02)
        assert delays.current("acme.example", ALICE) is not None
        assert delays.current("acme.example", "bob@acme.example") is None
        lift_delay(client, prefix, USER, ALICE)
        while delays.current("acme.example", ALICE) is not None and time.monotonic() < deadline:
            gevent.sleep(0.02)
        assert delays.current("acme.example", ALICE) is None
    finally:
        delays.stop()
    changes = [r for r in caplog.records if r.name == "pop3proxy.delays"]
    assert [r.getMessage() for r in changes] == ["login delay set", "login delay lifted"]
    assert all(r.user == "hashed" for r in changes)  # logging.user applies
    assert metrics._pending[(metrics.DELAY_CHANGES, (USER, "lifted"))] >= 1


def test_a_refusing_delay_wins_over_a_longer_waiting_one():
    delays = Delays(None, "x")
    now = time.time()
    user = Delay(USER, ALICE, now + 600, WAIT)
    tenant = Delay(TENANT, "acme.example", now + 30, REFUSE)
    delays.delays = {f"user:{ALICE}": user, "tenant:acme.example": tenant}
    assert delays.current("acme.example", ALICE) == tenant
    assert delays.current("acme.example", "bob@acme.example") == tenant
    assert delays.current("other.example", ALICE) == user
    assert delays.current("acme.example", ALICE, now=now + 60) == user  # the tenant's ended


def test_a_login_waits_out_a_short_delay_and_proceeds():
    delays = Delays(None, "x")
    delays.delays = {f"user:{ALICE}": Delay(USER, ALICE, time.time() + 0.3, WAIT)}
    started = time.monotonic()
    held = delays.hold("acme.example", ALICE, allowance=5)
    assert held is not None and held.refused is None
    assert 0.25 <= time.monotonic() - started < 1.0
    assert held.waited >= 0.25
    assert delays.hold("acme.example", "bob@acme.example", allowance=5) is None


def test_a_delay_longer_than_the_allowance_and_a_refusing_one_refuse_at_once():
    delays = Delays(None, "x")
    long = Delay(USER, ALICE, time.time() + 30, WAIT)
    delays.delays = {f"user:{ALICE}": long}
    started = time.monotonic()
    held = delays.hold("acme.example", ALICE, allowance=5)
    assert held is not None and held.refused == long
    refusing = Delay(TENANT, "acme.example", time.time() + 0.2, REFUSE)
    delays.delays = {"tenant:acme.example": refusing}
    held = delays.hold("acme.example", ALICE, allowance=5)
    assert held is not None and held.refused == refusing
    assert time.monotonic() - started < 0.1


def test_a_lift_while_waiting_lets_the_login_go_at_once():
    delays = Delays(None, "x")
    delays.delays = {f"user:{ALICE}": Delay(USER, ALICE, time.time() + 3, WAIT)}
    gevent.spawn_later(0.2, lambda: setattr(delays, "delays", {}))
    started = time.monotonic()
    held = delays.hold("acme.example", ALICE, allowance=5)
    assert held is not None and held.refused is None
    assert time.monotonic() - started < 1.0


def test_redis_unreachable_keeps_the_delays_last_read(shared):
    client, prefix = shared
    delays = Delays(client, prefix)
    set_delay(client, prefix, TENANT, "acme.example", time.time() + 60, WAIT)
    delays.update()
    delays.client = type(client).from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    delays.update()
    assert delays.current("acme.example", ALICE) is not None
    assert delays.health.up is False
