"""Shared fixtures: real TLS material, a private redis-server, a private Dovecot.

Thin on purpose: the logic lives in ``tests/harness``. Servers are started on
first use, not at collection, so unit-only runs never pay for them; a missing
binary skips the tests that need it, with the reason.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness.certs import Certs, make_certs
from harness.dovecot import Dovecot
from harness.mailbox import sample_messages
from harness.redis import RedisServer
from harness.users import MASTER_USERS, USERS
from hypothesis import settings

# Property tests judge behaviour, not speed: no per-example time limit, which a
# loaded machine (CI beside other work) would trip without anything being wrong.
settings.register_profile("pop3proxy", deadline=None)
settings.load_profile("pop3proxy")


def _require(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.skip(f"{binary!r} is not installed (Debian: dovecot-pop3d, redis-server)")


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    _require("redis-server")
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def dovecot(certs: Certs) -> Iterator[Dovecot]:
    """Dovecot with :data:`USERS`, STLS on ``.port`` and POP3S on ``.pop3s_port``."""
    _require("dovecot")
    with Dovecot(USERS, certs=certs, master_users=MASTER_USERS) as server:
        yield server


@pytest.fixture
def fresh_mailbox(dovecot: Dovecot) -> Callable[[str], list[bytes]]:
    """``fresh_mailbox(user)`` resets the user's Maildir to the samples and returns them."""

    def reset(user: str) -> list[bytes]:
        messages = sample_messages()
        dovecot.reset_mailbox(user, messages)
        return messages

    return reset


@pytest.fixture
def make_dovecot(certs: Certs) -> Iterator[Callable[..., Dovecot]]:
    """Start an extra Dovecot with other settings; stopped when the test ends.

    ``make_dovecot(haproxy_port=True, login_trusted_networks="127.0.0.0/8")``:
    keyword arguments go to :class:`Dovecot`; users and certs default to the
    shared ones.
    """
    _require("dovecot")
    started: list[Dovecot] = []

    def make(**kwargs: Any) -> Dovecot:
        kwargs.setdefault("certs", certs)
        server = Dovecot(kwargs.pop("users", USERS), **kwargs)
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.close()
