"""The download budget: meters, batched flushes to a real Redis, the crossing
and its delay, and two processes (two Downloads on one Redis) agreeing."""

from __future__ import annotations

import calendar
import time
import uuid

import pytest
import redis

from pop3proxy import metrics
from pop3proxy.config import ConfigError, parse_config
from pop3proxy.delays import REFUSE, USER, Delays, read_delays
from pop3proxy.downloads import BUDGET_REASON, Downloads, counter_key, window
from pop3proxy.redisconn import RedisHealth
from pop3proxy.schema import parse_size

ALICE = "alice@acme.example"
BOB = "bob@acme.example"


@pytest.fixture
def shared(redis_server):
    client = redis_server.client()
    yield client, f"dl-{uuid.uuid4().hex[:8]}"
    client.close()


def process(client, prefix: str, budget: int) -> Downloads:
    """One proxy process's view: its delays and its accounts."""
    delays = Delays(client, prefix, RedisHealth("test"))
    return Downloads(client, prefix, delays.health, delays, budget)


def test_the_window_is_the_utc_day():
    midnight = calendar.timegm((2026, 12, 8, 0, 0, 0))
    assert window(midnight - 0.5) == ("20261207", float(midnight))
    assert window(midnight) == ("20261208", float(midnight + 86400))


@pytest.mark.parametrize(
    ("text", "size"),
    [("1250MB", 1_250_000_000), ("2GiB", 2 * 1024**3), ("500 kB", 500_000), (4096, 4096)],
)
def test_sizes(text, size):
    assert parse_size(text) == size


PLAIN = {"listeners": [{"name": "pop3", "address": "127.0.0.1:1110", "tls": "none"}]}


def test_the_budget_setting_is_off_by_default_and_takes_a_size():
    assert parse_config(PLAIN).limits.download_per_user_day == 0
    config = parse_config({**PLAIN, "limits": {"download_per_user_day": "1250MB"}})
    assert config.limits.download_per_user_day == 1_250_000_000
    with pytest.raises(ConfigError) as error:
        parse_config({**PLAIN, "limits": {"download_per_user_day": "lots"}})
    assert error.value.problems == [
        "limits.download_per_user_day: expected a size such as 500MB or 2GiB, got 'lots'"
    ]


def test_no_meter_and_no_cost_with_the_budget_off(shared):
    client, prefix = shared
    downloads = process(client, prefix, budget=0)
    assert downloads.meter(ALICE) is None
    assert not downloads.exhausted(ALICE)
    downloads.flush()
    assert downloads.accounts == {}


def test_add_counts_in_memory_and_a_flush_writes_one_incrby_per_user(shared):
    client, prefix = shared
    downloads = process(client, prefix, budget=10_000)
    meters = [downloads.meter(ALICE), downloads.meter(ALICE), downloads.meter(BOB)]
    for meter in meters:
        assert meter is not None
        meter.add(100)
    day, end = window(time.time())
    assert client.get(counter_key(prefix, day, ALICE)) is None  # nothing until the flush
    downloads.flush()
    assert int(client.get(counter_key(prefix, day, ALICE))) == 200
    assert int(client.get(counter_key(prefix, day, BOB))) == 100
    ttl = client.ttl(counter_key(prefix, day, ALICE))
    assert end - time.time() < ttl <= end - time.time() + 3601
    downloads.flush()  # nothing new: nothing written
    assert int(client.get(counter_key(prefix, day, ALICE))) == 200
    assert not any(meter.exhausted for meter in meters if meter)


def test_crossing_exhausts_every_meter_of_the_user_here_and_on_another_process(shared):
    client, prefix = shared
    first, second = process(client, prefix, 1000), process(client, prefix, 1000)
    downloading, idle_here = first.meter(ALICE), first.meter(ALICE)
    held_elsewhere, other_user = second.meter(ALICE), second.meter(BOB)
    assert downloading and idle_here and held_elsewhere and other_user
    downloading.add(600)
    first.flush()
    assert not downloading.exhausted
    before = metrics._pending.get((metrics.DOWNLOAD_BUDGET_EXHAUSTED, ()), 0)
    downloading.add(600)
    first.flush()
    assert downloading.exhausted and idle_here.exhausted and first.exhausted(ALICE)
    assert metrics._pending[(metrics.DOWNLOAD_BUDGET_EXHAUSTED, ())] == before + 1
    (delay,) = read_delays(client, prefix).values()
    assert (delay.scope, delay.key, delay.mode) == (USER, ALICE, REFUSE)
    assert delay.reason == BUDGET_REASON
    assert delay.until == window(time.time())[1]
    # The other process: its idle session learns from the delay, read in the background.
    second.delays.update()
    second.flush()
    assert held_elsewhere.exhausted and not other_user.exhausted
    # It writes no second delay, even when its own bytes add up past the budget.
    held_elsewhere.add(10)
    second.flush()
    assert metrics._pending[(metrics.DOWNLOAD_BUDGET_EXHAUSTED, ())] == before + 1


def test_redis_down_counts_in_memory_and_flushes_later(shared, redis_server):
    client, prefix = shared
    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    downloads = process(dead, prefix, budget=1000)
    meter = downloads.meter(ALICE)
    assert meter is not None
    meter.add(700)
    started = time.monotonic()
    downloads.flush()
    assert time.monotonic() - started < 1.0
    assert downloads.accounts[ALICE].unflushed == 700  # kept for later
    meter.add(400)
    downloads.flush()  # Redis still down: judged on what this process knows
    assert meter.exhausted
    downloads.client = client
    downloads.health = RedisHealth("test")
    downloads.flush()
    assert int(client.get(counter_key(prefix, window(time.time())[0], ALICE))) == 1100
    assert downloads.accounts[ALICE].unflushed == 0
    assert [d.key for d in read_delays(client, prefix).values()] == [ALICE]


def test_accounts_of_ended_sessions_are_flushed_then_forgotten(shared):
    client, prefix = shared
    downloads = process(client, prefix, budget=10_000)
    meter = downloads.meter(ALICE)
    assert meter is not None
    meter.add(123)
    del meter  # the session ended before the flush
    downloads.flush()
    assert int(client.get(counter_key(prefix, window(time.time())[0], ALICE))) == 123
    assert downloads.accounts == {}


def test_stop_flushes_what_is_left(shared):
    client, prefix = shared
    downloads = process(client, prefix, budget=10_000)
    downloads.start()
    meter = downloads.meter(BOB)
    assert meter is not None
    meter.add(50)
    downloads.stop()
    assert int(client.get(counter_key(prefix, window(time.time())[0], BOB))) == 50
