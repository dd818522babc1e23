"""argon2id password checks, with cheap parameters to keep the suite fast."""

from __future__ import annotations

import time

from pop3proxy.auth import HashParameters, Passwords

CHEAP = HashParameters(time_cost=1, memory_cost=1024, parallelism=1)


def test_hash_and_verify():
    passwords = Passwords(CHEAP)
    stored = passwords.hash("correct horse")
    assert stored.startswith("$argon2id$")
    assert passwords.verify(stored, "correct horse")
    assert passwords.verify(stored, b"correct horse")
    assert not passwords.verify(stored, "Correct horse")
    assert not passwords.verify("not a hash", "correct horse")


def test_unknown_user_is_never_accepted_and_costs_a_hash():
    passwords = Passwords(HashParameters(time_cost=2, memory_cost=8192))
    stored = passwords.hash("pw")
    assert not passwords.verify(None, "pop3proxy dummy password for unknown users")
    known = fastest(lambda: passwords.verify(stored, "wrong"))
    unknown = fastest(lambda: passwords.verify(None, "wrong"))
    assert 0.5 < unknown / known < 2.0, (unknown, known)


def fastest(check, rounds: int = 7) -> float:
    """The quickest of several runs: what the work costs, without the noise
    other processes on a busy machine add to some of them."""
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        check()
        timings.append(time.perf_counter() - started)
    return min(timings)


def test_changed_parameters_ask_for_a_rehash():
    old = Passwords(CHEAP).hash("pw")
    stronger = Passwords(HashParameters(time_cost=2, memory_cost=2048))
    assert stronger.needs_rehash(old)
    assert not stronger.needs_rehash(stronger.hash("pw"))
