"""Passive backend health: a circuit breaker per backend address. Pure: no I/O.

Closed
    Logins go to the backend. Each failure (cannot connect, no or garbage
    greeting, TLS failure, login timeout) is remembered; ``failure_threshold``
    failures within ``failure_window`` seconds open the breaker.
Open
    The backend is skipped for ``cooldown`` seconds: logins go straight to
    the next candidate (or get ``-ERR [SYS/TEMP]`` at once if there is none)
    instead of waiting for a connect timeout each.
Half-open
    After the cool-down, exactly one login is let through as a probe. Its
    success closes the breaker; its failure opens it for another cool-down.
    A probe that never reports (its session was killed mid-login) is
    replaced by the next one after a further cool-down.

A refused password is a success here: the backend answered. The state is
per process (replicas learn on their own, which needs no coordination and
costs each replica at most ``failure_threshold`` slow logins per outage),
keyed by address, so tenants sharing a server share its state.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CLOSED, OPEN, HALF_OPEN = State
"""Module names for the states, read on every login (see ``protocol.client``:
Enum class attributes are slow to read on Python 3.11)."""


@dataclass
class _Breaker:
    state: State = State.CLOSED
    failures: deque[float] = field(default_factory=deque)
    opened_at: float = 0.0
    probe_started: float | None = None


class Health:
    """Breakers for every backend address this process has used."""

    def __init__(
        self,
        failure_threshold: int = 3,
        failure_window: float = 30.0,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.failure_window = failure_window
        self.cooldown = cooldown
        self.clock = clock
        self._breakers: dict[str, _Breaker] = {}

    def _get(self, address: str) -> _Breaker:
        breaker = self._breakers.get(address)
        if breaker is None:
            breaker = self._breakers[address] = _Breaker()
        return breaker

    def state(self, address: str) -> State:
        return self._get(address).state

    def allow(self, address: str) -> bool:
        """May a login use this backend now? A ``True`` in half-open makes it the probe."""
        breaker = self._get(address)
        now = self.clock()
        if breaker.state is CLOSED:
            return True
        if breaker.state is OPEN:
            if now - breaker.opened_at < self.cooldown:
                return False
            breaker.state = HALF_OPEN
        elif breaker.probe_started is not None and now - breaker.probe_started < self.cooldown:
            return False  # half-open, the probe is still out
        breaker.probe_started = now
        return True

    def succeeded(self, address: str) -> bool:
        """Record a success; ``True`` if that closed an open or half-open breaker."""
        breaker = self._get(address)
        recovered = breaker.state is not CLOSED
        breaker.state = CLOSED
        breaker.failures.clear()
        breaker.probe_started = None
        return recovered

    def failed(self, address: str) -> bool:
        """Record a failure; ``True`` if that opened the breaker."""
        breaker = self._get(address)
        now = self.clock()
        if breaker.state is HALF_OPEN:
            self._open(breaker, now)
            return True
        if breaker.state is OPEN:
            return False
        breaker.failures.append(now)
        while breaker.failures and now - breaker.failures[0] > self.failure_window:
            breaker.failures.popleft()
        if len(breaker.failures) >= self.failure_threshold:
            self._open(breaker, now)
            return True
        return False

    def release(self, address: str) -> None:
        """A probe ended without a verdict (its session was cut): let the next one go."""
        breaker = self._get(address)
        if breaker.state is HALF_OPEN:
            breaker.probe_started = None

    @staticmethod
    def _open(breaker: _Breaker, now: float) -> None:
        breaker.state = OPEN
        breaker.opened_at = now
        breaker.failures.clear()
        breaker.probe_started = None
