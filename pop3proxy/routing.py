"""Which of a tenant's backends a login tries, in which order. Pure: no I/O.

Policies (``policy`` in the tenant record):

``failover``
    The list order: the first backend takes every login while it works.
``round_robin``
    Each login starts one further along the list (a counter per tenant and
    process), then goes round; the rest of the list is the failover order.
``hash``
    Rendezvous (highest random weight) hashing of the user name: every
    backend gets a score ``blake2b(user, backend)`` and the highest wins.
    A user lands on the same backend while it is up, on every replica,
    without shared state. Adding a backend moves only the users for whom
    the new one scores highest (1/N of them on average); removing one moves
    only its own users. The descending scores are the failover order, so a
    user whose backend is down goes to the same second choice every time.

A per-user pin (``host:port`` of one of the tenant's backends, from the
directory) overrides the policy: the pinned backend comes first. If it
cannot be used, the login fails over to the rest in the policy's order, like
any other first choice (the directory treats a pin as a routing preference;
a pin naming a backend the tenant no longer has is ignored there).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

from pop3proxy.tenants import Backend, Tenant


def score(key: str, backend: Backend) -> int:
    """The rendezvous weight of ``backend`` for ``key``; stable across processes."""
    data = key.encode("utf-8") + b"\x00" + backend.address.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def rendezvous_order(backends: Sequence[Backend], key: str) -> list[Backend]:
    """``backends`` by descending weight for ``key`` (ties: list order)."""
    return sorted(backends, key=lambda backend: -score(key, backend))


class Rotation:
    """Round-robin counters, one per tenant, in this process."""

    def __init__(self) -> None:
        self._counters: dict[str, itertools.count[int]] = {}

    def next(self, tenant: str) -> int:
        counter = self._counters.get(tenant)
        if counter is None:
            counter = self._counters[tenant] = itertools.count()
        return next(counter)


def candidates(
    tenant: Tenant, user: str, rotation: Rotation, pinned: str | None = None
) -> list[Backend]:
    """The backends to try for ``user``, best first."""
    ordered = _by_policy(tenant, user, rotation)
    if pinned:
        first = [backend for backend in ordered if backend.address == pinned]
        return first + [backend for backend in ordered if backend.address != pinned]
    return ordered


def _by_policy(tenant: Tenant, user: str, rotation: Rotation) -> list[Backend]:
    backends = list(tenant.backends)
    if tenant.policy == "hash":
        return rendezvous_order(backends, user.lower())
    if tenant.policy == "round_robin" and len(backends) > 1:
        start = rotation.next(tenant.name) % len(backends)
        return backends[start:] + backends[:start]
    return backends
