"""Abuse control shared by every replica: failed-login budgets and session leases.

Both live in Redis so that five replicas give an attacker one budget, not
five. Both fall back to this process's own memory while Redis is down: the
proxy keeps protecting the backends, per process, instead of failing open
or refusing everyone. Every round trip goes through the directory's
:class:`~pop3proxy.redisconn.RedisHealth`: once Redis is known to be down
(refusing, or hung), the fallback is taken at once, without waiting for a
timeout, until a probe finds Redis back.

Failed logins are counted per user name and per client address in fixed
windows (a key with a TTL). Past ``delay_after`` failures each refusal waits
longer before it is sent; from ``block_after`` on, logins are refused without
asking the backend until the window ends.

Concurrent sessions are leases: a sorted set per scope (tenant, user, client
address) whose members are session ids scored by their expiry. A holder
renews its leases every ``lease_ttl / 3``; a crashed replica's leases expire
on their own, so its slots come back within ``lease_ttl``.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import redis
from redis.cluster import RedisCluster

from pop3proxy.config import AuthConfig, Network
from pop3proxy.redisconn import RedisHealth

log = logging.getLogger("pop3proxy.limits")

Clock = Callable[[], float]


@functools.lru_cache(maxsize=4096)
def _digest(value: str) -> str:
    """Keys hold a digest of the user name, not the name: Redis is not a log.
    (Cached: a login asks for it up to three times.)"""
    return hashlib.sha256(value.lower().encode()).hexdigest()[:24]


class AllowList:
    """Client networks exempt from the failure budgets (monitoring, webmail)."""

    REMEMBERED = 4096
    """Verdicts kept: parsing an address costs more than the rest of a login check."""

    def __init__(self, cidrs: Iterable[str | Network] = ()) -> None:
        self.networks = [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]
        self._verdicts: dict[str, bool] = {}

    def __contains__(self, address: str | None) -> bool:
        if not address or not self.networks:
            return False
        verdict = self._verdicts.get(address)
        if verdict is None:
            if len(self._verdicts) >= self.REMEMBERED:
                self._verdicts.clear()
            verdict = self._verdicts[address] = self._allowed(address)
        return verdict

    def _allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)


BASE_DELAY = 1.0
"""Seconds of the first back-off delay; each further failure doubles it."""


def backoff(policy: AuthConfig, failures: int) -> float:
    """Seconds to wait before sending the refusal after ``failures`` failures."""
    if failures < policy.delay_after:
        return 0.0
    return min(BASE_DELAY * 2 ** (failures - policy.delay_after), policy.max_delay)


# Made for every login: a slotted record, not a frozen one (which sets each
# field through object.__setattr__). Not changed after it is made.
@dataclass(slots=True)
class Verdict:
    blocked: bool
    scope: str | None = None
    """``user`` or ``address`` when blocked: for metrics, never the value."""
    user_failures: int | None = 0
    """The name's failures so far (``None``: not looked up, from an allowed
    network): a good login has something to clear only when it is not 0."""


class _LocalWindows:
    """Fixed-window counters in memory, the fallback while Redis is down."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._counts: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> int:
        entry = self._counts.get(key)
        if entry is None:
            return 0
        count, expires = entry
        return count if self._clock() < expires else 0

    def incr(self, key: str, window: float) -> int:
        with self._lock:
            now = self._clock()
            count, expires = self._counts.get(key, (0, 0.0))
            if now >= expires:
                count, expires = 0, now + window
            self._counts[key] = (count + 1, expires)
            if len(self._counts) > 100_000:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            return count + 1

    def delete(self, key: str) -> None:
        self._counts.pop(key, None)


class FailureLimiter:
    """Counts failed logins per user name and per client address."""

    def __init__(
        self,
        client: redis.Redis | None,
        prefix: str,
        policy: AuthConfig,
        allow: AllowList | None = None,
        clock: Clock = time.time,
        *,
        health: RedisHealth | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.policy = policy
        self.allow = allow or AllowList()
        self.health = health or RedisHealth("redis")
        """Shared with the directory and the leases (the app's)."""
        self._local = _LocalWindows(clock)

    def _keys(self, user: str, address: str | None) -> tuple[str, str | None]:
        user_key = f"{self.prefix}:fail:user:{_digest(user)}"
        address_key = f"{self.prefix}:fail:addr:{address}" if address else None
        return user_key, address_key

    def check(self, user: str, address: str | None) -> Verdict:
        """Before asking the backend: is this login refused outright?"""
        if address in self.allow:
            return Verdict(blocked=False, user_failures=None)
        user_key, address_key = self._keys(user, address)
        user_count, address_count = self._counts(user_key, address_key)
        if user_count >= self.policy.block_after:
            return Verdict(blocked=True, scope="user")
        if address_count >= self.policy.block_after_per_address:
            return Verdict(blocked=True, scope="address")
        return Verdict(blocked=False, user_failures=user_count)

    def failed(self, user: str, address: str | None) -> float:
        """Count a failure; returns the delay to wait before refusing."""
        if address in self.allow:
            return 0.0
        user_key, address_key = self._keys(user, address)
        keys = [k for k in (user_key, address_key) if k]
        counts = self._incr(keys)
        return backoff(self.policy, counts[0])

    def succeeded(self, user: str) -> None:
        """A good login clears the user's budget (not the address's)."""
        user_key, _ = self._keys(user, None)
        self._local.delete(user_key)
        client = self.client
        if client is not None:
            self.health.call(lambda: client.delete(user_key), lambda: 0)

    def _counts(self, user_key: str, address_key: str | None) -> tuple[int, int]:
        keys = [user_key] + ([address_key] if address_key else [])
        values: list[int]
        client = self.client

        def in_redis() -> list[int]:
            # GETs in a pipeline, not MGET: in a Redis Cluster the two keys
            # live in different slots, and MGET across slots is refused.
            assert client is not None
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.get(key)
            return [int(v or 0) for v in pipe.execute()]

        def here() -> list[int]:
            return [self._local.get(key) for key in keys]

        values = here() if client is None else self.health.call(in_redis, here)
        return values[0], values[1] if len(values) > 1 else 0

    def _incr(self, keys: list[str]) -> list[int]:
        window = int(self.policy.failure_window)
        client = self.client

        def in_redis() -> list[int]:
            assert client is not None
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.incr(key)
                pipe.expire(key, window, nx=True)
            results = pipe.execute()
            return [int(results[i * 2]) for i in range(len(keys))]

        def here() -> list[int]:
            return [self._local.incr(key, self.policy.failure_window) for key in keys]

        return here() if client is None else self.health.call(in_redis, here)


_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"""


@dataclass
class Lease:
    """Slots one session holds; give it back with :meth:`LeaseLimiter.release`."""

    session: str
    keys: list[str] = field(default_factory=list)
    shared: bool = False
    """The slots were taken in Redis (or may have been): giving them back
    takes a round trip. Slots counted here while Redis was down never do."""


# Made for every login: a slotted record, not a frozen one (which sets each
# field through object.__setattr__). Not changed after it is made.
@dataclass(slots=True)
class Slot:
    """One limited scope a session needs a slot in."""

    scope: str
    """``tenant``, ``user`` or ``address``: for metrics and the reply."""
    name: str
    limit: int


class LeaseLimiter:
    """Concurrent sessions per scope, shared by replicas through Redis leases."""

    def __init__(
        self,
        client: redis.Redis | None,
        prefix: str,
        lease_ttl: float = 60.0,
        clock: Clock = time.time,
        *,
        health: RedisHealth | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.health = health or RedisHealth("redis")
        """Shared with the directory and the failure budgets (the app's)."""
        self._clock = clock
        self._held: dict[str, set[str]] = {}
        self._local: dict[str, set[str]] = {}
        self._acquire = client.register_script(_ACQUIRE) if client is not None else None

    def key(self, slot: Slot) -> str:
        name = _digest(slot.name) if slot.scope == "user" else slot.name
        return f"{self.prefix}:lease:{slot.scope}:{name}"

    def acquire(self, session: str, slots: Iterable[Slot]) -> tuple[Lease | None, Slot | None]:
        """Take a slot in every scope, or none: returns the lease or the full slot."""
        slots = list(slots)
        keys = [self.key(slot) for slot in slots]
        taken_each, shared = self._take(keys, session, slots)
        lease = Lease(session, shared=shared)
        full: Slot | None = None
        for key, slot, taken in zip(keys, slots, taken_each, strict=True):
            if taken:
                lease.keys.append(key)
            elif full is None:
                full = slot
        if full is not None:
            self.release(lease)
            return None, full
        return lease, None

    def claim(self, session: str, slots: Iterable[Slot]) -> Lease:
        """Every slot :meth:`acquire` may have taken for ``session``, to give
        back when the acquire was cut short (its greenlet ended while Redis
        had the request, which Redis may still carry out)."""
        keys = [self.key(slot) for slot in slots]
        return Lease(session, keys, shared=self.client is not None)

    def release(self, lease: Lease) -> None:
        """Give the slots back (in Redis, one round trip for all of them), once:
        the lease is empty afterwards, so a second release does nothing.

        While Redis is down only this process's book-keeping is cleared; the
        Redis members, no longer renewed, expire within ``lease_ttl``.
        """
        keys, lease.keys = lease.keys, []
        for key in keys:
            for table in (self._held, self._local):
                holders = table.get(key)
                if holders is not None:
                    holders.discard(lease.session)
                    if not holders:
                        del table[key]
        client = self.client
        if client is None or not keys or not lease.shared:
            return

        def in_redis() -> None:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.zrem(key, lease.session)
            pipe.execute()

        self.health.call(in_redis, lambda: None)

    def renew(self) -> None:
        """Push every held lease's expiry forward; call every ``lease_ttl / 3``.

        Only leases taken in Redis are held here: those counted in memory
        while Redis was down are never written to it.
        """
        client = self.client
        if client is None or not self._held:
            return
        expiry = self._clock() + self.lease_ttl

        def in_redis() -> None:
            pipe = client.pipeline(transaction=False)
            for key, sessions in self._held.items():
                for session in sessions:
                    pipe.zadd(key, {session: expiry}, xx=True)
                pipe.pexpire(key, int(self.lease_ttl * 1000))
            pipe.execute()

        self.health.call(in_redis, lambda: None)

    def _take(self, keys: list[str], session: str, slots: list[Slot]) -> tuple[list[bool], bool]:
        """A slot in each scope: in Redis all in one round trip, else in this
        process's memory (Redis down, or none configured). The flag says
        whether the slots may be in Redis: also after a request that timed
        out, which a Redis that was only slow may still carry out."""
        taken = None
        asked = False
        if self.client is not None:

            def in_redis() -> list[bool]:
                nonlocal asked
                asked = True
                return self._take_in_redis(keys, session, slots)

            taken = self.health.call(in_redis, lambda: None)
        if taken is None:
            pairs = zip(keys, slots, strict=True)
            return [self._take_here(key, session, slot.limit) for key, slot in pairs], asked
        for key, got in zip(keys, taken, strict=True):
            if got:
                self._held.setdefault(key, set()).add(session)
        return taken, True

    def _take_in_redis(self, keys: list[str], session: str, slots: list[Slot]) -> list[bool]:
        """One EVALSHA per scope, all in one pipeline.

        Not redis-py's pipelined ``Script``, which asks ``SCRIPT EXISTS`` in a
        round trip of its own every time: the script is loaded again only
        when Redis says it does not know it (after a restart or a flush). A
        Redis Cluster's pipelines refuse scripts: there, one call per scope.
        """
        assert self.client is not None and self._acquire is not None
        now = self._clock()
        ttl_ms = int(self.lease_ttl * 1000)
        calls = [
            (key, [now, now + self.lease_ttl, slot.limit, session, ttl_ms])
            for key, slot in zip(keys, slots, strict=True)
        ]
        if isinstance(self.client, RedisCluster):
            return [bool(self._acquire(keys=[key], args=args)) for key, args in calls]
        return self._pipelined(calls)

    def _pipelined(self, calls: list[tuple[str, list]]) -> list[bool]:
        try:
            return self._evalsha_all(calls)
        except redis.exceptions.NoScriptError:
            assert self.client is not None
            self.client.script_load(_ACQUIRE)
            return self._evalsha_all(calls)

    def _evalsha_all(self, calls: list[tuple[str, list]]) -> list[bool]:
        assert self.client is not None and self._acquire is not None
        pipe = self.client.pipeline(transaction=False)
        for key, args in calls:
            pipe.evalsha(self._acquire.sha, 1, key, *args)
        return [bool(result) for result in pipe.execute()]

    def _take_here(self, key: str, session: str, limit: int) -> bool:
        holders = self._local.setdefault(key, set())
        if len(holders) >= limit:
            return False
        holders.add(session)
        return True
