"""Abuse control shared by every replica: failed-login budgets and session leases.

Both live in Redis so that five replicas give an attacker one budget, not
five. Both fall back to this process's own memory while Redis is down: the
proxy keeps protecting the backends, per process, instead of failing open
or refusing everyone. Every round trip goes through the directory's
:class:`~pop3proxy.redisconn.RedisHealth`: once Redis is known to be down
(refusing, or hung), the fallback is taken at once, without waiting for a
timeout, until a probe finds Redis back.

Failed logins are counted in fixed windows (a key with a TTL) per user
(the folded ``local@tenant``, one budget whatever the spelling), per client
and per wider IPv6 network. A client is one IPv4 address, or one IPv6 /64:
a host or household holds a whole /64, so counting its addresses one by one
would give it 2**64 budgets; /56 and /48 budgets catch a guesser rotating
through the /64s of its allocation. Past ``delay_after`` failures each
refusal waits longer before it is sent; from ``block_after`` on, logins are
refused without asking the backend until the window ends. A client that
fails for many distinct names (a password spray: a few guesses at each of
many users) is blocked from ``block_after_names_per_address`` names on.

A budget per user lets anyone lock its owner out by guessing. So a client
the owner logged in from recently (a per-user sorted set of client digests,
scored by time, kept for ``known_address_ttl`` and trimmed to the newest
``known_addresses_per_user``) is held back only by its own budgets, never by
the user's: the owner's phone keeps polling while a botnet exhausts the
user's budget from elsewhere.

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

from pop3proxy.config import AuthConfig, IPv6Budget, Network
from pop3proxy.redisconn import RedisHealth

log = logging.getLogger("pop3proxy.limits")

Clock = Callable[[], float]


# Cached: a login asks for up to three digests; hashing them again costs
# 13 k instructions per login, 2.6 % of a plaintext login session.
@functools.lru_cache(maxsize=4096)
def _digest(value: str) -> str:
    """Keys hold a digest of the user name, not the name: Redis is not a log.
    The name is already canonical (:class:`pop3proxy.tenants.Identity`, or a budget's folded
    name): case is not folded again here, so ``Bob`` and ``bob`` of a tenant
    with case-sensitive users hold slots of their own."""
    return hashlib.sha256(value.encode()).hexdigest()[:24]


@dataclass(frozen=True, slots=True)
class ClientNetworks:
    """Where a client address is counted (see the module docstring)."""

    client: str
    """One IPv4 address, or the IPv6 network of ``ipv6_prefix`` bits, as text."""
    wider: tuple[tuple[str, int], ...] = ()
    """IPv6 only: each wider network and its ``block_after``."""


# Cached: a login asks twice (the check, then the failure or the success),
# and for an IPv6 client each answer takes about 65 us (ipaddress builds a
# network per budget): 130 us, some 15 % of a session's CPU (0.87 ms).
@functools.lru_cache(maxsize=4096)
def client_networks(
    address: str, ipv6_prefix: int = 64, wider: tuple[IPv6Budget, ...] = ()
) -> ClientNetworks:
    """``2001:db8:1:2::9`` -> client ``2001:db8:1:2::/64``, wider ``2001:db8:1::/56``...

    An IPv4-mapped IPv6 address (a dual-stack listener) counts as its IPv4
    address, a zone id is dropped; what is not an IP address at all (a
    Unix socket's peer) counts as itself.
    """
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return ClientNetworks(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        return ClientNetworks(str(ip))
    client = ipaddress.IPv6Network((ip, ipv6_prefix), strict=False)
    networks = tuple(
        (str(ipaddress.IPv6Network((ip, budget.prefix), strict=False)), budget.block_after)
        for budget in wider
        if budget.prefix < ipv6_prefix
    )
    return ClientNetworks(str(client), networks)


class AllowList:
    """Client networks exempt from the failure budgets (monitoring, webmail)."""

    REMEMBERED = 4096
    """Verdicts kept. Parsing the address again at each check costs 22 k
    instructions per login, 4.5 % of a plaintext login session."""

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


# Made for every login, so slotted and not frozen: a frozen dataclass sets
# each field through object.__setattr__, which for this, Slot and UserName
# costs 18 k instructions per login, 3.7 % of a plaintext login session.
@dataclass(slots=True)
class Verdict:
    blocked: bool
    scope: str | None = None
    """When blocked, the budget that is spent, for metrics (never the value):
    ``user``, ``address`` (the client), ``network`` (a wider IPv6 network)
    or ``names`` (too many names failing from the client)."""
    user_failures: int | None = 0
    """The name's failures so far (``None``: not looked up, from an allowed
    network): a good login has something to clear only when it is not 0."""
    known: bool = False
    """The client logged in as this user within ``known_address_ttl``: the
    user's budget does not hold it back. Its good login leaves that budget
    as it is: clearing it would hand a guesser elsewhere a fresh one."""
    remember: bool = False
    """A good login should record the client as known: it is not yet, or
    was last recorded long enough ago that the record's TTL needs pushing."""


KNOWN_REFRESH = 86400.0
"""A known client is recorded again on a good login at most this often (or
every quarter of ``known_address_ttl``, if shorter): a client polling every
minute costs no Redis write per login."""


class _LocalWindows:
    """Fixed-window counters in memory, the fallback while Redis is down.

    Besides counters: the distinct names failing from a client (a set per
    client, capped at the threshold) and the clients each user logged in from.
    """

    MAX_KEYS = 100_000

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._counts: dict[str, tuple[int, float]] = {}
        self._names: dict[str, tuple[set[str], float]] = {}
        self._known: dict[str, dict[str, float]] = {}
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
            if len(self._counts) > self.MAX_KEYS:
                self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            return count + 1

    def delete(self, key: str) -> None:
        self._counts.pop(key, None)

    def names(self, key: str) -> int:
        entry = self._names.get(key)
        if entry is None:
            return 0
        names, expires = entry
        return len(names) if self._clock() < expires else 0

    def add_name(self, key: str, name: str, window: float, cap: int) -> None:
        """Like PFADD: ``name`` joins the set; no more than ``cap`` are kept
        (past the threshold, how far past does not matter)."""
        with self._lock:
            now = self._clock()
            names, expires = self._names.get(key, (set(), 0.0))
            if now >= expires:
                names, expires = set(), now + window
            if len(names) < cap:
                names.add(name)
            self._names[key] = (names, expires)
            if len(self._names) > self.MAX_KEYS:
                self._names = {k: v for k, v in self._names.items() if v[1] > now}

    def known_at(self, key: str, client: str) -> float | None:
        return self._known.get(key, {}).get(client)

    def remember(self, key: str, client: str, keep: int) -> None:
        with self._lock:
            if len(self._known) > self.MAX_KEYS:
                self._known.clear()
            clients = self._known.setdefault(key, {})
            clients[client] = self._clock()
            if len(clients) > keep:
                newest = sorted(clients.items(), key=lambda item: item[1])[-keep:]
                self._known[key] = dict(newest)


@dataclass(slots=True)
class _Keys:
    """The Redis keys one login's budgets live under."""

    user: str
    known: str
    client: str | None = None
    names: str | None = None
    """The client's distinct failing names (a HyperLogLog); ``None``: off."""
    member: str = ""
    """The client's digest: a member of ``known``, never the address itself."""
    networks: list[tuple[str, int]] = field(default_factory=list)
    """Wider IPv6 networks: key and ``block_after``."""


@dataclass(slots=True)
class _Counts:
    user: int = 0
    client: int = 0
    networks: list[int] = field(default_factory=list)
    names: int = 0
    known_at: float | None = None


class FailureLimiter:
    """Counts failed logins per user, per client and per wider IPv6 network,
    and the distinct names failing from each client; remembers the clients
    each user logged in from (see the module docstring).

    ``user`` is always the folded name (:attr:`pop3proxy.tenants.UserName.folded`).
    """

    def __init__(
        self,
        redis_client: redis.Redis | None,
        prefix: str,
        policy: AuthConfig,
        allow: AllowList | None = None,
        clock: Clock = time.time,
        *,
        health: RedisHealth | None = None,
    ) -> None:
        self.redis_client = redis_client
        self.prefix = prefix
        self.policy = policy
        self.allow = allow or AllowList()
        self.health = health or RedisHealth("redis")
        """Shared with the directory and the leases (the app's)."""
        self._clock = clock
        self._local = _LocalWindows(clock)

    def _keys(self, user: str, address: str | None) -> _Keys:
        user_digest = _digest(user)
        keys = _Keys(f"{self.prefix}:fail:user:{user_digest}", f"{self.prefix}:known:{user_digest}")
        if not address:
            return keys
        policy = self.policy
        networks = client_networks(address, policy.ipv6_prefix, policy.ipv6_networks)
        keys.client = f"{self.prefix}:fail:addr:{networks.client}"
        if policy.block_after_names_per_address:
            keys.names = f"{self.prefix}:fail:names:{networks.client}"
        keys.member = _digest(networks.client)
        keys.networks = [
            (f"{self.prefix}:fail:net:{network}", limit) for network, limit in networks.wider
        ]
        return keys

    def check(self, user: str, address: str | None) -> Verdict:
        """Before asking the backend: is this login refused outright?"""
        if address in self.allow:
            return Verdict(blocked=False, user_failures=None)
        keys = self._keys(user, address)
        counts = self._counts(keys)
        policy = self.policy
        age = None if counts.known_at is None else self._clock() - counts.known_at
        known = age is not None and age < policy.known_address_ttl
        if counts.user >= policy.block_after and not known:
            return Verdict(blocked=True, scope="user")
        if counts.client >= policy.block_after_per_address:
            return Verdict(blocked=True, scope="address")
        for (_, limit), count in zip(keys.networks, counts.networks, strict=True):
            if count >= limit:
                return Verdict(blocked=True, scope="network")
        spray = policy.block_after_names_per_address
        if spray and counts.names >= spray:
            return Verdict(blocked=True, scope="names")
        refresh = min(KNOWN_REFRESH, policy.known_address_ttl / 4)
        remember = bool(keys.client and policy.known_address_ttl) and (
            age is None or age >= refresh
        )
        return Verdict(False, user_failures=counts.user, known=known, remember=remember)

    def counts(self, user: str, address: str | None) -> dict[str, int]:
        """The current failure counts for ``user`` and ``address``, by scope,
        read the way :meth:`check` reads them (``pop3proxy route`` shows them)."""
        keys = self._keys(user, address)
        counts = self._counts(keys)
        shown = {"user": counts.user}
        if keys.client:
            shown["address"] = counts.client
        for (key, _), count in zip(keys.networks, counts.networks, strict=True):
            shown[key.removeprefix(f"{self.prefix}:fail:")] = count
        if keys.names:
            shown["names_from_address"] = counts.names
        return shown

    def failed(self, user: str, address: str | None, known: bool = False) -> float:
        """Count a failure; returns the delay to wait before refusing: it grows
        with the user's failures, or for a ``known`` client with its own."""
        if address in self.allow:
            return 0.0
        keys = self._keys(user, address)
        counted = [keys.user] + ([keys.client] if keys.client else [])
        counted += [key for key, _ in keys.networks]
        counts = self._incr(counted, (keys.names, _digest(user)) if keys.names else None)
        return backoff(self.policy, counts[1] if known and keys.client else counts[0])

    def succeeded(self, user: str, address: str | None, verdict: Verdict) -> None:
        """After a good login: clear the user's failures (unless the client is
        known, see :attr:`Verdict.known`) and remember the client for the
        user; one round trip, none when there is nothing to do."""
        clear = verdict.user_failures != 0 and not verdict.known
        if not clear and not verdict.remember:
            return
        keys = self._keys(user, address)
        policy = self.policy
        if clear:
            self._local.delete(keys.user)
        if verdict.remember:
            self._local.remember(keys.known, keys.member, policy.known_addresses_per_user)
        redis_client = self.redis_client
        if redis_client is None:
            return

        def in_redis() -> None:
            pipe = redis_client.pipeline(transaction=False)
            if clear:
                pipe.delete(keys.user)
            if verdict.remember:
                pipe.zadd(keys.known, {keys.member: self._clock()})
                pipe.zremrangebyrank(keys.known, 0, -policy.known_addresses_per_user - 1)
                pipe.expire(keys.known, max(int(policy.known_address_ttl), 1))
            pipe.execute()

        self.health.call(in_redis, lambda: None)

    def _counts(self, keys: _Keys) -> _Counts:
        counters = [keys.user] + ([keys.client] if keys.client else [])
        counters += [key for key, _ in keys.networks]
        known = bool(keys.client and self.policy.known_address_ttl)
        redis_client = self.redis_client

        def in_redis() -> _Counts:
            # GETs in a pipeline, not MGET: in a Redis Cluster the keys live
            # in different slots, and MGET across slots is refused.
            assert redis_client is not None
            pipe = redis_client.pipeline(transaction=False)
            for key in counters:
                pipe.get(key)
            if keys.names:
                pipe.pfcount(keys.names)
            if known:
                pipe.zscore(keys.known, keys.member)
            values = pipe.execute()
            known_at = values.pop() if known else None
            names = values.pop() if keys.names else 0
            counts = [int(v or 0) for v in values]
            return self._counted(counts, int(names), known_at, bool(keys.client))

        def here() -> _Counts:
            return self._local_counts(keys, counters, known)

        return here() if redis_client is None else self.health.call(in_redis, here)

    def _local_counts(self, keys: _Keys, counters: list[str], known: bool) -> _Counts:
        values = [self._local.get(key) for key in counters]
        names = self._local.names(keys.names) if keys.names else 0
        known_at = self._local.known_at(keys.known, keys.member) if known else None
        return self._counted(values, names, known_at, bool(keys.client))

    @staticmethod
    def _counted(
        values: list[int], names: int, known_at: float | None, has_client: bool
    ) -> _Counts:
        if not has_client:
            return _Counts(user=values[0])
        at = None if known_at is None else float(known_at)
        return _Counts(values[0], values[1], values[2:], names, at)

    def _incr(self, keys: list[str], name: tuple[str, str] | None = None) -> list[int]:
        """Count one failure under each key; ``name``: (key, name digest) to add
        to a client's distinct failing names. One round trip."""
        window = int(self.policy.failure_window)
        redis_client = self.redis_client

        def in_redis() -> list[int]:
            assert redis_client is not None
            pipe = redis_client.pipeline(transaction=False)
            for key in keys:
                pipe.incr(key)
                pipe.expire(key, window, nx=True)
            if name is not None:
                pipe.pfadd(name[0], name[1])
                pipe.expire(name[0], window, nx=True)
            results = pipe.execute()
            return [int(results[i * 2]) for i in range(len(keys))]

        def here() -> list[int]:
            return self._incr_here(keys, name)

        return here() if redis_client is None else self.health.call(in_redis, here)

    def _incr_here(self, keys: list[str], name: tuple[str, str] | None) -> list[int]:
        window = self.policy.failure_window
        if name is not None:
            cap = self.policy.block_after_names_per_address
            self._local.add_name(name[0], name[1], window, cap)
        return [self._local.incr(key, window) for key in keys]


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

    holder: str
    """The session's id: the member of each slot's sorted set."""
    keys: list[str] = field(default_factory=list)
    shared: bool = False
    """The slots were taken in Redis (or may have been): giving them back
    takes a round trip. Slots counted here while Redis was down never do."""


# Slotted, not frozen: see Verdict.
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
        redis_client: redis.Redis | None,
        prefix: str,
        lease_ttl: float = 60.0,
        clock: Clock = time.time,
        *,
        health: RedisHealth | None = None,
    ) -> None:
        self.redis_client = redis_client
        self.prefix = prefix
        self.lease_ttl = lease_ttl
        self.health = health or RedisHealth("redis")
        """Shared with the directory and the failure budgets (the app's)."""
        self._clock = clock
        self._held: dict[str, set[str]] = {}
        """Lease key -> holders whose slot is in Redis: renewed every ``lease_ttl / 3``."""
        self._local: dict[str, set[str]] = {}
        """Lease key -> holders counted in this process while Redis was down."""
        self._acquire = redis_client.register_script(_ACQUIRE) if redis_client is not None else None

    def key(self, slot: Slot) -> str:
        name = _digest(slot.name) if slot.scope == "user" else slot.name
        return f"{self.prefix}:lease:{slot.scope}:{name}"

    def in_use(self, slot: Slot) -> int | None:
        """How many live sessions hold a slot in ``slot``'s scope on every
        replica; ``None`` without Redis (then each process counts its own)."""
        if self.redis_client is None:
            return None
        return int(self.redis_client.zcount(self.key(slot), self._clock(), "+inf"))

    def acquire(self, holder: str, slots: Iterable[Slot]) -> tuple[Lease | None, Slot | None]:
        """Take a slot in every scope, or none: returns the lease or the full slot."""
        slots = list(slots)
        keys = [self.key(slot) for slot in slots]
        taken_each, shared = self._take(keys, holder, slots)
        lease = Lease(holder, shared=shared)
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

    def claim(self, holder: str, slots: Iterable[Slot]) -> Lease:
        """Every slot :meth:`acquire` may have taken for ``holder``, to give
        back when the acquire was cut short (its greenlet ended while Redis
        had the request, which Redis may still carry out)."""
        keys = [self.key(slot) for slot in slots]
        return Lease(holder, keys, shared=self.redis_client is not None)

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
                    holders.discard(lease.holder)
                    if not holders:
                        del table[key]
        redis_client = self.redis_client
        if redis_client is None or not keys or not lease.shared:
            return

        def in_redis() -> None:
            pipe = redis_client.pipeline(transaction=False)
            for key in keys:
                pipe.zrem(key, lease.holder)
            pipe.execute()

        self.health.call(in_redis, lambda: None)

    def renew(self) -> None:
        """Push every held lease's expiry forward; call every ``lease_ttl / 3``.

        Only leases taken in Redis are held here: those counted in memory
        while Redis was down are never written to it.
        """
        redis_client = self.redis_client
        if redis_client is None or not self._held:
            return
        expiry = self._clock() + self.lease_ttl

        def in_redis() -> None:
            pipe = redis_client.pipeline(transaction=False)
            for key, holders in self._held.items():
                for holder in holders:
                    pipe.zadd(key, {holder: expiry}, xx=True)
                pipe.pexpire(key, int(self.lease_ttl * 1000))
            pipe.execute()

        self.health.call(in_redis, lambda: None)

    def _take(self, keys: list[str], holder: str, slots: list[Slot]) -> tuple[list[bool], bool]:
        """A slot in each scope: in Redis all in one round trip, else in this
        process's memory (Redis down, or none configured). The flag says
        whether the slots may be in Redis: also after a request that timed
        out, which a Redis that was only slow may still carry out."""
        taken = None
        asked = False
        if self.redis_client is not None:

            def in_redis() -> list[bool]:
                nonlocal asked
                asked = True
                return self._take_in_redis(keys, holder, slots)

            taken = self.health.call(in_redis, lambda: None)
        if taken is None:
            pairs = zip(keys, slots, strict=True)
            return [self._take_here(key, holder, slot.limit) for key, slot in pairs], asked
        for key, got in zip(keys, taken, strict=True):
            if got:
                self._held.setdefault(key, set()).add(holder)
        return taken, True

    def _take_in_redis(self, keys: list[str], holder: str, slots: list[Slot]) -> list[bool]:
        """One EVALSHA per scope, all in one pipeline.

        Not redis-py's pipelined ``Script``, which asks ``SCRIPT EXISTS`` in a
        round trip of its own every time: the script is loaded again only
        when Redis says it does not know it (after a restart or a flush). A
        Redis Cluster's pipelines refuse scripts: there, one call per scope.
        """
        assert self.redis_client is not None and self._acquire is not None
        now = self._clock()
        ttl_ms = int(self.lease_ttl * 1000)
        calls = [
            (key, [now, now + self.lease_ttl, slot.limit, holder, ttl_ms])
            for key, slot in zip(keys, slots, strict=True)
        ]
        if isinstance(self.redis_client, RedisCluster):
            return [bool(self._acquire(keys=[key], args=args)) for key, args in calls]
        return self._pipelined(calls)

    def _pipelined(self, calls: list[tuple[str, list]]) -> list[bool]:
        try:
            return self._evalsha_all(calls)
        except redis.exceptions.NoScriptError:
            assert self.redis_client is not None
            self.redis_client.script_load(_ACQUIRE)
            return self._evalsha_all(calls)

    def _evalsha_all(self, calls: list[tuple[str, list]]) -> list[bool]:
        assert self.redis_client is not None and self._acquire is not None
        pipe = self.redis_client.pipeline(transaction=False)
        for key, args in calls:
            pipe.evalsha(self._acquire.sha, 1, key, *args)
        return [bool(result) for result in pipe.execute()]

    def _take_here(self, key: str, holder: str, limit: int) -> bool:
        holders = self._local.setdefault(key, set())
        if len(holders) >= limit:
            return False
        holders.add(holder)
        return True
