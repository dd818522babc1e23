"""Failure budgets and leases without Redis: the per-process fallback."""

from __future__ import annotations

import pytest

from pop3proxy.config import AuthConfig, IPv6Budget
from pop3proxy.limits import (
    AllowList,
    ClientNetworks,
    FailureLimiter,
    LeaseLimiter,
    Slot,
    Verdict,
    backoff,
    client_networks,
)
from pop3proxy.tenants import split_user


def budget(user: str, default_tenant: str | None = "acme.example") -> str:
    """The failure budgets' key for a typed name, as the login service derives it."""
    return split_user(user, "@", default_tenant).folded


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delay_grows_from_the_soft_threshold_and_is_capped():
    policy = AuthConfig(delay_after=3, max_delay=8)
    assert [backoff(policy, n) for n in range(1, 9)] == [0, 0, 1, 2, 4, 8, 8, 8]


def test_user_is_blocked_from_the_hard_threshold_until_the_window_ends():
    clock = Clock()
    limiter = FailureLimiter(None, "t", AuthConfig(failure_window=900, block_after=10), clock=clock)
    for _ in range(9):
        limiter.failed("alice@acme.example", "192.0.2.1")
        assert not limiter.check("alice@acme.example", "192.0.2.1").blocked
    limiter.failed("alice@acme.example", "192.0.2.1")
    verdict = limiter.check(budget("ALICE@acme.example"), "192.0.2.99")
    assert verdict.blocked and verdict.scope == "user", "per user name, case-insensitive"
    assert not limiter.check("bob@acme.example", "192.0.2.99").blocked
    clock.now += 901
    assert not limiter.check("alice@acme.example", "192.0.2.1").blocked


def test_address_budget_is_separate_and_larger():
    limiter = FailureLimiter(None, "t", AuthConfig(block_after_per_address=50), clock=Clock())
    for i in range(50):
        limiter.failed(f"user{i}@acme.example", "192.0.2.7")
    verdict = limiter.check("fresh@acme.example", "192.0.2.7")
    assert verdict.blocked and verdict.scope == "address"
    assert not limiter.check("fresh@acme.example", "192.0.2.8").blocked


def test_success_clears_the_user_budget():
    limiter = FailureLimiter(None, "t", AuthConfig(block_after=3), clock=Clock())
    for _ in range(2):
        limiter.failed("alice@acme.example", "192.0.2.1")
    limiter.succeeded("alice@acme.example", "192.0.2.1", Verdict(False, user_failures=2))
    for _ in range(2):
        limiter.failed("alice@acme.example", "192.0.2.1")
    assert not limiter.check("alice@acme.example", "192.0.2.1").blocked


def test_allow_listed_networks_are_never_counted():
    allow = AllowList(["10.0.0.0/8", "2001:db8::/32"])
    limiter = FailureLimiter(None, "t", AuthConfig(block_after=1), allow, clock=Clock())
    assert limiter.failed("alice@acme.example", "10.1.2.3") == 0
    assert not limiter.check("alice@acme.example", "10.1.2.3").blocked
    assert "2001:db8::1" in allow and "192.0.2.1" not in allow and "garbage" not in allow


def test_local_leases_hold_the_limit_and_give_slots_back():
    leases = LeaseLimiter(None, "t")
    slots = [Slot("tenant", "acme.example", 2), Slot("user", "alice@acme.example", 1)]
    first, full = leases.acquire("s1", slots)
    assert first is not None and full is None
    second, full = leases.acquire("s2", slots)
    assert second is None and full == slots[1], "one session per user"
    third, _ = leases.acquire("s3", [Slot("tenant", "acme.example", 2)])
    assert third is not None
    fourth, full = leases.acquire("s4", [Slot("tenant", "acme.example", 2)])
    assert fourth is None and full.scope == "tenant"
    leases.release(first)
    again, _ = leases.acquire("s5", slots)
    assert again is not None


def test_a_refused_acquire_holds_nothing():
    leases = LeaseLimiter(None, "t")
    leases.acquire("s1", [Slot("user", "bob@x.example", 1)])
    lease, full = leases.acquire(
        "s2", [Slot("tenant", "x.example", 5), Slot("user", "bob@x.example", 1)]
    )
    assert lease is None and full.scope == "user"
    for i in range(5):
        assert leases.acquire(f"t{i}", [Slot("tenant", "x.example", 5)])[0] is not None


@pytest.mark.parametrize("cidr", ["not-a-network", "10.0.0.0/33"])
def test_bad_allow_list_entries_are_rejected(cidr):
    with pytest.raises(ValueError):
        AllowList([cidr])


def test_the_verdict_says_whether_a_good_login_has_anything_to_clear():
    """A good login clears the name's failures; it asks Redis to only when there are some
    (or when they were not looked up, from an allowed network)."""
    limiter = FailureLimiter(None, "t", AuthConfig(), AllowList(["10.0.0.0/8"]), clock=Clock())
    assert limiter.check("alice@acme.example", "192.0.2.1").user_failures == 0
    limiter.failed("alice@acme.example", "192.0.2.1")
    limiter.failed("alice@acme.example", "192.0.2.2")
    assert limiter.check("alice@acme.example", "192.0.2.3").user_failures == 2
    assert limiter.check("alice@acme.example", "10.1.2.3").user_failures is None
    limiter.succeeded("alice@acme.example", "192.0.2.3", Verdict(False, user_failures=2))
    assert limiter.check("alice@acme.example", "192.0.2.3").user_failures == 0
