"""A Redis that stops answering (``kill -STOP``: connections accepted, nothing
read), seen from outside the proxy.

Not refused, which every caller notices at once, but hung, which each caller
notices only when its own timeout ends. Two things must hold: a login the
session abandons while it waits on Redis gives back its slots and its backend
connection, and once the proxy knows Redis is hung, new connections, logins
and closes stop waiting on it, and start using it again when it is back.

Each test has a Redis of its own: stopping the shared one would stall the
other tests' proxies.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.certs import Certs
from harness.dovecot import Dovecot
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess
from harness.redis import RedisServer
from harness.users import USERS
from harness.wire import Pop3Wire

from pop3proxy import invalidation
from pop3proxy.directory import RedisStore
from pop3proxy.tenants import parse_tenant

PREFIX = "stall"
REDIS_TIMEOUT = 2.0
"""``directory.redis_timeout`` of these proxies: long enough that a caller
waiting for it is easy to tell from one that does not wait."""


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@contextlib.contextmanager
def stopped(server: RedisServer) -> Iterator[None]:
    """Redis frozen (SIGSTOP) for the block; it always gets SIGCONT back."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


def start_proxy(
    workdir: Path, certs: Certs, redis_server: RedisServer, dovecot: Dovecot, overrides: dict
) -> ProxyProcess:
    store = RedisStore(redis_server.client(), PREFIX)
    backend = {"host": dovecot.host, "port": dovecot.port}
    store.put(parse_tenant({"name": TENANT, "backends": [backend]}))
    store.client.close()
    config = {
        "directory": {
            "store": "redis",
            "redis_url": redis_server.url,
            "key_prefix": PREFIX,
            "redis_timeout": f"{REDIS_TIMEOUT:g}s",
        },
        **overrides,
    }
    proxy = ProxyProcess(workdir, certs, config).start()
    # Subscribed to changes: its first subscription empties the tenant cache,
    # which must not happen after the test filled it.
    client = redis_server.client()
    changes = invalidation.channel(PREFIX)
    wait_until(lambda: client.pubsub_numsub(changes)[0][1] > 0, 10, message="subscribed")
    client.close()
    return proxy


def lease_members(redis_server: RedisServer) -> dict[str, list[bytes]]:
    """Every session lease in Redis: key -> the sessions holding a slot in it."""
    client = redis_server.client()
    try:
        return {
            key.decode(): client.zrange(key, 0, -1)
            for key in client.scan_iter(match=f"{PREFIX}:lease:*")
        }
    finally:
        client.close()


def log_in_and_quit(proxy: ProxyProcess, user: str = "alice") -> None:
    """A whole session; returns once the proxy closed it, its slots given back."""
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login(f"{user}@{TENANT}", USERS[user])
        assert wire.command("QUIT").startswith(b"+OK")
        assert wire.read_line() == b""


def test_a_login_abandoned_while_redis_hangs_gives_back_its_slot_and_backend(
    tmp_path, certs, private_redis, dovecot
):
    """The backend has accepted the password; the session's slots are being
    taken in Redis, which is stopped; the AUTHORIZATION timeout ends the
    session. Once Redis runs again (and carries out the request it had), the
    abandoned session holds no slot, so the user, limited to one session,
    logs in at once; the backend connection was closed without QUIT."""
    proxy = start_proxy(
        tmp_path,
        certs,
        private_redis,
        dovecot,
        {
            "timeouts": {"auth": "2s"},
            "limits": {"max_sessions_per_user": 1},
            # The client's address is exempt from the failure budgets, so the
            # first Redis request of the login is the one taking the slots.
            "auth": {"allow": ["127.0.0.0/8"]},
        },
    )
    try:
        mark = dovecot.log_mark()
        log_in_and_quit(proxy)  # the tenant is cached; Redis is known to work
        dovecot.wait_for_log(r"pop3\(alice\).*Disconnected: Logged out", since=mark)
        mark = dovecot.log_mark()
        with stopped(private_redis):
            with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
                assert wire.command(f"USER alice@{TENANT}").startswith(b"+OK")
                wire.send(f"PASS {USERS['alice']}\r\n".encode())
                assert wire.read_line() == b"-ERR [SYS/TEMP] Authorization timed out\r\n"
                assert wire.read_line() == b""
            dovecot.wait_for_log(r"Login: user=<alice>", since=mark)
        # Redis reads the request it had before anything sent after SIGCONT.
        assert private_redis.client().ping()
        abandoned = wait_until(
            lambda: [s["session"] for s in proxy.sessions() if s["end"] == "auth_timeout"],
            5,
            message="the abandoned session's summary line",
        )[0]
        wait_until(
            lambda: not any(lease_members(private_redis).values()),
            5,
            message="no session holding a slot in Redis",
        )
        assert not any(abandoned.encode() in m for m in lease_members(private_redis).values())
        dovecot.wait_for_log(r"pop3\(alice\).*Disconnected: Connection closed.*del=0/", since=mark)
        assert "Disconnected: Logged out" not in dovecot.read_log()[mark:]
        wait_until(
            lambda: dovecot.open_sessions("alice", since=mark) <= 0, 5, message="backend closed"
        )
        with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
            assert wire.command(f"USER alice@{TENANT}").startswith(b"+OK")
            assert wire.command(f"PASS {USERS['alice']}").startswith(b"+OK")
            assert wire.command("QUIT").startswith(b"+OK")
    finally:
        proxy.stop()


def test_a_hung_redis_holds_up_no_greeting_login_or_close_and_is_used_again(
    tmp_path, certs, private_redis, dovecot
):
    """Every Redis caller (per-address admission, failure budgets, session
    slots, their release) shares the directory's view of Redis: after the
    first connection finds Redis hung, greetings come at once, a cached
    tenant's user logs in and out at once (limits counted in the process),
    and after SIGCONT the slots are taken in Redis again, without a restart."""
    proxy = start_proxy(
        tmp_path,
        certs,
        private_redis,
        dovecot,
        {
            "limits": {"max_connections_per_address": 50, "max_sessions_per_user": 1},
            "auth": {"allow": [], "failure_delay": "0s"},
        },
    )
    prompt = REDIS_TIMEOUT / 4
    try:
        log_in_and_quit(proxy)
        with stopped(private_redis):
            with Pop3Wire(proxy.host, proxy.ports["plain"], timeout=30) as first:
                assert first.greeting.startswith(b"+OK")  # found out the hard way, once
            for _ in range(5):
                started = time.monotonic()
                with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
                    assert wire.greeting.startswith(b"+OK")
                    assert time.monotonic() - started < prompt, "the greeting waited on Redis"
            with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
                started = time.monotonic()
                wire.login(f"alice@{TENANT}", USERS["alice"])
                assert time.monotonic() - started < prompt, "the login waited on Redis"
                with Pop3Wire(proxy.host, proxy.ports["plain"]) as second:
                    assert second.command(f"USER alice@{TENANT}").startswith(b"+OK")
                    reply = second.command(f"PASS {USERS['alice']}")
                    assert reply.startswith(b"-ERR [IN-USE]"), "one session, counted here"
                assert wire.command("STAT").startswith(b"+OK")
                started = time.monotonic()
                assert wire.command("QUIT").startswith(b"+OK")
                assert wire.read_line() == b""
                assert time.monotonic() - started < prompt, "the close waited on Redis"

        def user_slots_in_redis() -> int:
            return sum(
                len(members)
                for key, members in lease_members(private_redis).items()
                if key.startswith(f"{PREFIX}:lease:user:")
            )

        def slot_taken_in_redis() -> bool:
            with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
                wire.login(f"alice@{TENANT}", USERS["alice"])
                taken = user_slots_in_redis() == 1
                assert wire.command("QUIT").startswith(b"+OK")
                assert wire.read_line() == b""
            return taken

        wait_until(slot_taken_in_redis, 20, interval=0.2, message="a session slot in Redis")
        assert user_slots_in_redis() == 0, "and given back in Redis"
    finally:
        proxy.stop()
