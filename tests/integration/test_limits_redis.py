"""Failure budgets and leases in a real Redis: shared between limiters, self-expiring."""

from __future__ import annotations

import os
import shutil
import signal
import time

import gevent
import pytest
from harness.cluster import RedisClusterSet
from harness.ports import wait_until
from harness.redis import RedisServer
from redis.backoff import NoBackoff
from redis.retry import Retry

from pop3proxy.config import AuthConfig, IPv6Budget
from pop3proxy.limits import FailureLimiter, LeaseLimiter, Slot
from pop3proxy.redisconn import RedisHealth


@pytest.fixture
def client(redis_server: RedisServer, request):
    client = redis_server.client()
    yield client
    for key in client.scan_iter(match=f"{request.node.name}:*"):
        client.delete(key)
    client.close()


def test_two_limiters_share_one_budget(client, request):
    policy = AuthConfig(block_after=10)
    replicas = [FailureLimiter(client, request.node.name, policy) for _ in range(2)]
    for i in range(10):
        replicas[i % 2].failed("alice@acme.example", f"192.0.2.{i}")
    assert replicas[0].check("alice@acme.example", "192.0.2.200").blocked
    assert replicas[1].check("alice@acme.example", "192.0.2.200").blocked
    keys = [k.decode() for k in client.scan_iter(match=f"{request.node.name}:*")]
    assert not any("alice" in key for key in keys), "user names are digested"
    assert all(client.ttl(key) > 0 for key in keys), "every counter expires"


def test_the_new_budgets_are_shared_through_redis_and_bounded(client, request):
    """Networks, sprays and known clients: what one replica learns, the other
    applies; every key expires, and the known clients of a user are capped."""
    prefix = request.node.name
    policy = AuthConfig(
        block_after=3,
        block_after_names_per_address=3,
        ipv6_networks=(IPv6Budget(56, 4),),
        known_addresses_per_user=2,
    )
    first, second = (FailureLimiter(client, prefix, policy) for _ in range(2))
    for subnet in range(4):
        first.failed(f"user{subnet}@acme.example", f"2001:db8:0:{subnet}::1")
    assert second.check("x@acme.example", "2001:db8:0:9::1").scope == "network"
    for name in ("a", "b", "c"):
        first.failed(f"{name}@acme.example", "192.0.2.50")
    assert second.check("x@acme.example", "192.0.2.50").scope == "names"
    for host in (1, 2, 3):
        address = f"192.0.2.{host}"
        first.succeeded("alice@acme.example", address, first.check("alice@acme.example", address))
    for _ in range(3):
        first.failed("alice@acme.example", "198.51.100.1")
    assert second.check("alice@acme.example", "198.51.100.2").scope == "user"
    assert second.check("alice@acme.example", "192.0.2.3").known
    assert second.check("alice@acme.example", "192.0.2.1").blocked, "only the newest two"
    keys = [k.decode() for k in client.scan_iter(match=f"{prefix}:*")]
    assert not any("alice" in key or "192.0.2.3" in key for key in keys if ":known:" in key)
    assert all(client.ttl(key) > 0 for key in keys), "every key expires"
    (known,) = [key for key in keys if ":known:" in key]
    assert client.zcard(known) == 2


def test_leases_are_shared_and_expire_when_not_renewed(client, request):
    clock = [time.time()]
    crashed = LeaseLimiter(client, request.node.name, lease_ttl=30, clock=lambda: clock[0])
    alive = LeaseLimiter(client, request.node.name, lease_ttl=30, clock=lambda: clock[0])
    slot = Slot("tenant", "acme.example", 2)
    assert crashed.acquire("a1", [slot])[0] is not None
    assert crashed.acquire("a2", [slot])[0] is not None
    assert alive.acquire("b1", [slot])[0] is None, "the limit holds across replicas"
    clock[0] += 31  # the crashed replica never renews
    assert alive.acquire("b1", [slot])[0] is not None


def test_renewal_keeps_leases_alive(client, request):
    clock = [time.time()]
    holder = LeaseLimiter(client, request.node.name, lease_ttl=30, clock=lambda: clock[0])
    other = LeaseLimiter(client, request.node.name, lease_ttl=30, clock=lambda: clock[0])
    slot = Slot("user", "alice@acme.example", 1)
    lease, _ = holder.acquire("h1", [slot])
    for _ in range(4):
        clock[0] += 20
        holder.renew()
        assert other.acquire("o1", [slot])[0] is None
    holder.release(lease)
    assert other.acquire("o1", [slot])[0] is not None


def test_a_lease_takes_every_scope_or_none(client, request):
    """Tenant and user slots go to Redis together; a full user slot gives the
    tenant slot back, and the reply names the scope that was full."""
    first = LeaseLimiter(client, request.node.name)
    second = LeaseLimiter(client, request.node.name)
    tenant = Slot("tenant", "acme.example", 5)
    user = Slot("user", "alice@acme.example", 1)
    lease, full = first.acquire("s1", [tenant, user])
    assert lease is not None and full is None
    lease2, full2 = second.acquire("s2", [tenant, user])
    assert lease2 is None and full2 == user
    assert client.zcard(first.key(tenant)) == 1, "the refused session's tenant slot went back"
    first.release(lease)
    assert client.zcard(first.key(tenant)) == 0
    assert client.zcard(first.key(user)) == 0


def test_leases_survive_redis_forgetting_the_script(client, request):
    """After a Redis restart or SCRIPT FLUSH the script is loaded again, once."""
    holder = LeaseLimiter(client, request.node.name)
    other = LeaseLimiter(client, request.node.name)
    slot = Slot("user", "bob@acme.example", 1)
    assert holder.acquire("h1", [slot])[0] is not None
    client.script_flush()
    assert other.acquire("o1", [slot])[0] is None, "still counted in Redis, not locally"


@pytest.mark.skipif(
    shutil.which("redis-cli") is None or shutil.which("redis-server") is None,
    reason="redis-server and redis-cli are needed",
)
def test_leases_in_a_redis_cluster_span_hash_slots():
    """The tenant and user keys hash to different slots: one pipeline, several nodes."""
    with RedisClusterSet() as cluster:
        client = cluster.client()
        first, second = LeaseLimiter(client, "cl"), LeaseLimiter(client, "cl")
        slots = [Slot("tenant", f"t{i}.example", 1) for i in range(6)]
        lease, full = first.acquire("s1", slots)
        assert lease is not None and full is None
        assert second.acquire("s2", slots[3:4]) == (None, slots[3])
        first.release(lease)
        assert second.acquire("s2", slots)[0] is not None
        client.close()


def test_redis_down_falls_back_to_local_counting():
    dead = RedisServer()
    dead.start()
    client = dead.client(retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
    dead.stop()
    policy = AuthConfig(block_after=3, block_after_names_per_address=4)
    limiter = FailureLimiter(client, "down", policy)
    for _ in range(3):
        limiter.failed("alice@acme.example", "192.0.2.1")
    assert limiter.check("alice@acme.example", "192.0.2.1").blocked
    owner = limiter.check("alice@acme.example", "192.0.2.200")
    assert owner.blocked, "the owner has not logged in from here yet"
    limiter.succeeded(
        "bob@acme.example", "192.0.2.200", limiter.check("bob@acme.example", "192.0.2.200")
    )
    for _ in range(3):
        limiter.failed("bob@acme.example", "192.0.2.2")
    assert limiter.check("bob@acme.example", "192.0.2.200").known, "known clients, per process"
    for name in ("c", "d", "f"):  # and bob: four names
        limiter.failed(f"{name}@acme.example", "192.0.2.2")
    assert limiter.check("e@acme.example", "192.0.2.2").scope == "names", "sprays, per process"
    leases = LeaseLimiter(client, "down")
    assert leases.acquire("s1", [Slot("user", "alice@acme.example", 1)])[0] is not None
    assert leases.acquire("s2", [Slot("user", "alice@acme.example", 1)])[0] is None


def test_a_hung_redis_is_waited_for_once_by_every_limiter():
    """Budgets and leases share one view of Redis: the first request to a
    stopped Redis waits for its timeout, every later one (check, count,
    acquire, release, renew) falls back at once, and a lease counted here
    meanwhile is never written to Redis, not even by a later renewal."""
    with RedisServer() as server:
        client = server.client(socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
        health = RedisHealth("test", probe=client.ping)
        failures = FailureLimiter(client, "hung", AuthConfig(block_after=3), health=health)
        leases = LeaseLimiter(client, "hung", health=health)
        slot = Slot("user", "alice@acme.example", 1)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            assert not failures.check("alice@acme.example", "192.0.2.1").blocked  # waits, once
            started = time.monotonic()
            for _ in range(3):
                failures.failed("alice@acme.example", "192.0.2.1")
            assert failures.check("alice@acme.example", "192.0.2.1").blocked
            lease, _ = leases.acquire("s1", [slot])
            assert lease is not None and leases.acquire("s2", [slot]) == (None, slot)
            leases.renew()
            leases.release(lease)
            assert time.monotonic() - started < 0.25, "a call waited on the stopped Redis"
            held, _ = leases.acquire("s3", [slot])
        finally:
            os.kill(server.pid, signal.SIGCONT)

        def probed() -> bool | None:
            failures.check("bob@acme.example", None)  # due: starts the background probe
            gevent.sleep(0.05)
            return health.up

        wait_until(probed, 10)
        leases.renew()
        assert client.zcard(leases.key(slot)) == 0
        assert held is not None
        leases.release(held)
