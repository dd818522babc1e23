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


# -- where a client is counted ------------------------------------------------

WIDER = (IPv6Budget(56, 200), IPv6Budget(48, 500))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("192.0.2.7", ClientNetworks("192.0.2.7")),
        ("::ffff:192.0.2.7", ClientNetworks("192.0.2.7")),  # a dual-stack listener
        (
            "2001:db8:1:2:aaaa::9",
            ClientNetworks(
                "2001:db8:1:2::/64", (("2001:db8:1::/56", 200), ("2001:db8:1::/48", 500))
            ),
        ),
        (
            "2001:DB8:1:2ff:ffff:ffff:ffff:ffff",
            ClientNetworks(
                "2001:db8:1:2ff::/64", (("2001:db8:1:200::/56", 200), ("2001:db8:1::/48", 500))
            ),
        ),
        ("fe80::1%eth0", ClientNetworks("fe80::/64", (("fe80::/56", 200), ("fe80::/48", 500)))),
        ("not-an-address", ClientNetworks("not-an-address")),
    ],
)
def test_a_client_is_an_ipv4_address_or_an_ipv6_64(address, expected):
    assert client_networks(address, 64, WIDER) == expected


def test_wider_budgets_narrower_than_the_client_are_ignored():
    networks = client_networks("2001:db8::1", 48, WIDER)
    assert networks == ClientNetworks("2001:db8::/48")


def test_one_ipv6_64_shares_one_budget():
    limiter = FailureLimiter(None, "t", AuthConfig(block_after_per_address=3), clock=Clock())
    for host in range(3):
        limiter.failed(budget(f"user{host}"), f"2001:db8:1:2::{host + 1}")
    verdict = limiter.check(budget("fresh"), "2001:db8:1:2:ffff::1")
    assert verdict.blocked and verdict.scope == "address"
    assert not limiter.check(budget("fresh"), "2001:db8:1:3::1").blocked, "the next /64"


def test_a_guesser_rotating_through_64s_meets_the_56_then_the_48():
    policy = AuthConfig(
        block_after_per_address=100,
        block_after_names_per_address=0,
        ipv6_networks=(IPv6Budget(56, 4), IPv6Budget(48, 6)),
    )
    limiter = FailureLimiter(None, "t", policy, clock=Clock())
    for subnet in range(4):
        limiter.failed(budget("alice"), f"2001:db8:1:{subnet}::1")
    verdict = limiter.check(budget("bob"), "2001:db8:1:ff::1")
    assert verdict.blocked and verdict.scope == "network", "the same /56"
    assert not limiter.check(budget("bob"), "2001:db8:1:100::1").blocked, "the next /56"
    for subnet in (0x100, 0x200):
        limiter.failed(budget("alice"), f"2001:db8:1:{subnet:x}::1")
    assert limiter.check(budget("bob"), "2001:db8:1:300::1").scope == "network", "the /48"
    assert not limiter.check(budget("bob"), "2001:db8:2::1").blocked


def test_a_spray_of_names_blocks_its_client():
    policy = AuthConfig(block_after_names_per_address=5, block_after_per_address=50)
    limiter = FailureLimiter(None, "t", policy, clock=Clock())
    for _ in range(10):
        limiter.failed(budget("alice"), "192.0.2.9")  # one name, often: not a spray
    assert not limiter.check(budget("bob"), "192.0.2.9").blocked
    for i in range(4):
        limiter.failed(budget(f"user{i}"), "192.0.2.9")
    verdict = limiter.check(budget("bob"), "192.0.2.9")
    assert verdict.blocked and verdict.scope == "names"
    assert not limiter.check(budget("bob"), "192.0.2.10").blocked


def test_a_client_the_owner_logged_in_from_is_not_held_back_by_the_users_budget():
    clock = Clock()
    policy = AuthConfig(block_after=3, known_address_ttl=86400 * 30)
    limiter = FailureLimiter(None, "t", policy, clock=clock)
    alice = budget("alice")
    first = limiter.check(alice, "2001:db8:1:2::10")
    assert first.remember and not first.known
    limiter.succeeded(alice, "2001:db8:1:2::10", first)
    for attacker in range(5):
        limiter.failed(alice, f"198.51.100.{attacker}")
    assert limiter.check(alice, "198.51.100.99").scope == "user", "strangers are held back"
    owner = limiter.check(alice, "2001:db8:1:2::77")
    assert not owner.blocked and owner.known, "the same /64 the owner came from"
    assert not owner.remember, "recorded recently: no write on every login"
    limiter.succeeded(alice, "2001:db8:1:2::77", owner)
    assert limiter.check(alice, "198.51.100.99").blocked, "the owner's login clears nothing"
    clock.now += 86400 * 30
    for attacker in range(5):
        limiter.failed(alice, f"198.51.100.{attacker}")
    assert limiter.check(alice, "2001:db8:1:2::77").blocked, "known for 30 days, no longer"


def test_a_known_client_still_meets_its_own_budget():
    policy = AuthConfig(block_after=3, block_after_per_address=4)
    limiter = FailureLimiter(None, "t", policy, clock=Clock())
    alice = budget("alice")
    limiter.succeeded(alice, "192.0.2.1", limiter.check(alice, "192.0.2.1"))
    for _ in range(4):
        limiter.failed(alice, "192.0.2.1", known=True)
    verdict = limiter.check(alice, "192.0.2.1")
    assert verdict.blocked and verdict.scope == "address"


def test_only_the_newest_clients_are_remembered():
    clock = Clock()
    policy = AuthConfig(block_after=1, known_addresses_per_user=2)
    limiter = FailureLimiter(None, "t", policy, clock=clock)
    alice = budget("alice")
    for host in (1, 2, 3):
        clock.now += 1
        address = f"192.0.2.{host}"
        limiter.succeeded(alice, address, limiter.check(alice, address))
    limiter.failed(alice, "198.51.100.1")
    assert limiter.check(alice, "192.0.2.1").blocked, "the oldest was dropped"
    assert not limiter.check(alice, "192.0.2.3").blocked
