"""A TTL + LRU cache with negative entries, stale fallback and single-flight.

Pure: no I/O, an injectable clock. It only uses ``threading`` primitives,
which gevent's monkey-patching turns into cooperative ones, so a thousand
greenlets asking for one cold key cause one load, and the rest wait for it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

V = TypeVar("V")


class Source:
    """Where a value came from, for metrics."""

    CACHE = "cache"
    LOAD = "load"
    STALE = "stale"


@dataclass
class _Entry(Generic[V]):
    value: V | None
    fresh_until: float
    stale_until: float


class _Flight(Generic[V]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: V | None = None
        self.source = Source.LOAD
        self.error: BaseException | None = None
        self.generation = 0
        """The cache's generation when the load began: an invalidation during
        the load means the loaded value may predate the change, so it is
        returned to the waiters but not stored."""
        self.abandoned = False
        """The leader was interrupted (gevent.Timeout, GreenletExit): no outcome."""


class TTLCache(Generic[V]):
    """Values expire after ``ttl`` (``negative_ttl`` for ``None``, "not found").

    An expired positive entry is kept ``stale_ttl`` longer and served when the
    loader fails, so a Redis outage does not stop logins for known tenants.
    """

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        negative_ttl: float,
        stale_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        stale_negative: bool = False,
    ) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.stale_ttl = stale_ttl
        self.stale_negative = stale_negative
        """Serve a remembered "not found" stale too (user records: no record
        is an answer worth keeping through an outage)."""
        self._generation = 0
        self._clock = clock
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()
        self._flights: dict[str, _Flight[V]] = {}
        self._lock = threading.Lock()
        self.loads = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_load(self, key: str, loader: Callable[[], V | None]) -> tuple[V | None, str]:
        """Return ``(value, source)``; ``value`` is ``None`` for "not found".

        Raises what the loader raised when there is no stale value to serve.
        """
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and self._clock() < entry.fresh_until:
                    self._entries.move_to_end(key)
                    return entry.value, Source.CACHE
                flight = self._flights.get(key)
                leader = flight is None
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    flight.generation = self._generation
            if leader:
                self._load(key, loader, flight)
            else:
                flight.done.wait()
            if flight.abandoned:
                continue  # the leader was interrupted; try again, maybe as leader
            if flight.error is not None:
                raise flight.error
            return flight.value, flight.source

    def _load(self, key: str, loader: Callable[[], V | None], flight: _Flight[V]) -> None:
        try:
            self.loads += 1
            flight.value = loader()
            self._store(key, flight.value, flight.generation)
        except Exception as error:
            stale = self._stale(key)
            if stale is None:
                flight.error = error
            else:
                flight.value, flight.source = stale.value, Source.STALE
        except BaseException:
            flight.abandoned = True
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _stale(self, key: str) -> _Entry[V] | None:
        entry = self._entries.get(key)
        if entry is None or self._clock() >= entry.stale_until:
            return None
        if entry.value is None and not self.stale_negative:
            return None
        return entry

    def put(self, key: str, value: V | None) -> None:
        self._store(key, value, None)

    def _store(self, key: str, value: V | None, generation: int | None) -> None:
        now = self._clock()
        ttl = self.ttl if value is not None else self.negative_ttl
        stale = self.stale_ttl if value is not None or self.stale_negative else 0.0
        with self._lock:
            if generation is not None and generation != self._generation:
                return  # invalidated while loading: the value may be older than the change
            self._entries[key] = _Entry(value, now + ttl, now + ttl + stale)
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def invalidate(self, key: str) -> None:
        """Forget ``key`` (fresh and stale): the record changed or is gone."""
        with self._lock:
            self._generation += 1
            self._entries.pop(key, None)

    def expire_all(self) -> None:
        """Make every entry due for a reload, but keep it as a stale fallback.

        For a subscriber that lost its channel: it may have missed changes,
        so nothing is fresh any more, yet if the store is still down the
        last known records are better than nothing.
        """
        now = self._clock()
        with self._lock:
            self._generation += 1
            for entry in self._entries.values():
                entry.fresh_until = min(entry.fresh_until, now)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def servable(self) -> int:
        """Records (not "not found" entries) that can still answer a lookup,
        fresh or stale: what readiness during an outage rests on."""
        now = self._clock()
        with self._lock:
            return sum(
                1
                for entry in self._entries.values()
                if entry.value is not None and now < entry.stale_until
            )

    def peek(self, key: str) -> V | None:
        """The cached value, fresh or stale, without loading: for tests and admin."""
        entry = self._entries.get(key)
        return None if entry is None else entry.value
