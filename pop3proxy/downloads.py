"""A download budget per user and day, counted across every replica.

``limits.download_per_user_day`` (off by default; Google allows 1250 MB a
day over POP) bounds the bytes one user receives from the backends, all
sessions of all replicas together. The window is the UTC day: it starts at
00:00 UTC for everyone, whatever the user's time zone, so that every
replica agrees on it without asking anyone.

Counting must cost the relay nothing, so it is done in three layers:

* each session's :class:`Meter` (the relay's
  :class:`~pop3proxy.interfaces.DownloadMeter`) adds what it sends to an
  integer of its user's :class:`Account` in this process, nothing more;
* every :data:`FLUSH_INTERVAL` one greenlet per process adds every account's
  new bytes to Redis in ONE pipeline: ``INCRBY`` on
  ``<prefix>:downloads:<YYYYMMDD>:<user>`` (and, the first time in the
  window, ``EXPIREAT`` an hour past its end), and reads the totals back
  from the answers;
* the process whose ``INCRBY`` takes a user's total across the budget writes
  a ``refuse`` login delay (:mod:`pop3proxy.delays`) until the window ends.
  Every replica reads the delays each second anyway: new logins get
  ``[LOGIN-DELAY]`` everywhere, and the user's running sessions on every
  replica learn from it that the budget is used up, with no Redis request
  for a session that downloads nothing.

A user's meters share one account, so they all become :attr:`Meter.exhausted`
at once; the relay then refuses the next RETR or TOP. When Redis cannot be
reached the bytes stay in the accounts (a session never waits) and the
budget is judged on what this process knows, until a later flush adds them
up: a failed flush may count bytes twice, never lose them. Bytes still in
memory at midnight UTC (at most a second's worth) count for the new day.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from typing import Any

import gevent

from pop3proxy import metrics
from pop3proxy.delays import REFUSE, USER, Delays, set_delay
from pop3proxy.redisconn import RedisHealth

log = logging.getLogger("pop3proxy.downloads")

FLUSH_INTERVAL = 1.0
"""Seconds between two flushes: how far past its budget a user can get on
one replica (a second of downloading), and how late the others learn of it."""
KEY_GRACE = 3600
"""A day's counter outlives its day by this long, for flushes that arrive late."""
BUDGET_REASON = "download budget used up"
"""The reason of the delays the budget writes: how they are told from an operator's."""
DAY = 86400


def is_budget_delay(reason: str) -> bool:
    """Whether a delay with this reason is the budget's (a login refused for it
    is counted as ``download_budget``, not ``delayed``)."""
    return reason == BUDGET_REASON


def window(now: float) -> tuple[str, float]:
    """The UTC day ``now`` falls in: its name (``YYYYMMDD``) and its end (Unix time)."""
    day = int(now // DAY)
    return time.strftime("%Y%m%d", time.gmtime(day * DAY)), float((day + 1) * DAY)


def counter_key(prefix: str, day: str, user: str) -> str:
    return f"{prefix}:downloads:{day}:{user}"


class Account:
    """One user's downloads in this process, shared by the user's meters."""

    __slots__ = ("day", "exhausted", "expiring", "known", "meters", "unflushed", "user")

    def __init__(self, user: str, day: str) -> None:
        self.user = user
        self.day = day
        self.unflushed = 0
        """Bytes sent since the last flush that reached Redis."""
        self.known = 0
        """The user's total in Redis (every replica) at the last flush."""
        self.expiring = False
        """The day's counter has its expiry (set once per window)."""
        self.exhausted = False
        self.meters: weakref.WeakSet[Meter] = weakref.WeakSet()


class Meter:
    """One session's share of its user's budget (``DownloadMeter``)."""

    __slots__ = ("__weakref__", "_account")

    def __init__(self, account: Account) -> None:
        self._account = account

    @property
    def exhausted(self) -> bool:
        """Counts the refusals too: the relay asks once for each RETR or TOP
        it is about to forward, and refuses the command on a yes."""
        if self._account.exhausted:
            metrics.add(metrics.DOWNLOAD_BUDGET_REFUSALS)
            return True
        return False

    def add(self, octets: int) -> None:
        self._account.unflushed += octets


class Downloads:
    """This process's accounts and the greenlet that flushes them to Redis."""

    def __init__(
        self,
        client: Any,
        prefix: str,
        health: RedisHealth | None,
        delays: Delays,
        budget: int = 0,
        log_user: Callable[[str], str | None] = lambda user: user,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.health = health or RedisHealth("redis")
        self.delays = delays
        self.budget = budget
        """``limits.download_per_user_day``; 0: off (no meters)."""
        self.log_user = log_user
        self.flush_interval = flush_interval
        self.accounts: dict[str, Account] = {}
        self._unwritten_delays: dict[str, float] = {}
        """Users whose crossing was seen but whose delay Redis did not take: retried."""
        self._flusher: gevent.Greenlet | None = None

    def meter(self, user: str) -> Meter | None:
        """A meter for a new session of ``user``, or ``None`` with the budget off."""
        if not self.budget:
            return None
        account = self.accounts.get(user)
        if account is None:
            account = self.accounts[user] = Account(user, window(time.time())[0])
        meter = Meter(account)
        account.meters.add(meter)
        return meter

    def exhausted(self, user: str) -> bool:
        """Whether this process knows ``user``'s budget is used up (memory only)."""
        account = self.accounts.get(user)
        return bool(self.budget and account is not None and account.exhausted)

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = gevent.spawn(self._flush_forever)

    def stop(self) -> None:
        """Stop flushing, after one last flush of what the sessions counted."""
        if self._flusher is not None:
            self._flusher.kill(block=False)
            self._flusher = None
        self.flush()

    def _flush_forever(self) -> None:
        while True:
            gevent.sleep(self.flush_interval)
            self.flush()

    def flush(self) -> None:
        """Add every account's new bytes to Redis in one pipeline, learn the
        totals, judge the budget, and forget accounts nobody uses."""
        now = time.time()
        day, end = window(now)
        for account in self.accounts.values():
            if account.day != day:  # a new window: the old day's count is history
                account.day, account.known, account.expiring = day, 0, False
        batch = [(account, account.unflushed) for account in self.accounts.values()]
        batch = [(account, amount) for account, amount in batch if amount]
        if batch:
            for account, amount in batch:
                account.unflushed -= amount
            totals = self._add_up(batch, day, end)
            if totals is None:
                for account, amount in batch:
                    account.unflushed += amount  # counted again at the next flush
            else:
                self._learn(batch, totals, end)
        self._write_unwritten_delays(now)
        self._judge(now)
        for user in [user for user, a in self.accounts.items() if not a.meters and not a.unflushed]:
            del self.accounts[user]

    def _add_up(self, batch: list[tuple[Account, int]], day: str, end: float) -> list[int] | None:
        """Each account's new total (every replica's bytes), or ``None`` when
        Redis did not take them. Without Redis (a tenants file) the process
        counts alone."""
        if self.client is None:
            return [account.known + amount for account, amount in batch]
        started = time.perf_counter()
        totals = self.health.call(lambda: self._write(batch, day, end), lambda: None)
        metrics.observe(metrics.DOWNLOAD_BUDGET_FLUSH, value=time.perf_counter() - started)
        return totals

    def _write(self, batch: list[tuple[Account, int]], day: str, end: float) -> list[int]:
        """The one pipeline: INCRBY per user (and its EXPIREAT, once a window)."""
        pipe = self.client.pipeline(transaction=False)
        for account, amount in batch:
            key = counter_key(self.prefix, day, account.user)
            pipe.incrby(key, amount)
            if not account.expiring:
                pipe.expireat(key, int(end) + KEY_GRACE)
        answers = pipe.execute()
        totals, position = [], 0
        for account, _amount in batch:
            totals.append(int(answers[position]))
            position += 1 if account.expiring else 2
        return totals

    def _learn(self, batch: list[tuple[Account, int]], totals: list[int], end: float) -> None:
        for (account, amount), total in zip(batch, totals, strict=True):
            account.known, account.expiring = total, True
            if self.budget and total - amount < self.budget <= total:
                self._crossed(account, total, end)

    def _crossed(self, account: Account, total: int, end: float) -> None:
        """This process's flush took the user across the budget: it tells every
        replica (one writer per crossing: INCRBY answers one flush with it)."""
        account.exhausted = True
        metrics.add(metrics.DOWNLOAD_BUDGET_EXHAUSTED)
        log.warning(
            "download budget used up",
            extra={
                "user": self.log_user(account.user),
                "downloaded": total,
                "budget": self.budget,
                "until": end,
            },
        )
        self._unwritten_delays[account.user] = end

    def _write_unwritten_delays(self, now: float) -> None:
        for user, until in list(self._unwritten_delays.items()):
            if until <= now:
                del self._unwritten_delays[user]
                continue

            def write(user: str = user, until: float = until) -> bool:
                set_delay(self.client, self.prefix, USER, user, until, REFUSE, BUDGET_REASON)
                return True

            if self.client is None or self.health.call(write, lambda: False):
                del self._unwritten_delays[user]

    def _judge(self, now: float) -> None:
        """Every account's ``exhausted``: its total as known here (with what is
        not flushed yet), or a budget delay another replica wrote."""
        budget = self.budget
        delayed = {
            delay.key
            for delay in self.delays.delays.values()
            if delay.scope == USER and is_budget_delay(delay.reason) and delay.until > now
        }
        for account in self.accounts.values():
            account.exhausted = bool(budget) and (
                account.known + account.unflushed >= budget or account.user in delayed
            )
