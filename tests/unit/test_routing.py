"""Backend order: failover, round robin, rendezvous hashing, pins."""

from __future__ import annotations

from collections import Counter

from pop3proxy.routing import Rotation, candidates, rendezvous_order, score
from pop3proxy.tenants import Backend, Tenant

USERS = [f"user{i}@acme.example" for i in range(10_000)]


def tenant(policy: str, count: int = 3) -> Tenant:
    backends = tuple(Backend(f"10.0.0.{i}", 110) for i in range(1, count + 1))
    return Tenant("acme.example", backends, policy=policy)


def hosts(backends: list[Backend]) -> list[str]:
    return [backend.host for backend in backends]


def test_failover_keeps_the_list_order() -> None:
    t = tenant("failover")
    rotation = Rotation()
    for user in ("a", "b", "c"):
        assert hosts(candidates(t, user, rotation)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_round_robin_starts_one_further_each_login_and_wraps() -> None:
    t = tenant("round_robin")
    rotation = Rotation()
    firsts = [candidates(t, "same-user", rotation)[0].host for _ in range(6)]
    assert firsts == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] * 2
    assert hosts(candidates(t, "x", rotation)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_round_robin_counters_are_per_tenant() -> None:
    rotation = Rotation()
    a = tenant("round_robin")
    b = Tenant("b.example", a.backends, policy="round_robin")
    candidates(a, "u", rotation)
    assert candidates(b, "u", rotation)[0].host == "10.0.0.1"


def test_hash_is_stable_and_independent_of_list_order() -> None:
    t = tenant("hash")
    shuffled = Tenant(t.name, t.backends[::-1], policy="hash")
    for user in USERS[:200]:
        first = candidates(t, user, Rotation())
        assert first == candidates(t, user, Rotation())
        assert first == candidates(shuffled, user, Rotation())
        assert sorted(hosts(first)) == hosts(list(t.backends)), "every backend, once"


def test_hash_ignores_user_name_case() -> None:
    t = tenant("hash")
    assert candidates(t, "Alice@Acme.Example", Rotation()) == candidates(
        t, "alice@acme.example", Rotation()
    )


def test_hash_spreads_users_evenly() -> None:
    t = tenant("hash", count=4)
    load = Counter(candidates(t, user, Rotation())[0].host for user in USERS)
    assert len(load) == 4
    assert all(2200 < count < 2800 for count in load.values()), load


def test_adding_a_backend_moves_about_one_in_n_users_and_only_to_it() -> None:
    before = tenant("hash", count=4)
    after = tenant("hash", count=5)
    new = after.backends[-1]
    moved = 0
    for user in USERS:
        old_choice = candidates(before, user, Rotation())[0]
        new_choice = candidates(after, user, Rotation())[0]
        if new_choice != old_choice:
            moved += 1
            assert new_choice == new, "a user only ever moves to the added backend"
    fraction = moved / len(USERS)
    assert 0.18 < fraction < 0.22, f"moved {fraction:.3f}, consistent hashing promises 1/5"


def test_removing_a_backend_moves_only_its_users_to_their_second_choice() -> None:
    full = tenant("hash", count=5)
    gone = full.backends[2]
    smaller = Tenant(full.name, tuple(b for b in full.backends if b != gone), policy="hash")
    for user in USERS[:2000]:
        order = candidates(full, user, Rotation())
        expected = order[1] if order[0] == gone else order[0]
        assert candidates(smaller, user, Rotation())[0] == expected


def test_score_depends_on_the_backend_address() -> None:
    a, b = Backend("10.0.0.1", 110), Backend("10.0.0.1", 111)
    assert score("u", a) != score("u", b)
    assert rendezvous_order([a, b], "u") in ([a, b], [b, a])


def test_pin_comes_first_then_the_policy_order() -> None:
    t = tenant("hash")
    natural = candidates(t, "alice", Rotation())
    pin = natural[-1].address
    pinned = candidates(t, "alice", Rotation(), pinned=pin)
    assert pinned[0].address == pin
    assert pinned[1:] == natural[:-1]


def test_pin_overrides_failover_and_an_unknown_pin_is_ignored() -> None:
    t = tenant("failover")
    assert hosts(candidates(t, "u", Rotation(), pinned="10.0.0.3:110"))[0] == "10.0.0.3"
    assert candidates(t, "u", Rotation(), pinned="10.9.9.9:110") == list(t.backends)
