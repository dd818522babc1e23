"""TTLCache: TTL, LRU, negative entries, stale fallback, single-flight."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from pop3proxy.cache import Source, TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Loader:
    """Counts calls; returns or raises what it is told."""

    def __init__(self, value: object = "v") -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def make(clock: Clock, **kwargs: float) -> TTLCache[object]:
    options = {"maxsize": 10, "ttl": 30.0, "negative_ttl": 5.0, "stale_ttl": 0.0}
    options.update(kwargs)
    return TTLCache(clock=clock, **options)  # type: ignore[arg-type]


def test_value_is_cached_until_ttl_then_reloaded() -> None:
    clock = Clock()
    cache = make(clock)
    loader = Loader("a")
    assert cache.get_or_load("k", loader) == ("a", Source.LOAD)
    clock.now += 29.9
    assert cache.get_or_load("k", loader) == ("a", Source.CACHE)
    assert loader.calls == 1
    clock.now += 0.1  # exactly ttl: expired
    loader.value = "b"
    assert cache.get_or_load("k", loader) == ("b", Source.LOAD)
    assert loader.calls == 2
    assert cache.loads == 2


def test_keys_are_independent() -> None:
    cache = make(Clock())
    assert cache.get_or_load("a", Loader(1))[0] == 1
    assert cache.get_or_load("b", Loader(2))[0] == 2
    assert cache.get_or_load("a", Loader(3)) == (1, Source.CACHE)


def test_negative_entries_use_negative_ttl() -> None:
    clock = Clock()
    cache = make(clock, ttl=30.0, negative_ttl=5.0)
    loader = Loader(None)
    assert cache.get_or_load("ghost", loader) == (None, Source.LOAD)
    clock.now += 4.9
    assert cache.get_or_load("ghost", loader) == (None, Source.CACHE)
    clock.now += 0.1
    loader.value = "now exists"
    assert cache.get_or_load("ghost", loader) == ("now exists", Source.LOAD)
    assert loader.calls == 2


def test_lru_evicts_least_recently_used() -> None:
    cache = make(Clock(), maxsize=3)
    for key in "abc":
        cache.get_or_load(key, Loader(key))
    cache.get_or_load("a", Loader("x"))  # a is now the most recent
    cache.get_or_load("d", Loader("d"))  # evicts b
    assert len(cache) == 3
    assert cache.peek("b") is None
    assert cache.get_or_load("a", Loader("x")) == ("a", Source.CACHE)
    assert cache.get_or_load("c", Loader("x")) == ("c", Source.CACHE)
    cache.put("e", "e")  # evicts d (a and c were touched after it)
    assert cache.peek("d") is None
    assert {cache.peek(k) for k in "ace"} == {"a", "c", "e"}


def test_stale_value_served_when_loader_fails_within_stale_ttl() -> None:
    clock = Clock()
    cache = make(clock, ttl=30.0, stale_ttl=60.0)
    cache.get_or_load("k", Loader("old"))
    clock.now += 30.0 + 59.0
    broken = Loader(ConnectionError("redis down"))
    assert cache.get_or_load("k", broken) == ("old", Source.STALE)
    assert broken.calls == 1
    clock.now += 1.0  # ttl + stale_ttl: too old to serve
    with pytest.raises(ConnectionError, match="redis down"):
        cache.get_or_load("k", broken)


def test_stale_is_never_a_negative_entry() -> None:
    clock = Clock()
    cache = make(clock, stale_ttl=60.0)
    cache.get_or_load("k", Loader(None))
    clock.now += 6.0
    with pytest.raises(ConnectionError):
        cache.get_or_load("k", Loader(ConnectionError()))


def test_loader_error_propagates_when_nothing_stale() -> None:
    cache = make(Clock(), stale_ttl=60.0)
    with pytest.raises(TimeoutError):
        cache.get_or_load("k", Loader(TimeoutError("slow")))
    # The failure is not cached: the next call loads again.
    assert cache.get_or_load("k", Loader("fine")) == ("fine", Source.LOAD)


def test_invalidate_and_clear() -> None:
    cache = make(Clock())
    cache.get_or_load("a", Loader("a"))
    cache.get_or_load("b", Loader("b"))
    cache.invalidate("a")
    assert cache.get_or_load("a", Loader("a2")) == ("a2", Source.LOAD)
    cache.clear()
    assert len(cache) == 0
    assert cache.get_or_load("b", Loader("b2")) == ("b2", Source.LOAD)


def _run_threads(count: int, target: Callable[[], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _wait_for_waiters(cache: TTLCache[object], key: str) -> None:
    """Until the key has a flight in progress (the leader is inside the loader)."""
    for _ in range(1000):
        if key in cache._flights:
            return
        threading.Event().wait(0.005)
    raise AssertionError("no load started")


def test_single_flight_with_real_threads() -> None:
    cache = make(Clock())
    release = threading.Event()
    started = threading.Event()
    calls: list[int] = []
    results: list[tuple[object, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def loader() -> str:
        with lock:
            calls.append(1)
        started.set()
        assert release.wait(10)
        return "tenant"

    def worker() -> None:
        try:
            result = cache.get_or_load("acme", loader)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        else:
            with lock:
                results.append(result)

    threads = _run_threads(50, worker)
    assert started.wait(10)
    threading.Event().wait(0.2)  # let the other 49 reach the wait
    release.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    assert errors == []
    assert len(calls) == 1
    assert cache.loads == 1
    assert len(results) == 50
    assert {value for value, _ in results} == {"tenant"}
    assert {source for _, source in results} <= {Source.LOAD, Source.CACHE}


def test_single_flight_error_reaches_every_waiter_without_more_loads() -> None:
    cache = make(Clock())
    release = threading.Event()
    calls: list[int] = []
    outcomes: list[object] = []

    def loader() -> str:
        calls.append(1)
        assert release.wait(10)
        raise ConnectionError("redis down")

    def worker() -> None:
        try:
            outcomes.append(cache.get_or_load("acme", loader))
        except ConnectionError as error:
            outcomes.append(error)

    threads = _run_threads(20, worker)
    _wait_for_waiters(cache, "acme")
    threading.Event().wait(0.2)
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert len(outcomes) == 20
    assert all(isinstance(o, ConnectionError) for o in outcomes)


class Interrupted(BaseException):
    """Stands in for gevent.Timeout or GreenletExit killing the leader."""


def test_interrupted_leader_does_not_turn_into_not_found_for_waiters() -> None:
    cache = make(Clock())
    release = threading.Event()
    leader_in = threading.Event()
    leader_outcome: list[object] = []
    follower_outcome: list[object] = []

    def interrupted_loader() -> str:
        leader_in.set()
        assert release.wait(10)
        raise Interrupted()

    def leader() -> None:
        try:
            leader_outcome.append(cache.get_or_load("acme", interrupted_loader))
        except Interrupted as error:
            leader_outcome.append(error)

    def follower() -> None:
        follower_outcome.append(cache.get_or_load("acme", lambda: "tenant"))

    lead = threading.Thread(target=leader, daemon=True)
    lead.start()
    assert leader_in.wait(10)
    follow = threading.Thread(target=follower, daemon=True)
    follow.start()
    threading.Event().wait(0.2)
    release.set()
    lead.join(10)
    follow.join(10)
    assert isinstance(leader_outcome[0], Interrupted)
    # Before the fix the follower got (None, "load"): "tenant does not exist".
    assert follower_outcome == [("tenant", Source.LOAD)]
    assert cache._flights == {}


def test_invalidation_during_a_load_does_not_store_the_older_value():
    """A change published while a load is in flight: the loaded value may
    predate it, so it answers that one lookup but is not cached."""
    clock = Clock()
    cache = make(clock)

    def loader() -> object:
        cache.invalidate("k")  # the change arrives while Redis is answering
        return "old"

    assert cache.get_or_load("k", loader) == ("old", Source.LOAD)
    assert cache.peek("k") is None
    assert cache.get_or_load("k", Loader("new")) == ("new", Source.LOAD)
    assert cache.get_or_load("k", Loader("newer")) == ("new", Source.CACHE)


def test_expire_all_reloads_everything_but_keeps_stale_fallback():
    clock = Clock()
    cache = make(clock, stale_ttl=100.0)
    cache.get_or_load("k", Loader("v1"))
    cache.expire_all()
    reload = Loader("v2")
    assert cache.get_or_load("k", reload) == ("v2", Source.LOAD)
    cache.expire_all()
    assert cache.get_or_load("k", Loader(ConnectionError("down"))) == ("v2", Source.STALE)
    assert cache.servable() == 1
    clock.now += 131
    assert cache.servable() == 0


def test_stale_negative_keeps_not_found_through_an_outage():
    clock = Clock()
    users = make(clock, stale_ttl=100.0, stale_negative=True)
    tenants = make(clock, stale_ttl=100.0)
    for cache in (users, tenants):
        cache.get_or_load("k", Loader(None))
    clock.now += 6  # past negative_ttl
    assert users.get_or_load("k", Loader(ConnectionError())) == (None, Source.STALE)
    with pytest.raises(ConnectionError):
        tenants.get_or_load("k", Loader(ConnectionError()))
