"""Login delays an operator (or the download budget) sets for a user or a tenant.

``pop3proxy user delay alice@acme.example --for 10m`` makes alice's new
logins wait at the proxy, on every replica, while her mailbox moves: a
client that waits a few seconds longer for ``+OK`` retries nothing and asks
its user nothing. A delay is kept in one Redis hash, ``<prefix>:delays``:
field ``user:<canonical user>`` or ``tenant:<tenant name>``, value JSON
``{"until": <epoch seconds>, "mode": "wait"|"refuse", "reason": "<text>"}``.

:class:`Delays` is one process's copy of that hash, read in a greenlet of
its own every :data:`REFRESH` seconds (like the backend states of
:mod:`pop3proxy.backends`), so a login only ever reads memory. Entries
whose ``until`` has passed are ignored by readers and removed by the next
writer (:func:`set_delay`, :func:`lift_delay`): nobody has to run a cleanup.

What a login does with a delay (:meth:`Delays.hold`): ``wait`` holds the
login until the delay ends and then lets it proceed, as long as that fits
in what the login may still wait; a longer one, and every ``refuse`` delay,
is answered ``-ERR [LOGIN-DELAY]`` at once (RFC 2449: "try later", which
makes a client wait instead of asking for a new password).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent

from pop3proxy import metrics
from pop3proxy.config import TimeoutsConfig
from pop3proxy.redisconn import BackgroundReader, RedisHealth, as_text

log = logging.getLogger("pop3proxy.delays")

USER, TENANT = "user", "tenant"
SCOPES = (USER, TENANT)
WAIT, REFUSE = "wait", "refuse"
MODES = (WAIT, REFUSE)
"""``wait``: logins wait for the end (when they can) and proceed; ``refuse``:
logins get ``[LOGIN-DELAY]`` at once until the end."""

REFRESH = 1.0
"""Seconds between two reads of the hash by each replica."""
PROPAGATION_SECONDS = 2 * REFRESH
"""The longest a replica takes to follow a change: a refresh period, plus the
read itself (bounded by the Redis timeout, well under a second)."""
RECHECK = 0.25
"""While a login waits, how often it looks again (memory only): a delay
lifted or shortened lets it through this soon after the replica learns it."""
MAX_REASON = 200
"""Characters of a reason kept: it goes into every replica's log line."""


def longest_wait(timeouts: TimeoutsConfig) -> float:
    """The longest a login waits for a delay: ``timeouts.auth`` (the session
    ends after it) less ``timeouts.backend_connect``, kept for the backend
    login that follows the wait. The login counts its own time so far too."""
    return timeouts.auth - timeouts.backend_connect


@dataclass(frozen=True, slots=True)
class Delay:
    """One delay in force: who (``scope`` and ``key``), until when, and how."""

    scope: str
    key: str
    until: float
    """Seconds since the epoch (every replica's clock: NTP keeps them together)."""
    mode: str
    reason: str = ""

    def remaining(self, now: float) -> float:
        return max(self.until - now, 0.0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "key": self.key,
            "until": self.until,
            "mode": self.mode,
            "reason": self.reason,
        }


def delays_key(prefix: str) -> str:
    return f"{prefix}:delays"


def field_name(scope: str, key: str) -> str:
    """The hash field of a delay: ``user:alice@acme.example``, ``tenant:acme.example``."""
    return f"{scope}:{key}"


def parse_entry(field: str | bytes, raw: str | bytes) -> Delay | None:
    """One hash entry, or ``None`` when it is not a delay ``set_delay`` wrote."""
    name = as_text(field)
    scope, _, key = name.partition(":")
    try:
        value = json.loads(raw)
        until, mode, reason = float(value["until"]), value["mode"], str(value.get("reason", ""))
    except (ValueError, TypeError, KeyError):
        return None
    if scope not in SCOPES or not key or mode not in MODES:
        return None
    return Delay(scope, key, until, mode, reason)


def read_delays(client: Any, prefix: str, now: float | None = None) -> dict[str, Delay]:
    """The delays in force at ``now`` (default: the time), by hash field.
    Raises what Redis raises: an empty answer must mean no delays."""
    now = time.time() if now is None else now
    delays = {}
    for field, raw in client.hgetall(delays_key(prefix)).items():
        delay = parse_entry(field, raw)
        if delay is not None and delay.until > now:
            delays[field_name(delay.scope, delay.key)] = delay
    return delays


def _ended_fields(client: Any, prefix: str, now: float) -> list[str]:
    """Fields of delays that have ended (or that are not delays at all)."""
    ended = []
    for field, raw in client.hgetall(delays_key(prefix)).items():
        delay = parse_entry(field, raw)
        if delay is None or delay.until <= now:
            ended.append(as_text(field))
    return ended


def set_delay(
    client: Any, prefix: str, scope: str, key: str, until: float, mode: str, reason: str = ""
) -> Delay:
    """Store a delay for every replica (replacing one of the same scope and
    key), and remove the entries that have ended. Raises what Redis raises."""
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {', '.join(SCOPES)}, got {scope!r}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
    delay = Delay(scope, key, float(until), mode, reason[:MAX_REASON])
    value = json.dumps({"until": delay.until, "mode": mode, "reason": delay.reason})
    ended = _ended_fields(client, prefix, time.time())
    pipe = client.pipeline(transaction=False)
    if ended:
        pipe.hdel(delays_key(prefix), *ended)
    pipe.hset(delays_key(prefix), field_name(scope, key), value)
    pipe.execute()
    return delay


def lift_delay(client: Any, prefix: str, scope: str, key: str) -> Delay | None:
    """Remove the delay of ``scope`` and ``key`` (and the entries that have
    ended); the delay that was in force, or ``None``. Raises what Redis raises."""
    field = field_name(scope, key)
    now = time.time()
    before = read_delays(client, prefix, now).get(field)
    ended = _ended_fields(client, prefix, now)
    client.hdel(delays_key(prefix), field, *[name for name in ended if name != field])
    return before


@dataclass(slots=True)
class Held:
    """What a delay did to one login: the seconds it waited, and the delay
    that refuses it (``None``: the login proceeds)."""

    waited: float
    refused: Delay | None


class Delays(BackgroundReader):
    """This process's copy of the delays, refreshed from Redis in the background.

    Without Redis (a tenants file) there are no delays. When Redis cannot be
    reached the delays last read stay in force until they end.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        health: RedisHealth | None = None,
        refresh: float = REFRESH,
        log_user: Callable[[str], str | None] = lambda user: user,
    ) -> None:
        """``log_user``: how a user appears in the logs (``logging.user``)."""
        super().__init__(client, prefix, health, refresh)
        self.log_user = log_user
        self.delays: dict[str, Delay] = {}

    def update(self) -> None:
        """Read the hash once, and log and count what changed."""
        fresh = self.health.call(lambda: read_delays(self.client, self.prefix), lambda: None)
        if fresh is None:
            return
        old, self.delays = self.delays, fresh
        now = time.time()
        for field, delay in fresh.items():
            if old.get(field) != delay:
                self._changed("set", delay)
        for field, delay in old.items():
            if field not in fresh and delay.until > now:
                self._changed("lifted", delay)

    def _changed(self, change: str, delay: Delay) -> None:
        key = self.log_user(delay.key) if delay.scope == USER else delay.key
        log.info(
            f"login delay {change}",
            extra={
                "scope": delay.scope,
                delay.scope: key,
                "until": round(delay.until, 3),
                "mode": delay.mode,
                "reason": delay.reason or None,
            },
        )
        metrics.add(metrics.DELAY_CHANGES, delay.scope, change)

    def current(
        self, tenant: str | None, user: str | None, now: float | None = None
    ) -> Delay | None:
        """The delay a login of ``user`` of ``tenant`` meets now, or ``None``.

        A user's and its tenant's delay can both be in force: a ``refuse``
        one wins (the login is refused whatever the other says), else the
        one that ends last.
        """
        if not self.delays:  # most logins, most of the time
            return None
        now = time.time() if now is None else now
        found = [
            delay
            for delay in (
                self.delays.get(field_name(USER, user)) if user else None,
                self.delays.get(field_name(TENANT, tenant)) if tenant else None,
            )
            if delay is not None and delay.until > now
        ]
        if not found:
            return None
        refusing = [delay for delay in found if delay.mode == REFUSE]
        return max(refusing or found, key=lambda delay: delay.until)

    def hold(self, tenant: str | None, user: str | None, allowance: float) -> Held | None:
        """Hold a login while a delay applies; ``None`` when none does (no wait).

        A ``wait`` delay that ends within ``allowance`` seconds is waited out
        (looking again every :data:`RECHECK` seconds, so a lift or a shorter
        delay lets the login go sooner); anything else refuses the login, at
        once rather than after a wait that could not be long enough.
        """
        delay = self.current(tenant, user)
        if delay is None:
            return None
        started = time.monotonic()
        while delay is not None:
            left = allowance - (time.monotonic() - started)
            remaining = delay.remaining(time.time())
            if delay.mode == REFUSE or remaining > left:
                return Held(time.monotonic() - started, delay)
            gevent.sleep(min(remaining, RECHECK))
            delay = self.current(tenant, user)
        return Held(time.monotonic() - started, None)
