"""A kick meets the logins that were under way when it arrived.

The backend is a real Dovecot behind :class:`fakes.slow_login.SlowLogin`,
which holds its answer to the proxy's login: the kick arrives while the
password has been accepted by the proxy and the backend login waits, the
moment a kick that only looks at the sessions it finds would miss.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from fakes.slow_login import SlowLogin
from harness.ports import wait_until
from harness.proxy import ProxyProcess, run_cli
from harness.users import USERS
from harness.wire import Pop3Wire
from test_who_kick import closed_within

from pop3proxy.directory import RedisStore
from pop3proxy.tenants import parse_tenant

SLOW_TENANT = "slow.example"
HELD = 10.0


@pytest.fixture
def slow_backend(dovecot) -> Iterator[SlowLogin]:
    slow = SlowLogin(dovecot.host, dovecot.port)
    yield slow
    slow.close()


@pytest.fixture
def slow_proxy(make_proxy, redis_server, slow_backend) -> ProxyProcess:
    """A proxy whose tenant ``slow.example`` logs in to Dovecot through the slow forwarder."""
    proxy = make_proxy({"directory": {"key_prefix": f"race-{uuid.uuid4().hex[:8]}"}})
    store = RedisStore(redis_server.client(), proxy.config["directory"]["key_prefix"])
    store.put(
        parse_tenant(
            {
                "name": SLOW_TENANT,
                "backends": [{"host": slow_backend.host, "port": slow_backend.port}],
            }
        )
    )
    store.client.close()
    return proxy


def start_login(proxy: ProxyProcess, user: str) -> Pop3Wire:
    """A client that sent USER and PASS and waits for the answer."""
    wire = Pop3Wire(proxy.host, proxy.ports["plain"])
    assert wire.command(f"USER {user}@{SLOW_TENANT}").startswith(b"+OK")
    wire.send(f"PASS {USERS[user]}\r\n".encode())
    return wire


@pytest.mark.parametrize(
    ("scope", "value"), [("--user", f"alice@{SLOW_TENANT}"), ("--tenant", SLOW_TENANT)]
)
def test_a_login_under_way_when_the_kick_arrives_never_reaches_transaction(
    slow_proxy, slow_backend, dovecot, fresh_mailbox, scope, value
):
    messages = fresh_mailbox("alice")
    fresh_mailbox("bob")
    mark = dovecot.log_mark()
    with start_login(slow_proxy, "alice") as alice, start_login(slow_proxy, "bob") as bob:
        assert slow_backend.wait_holding(HELD) and slow_backend.wait_holding(HELD)
        kicked = run_cli(slow_proxy.config_path, "kick", scope, value)
        assert kicked.returncode == 0, kicked.stderr
        # Nothing to end yet: neither session has a user or tenant at this point.
        assert kicked.stdout.strip() == "0 session(s) ended"
        slow_backend.release()
        slow_backend.release()
        first = alice.read_line()
        assert first.startswith(b"-ERR [SYS/TEMP]"), first
        assert alice.read_line() == b""
        if scope == "--tenant":  # bob is of the same tenant
            assert bob.read_line().startswith(b"-ERR [SYS/TEMP]")
        else:  # another user's login goes on
            assert bob.read_line().startswith(b"+OK")
            assert bob.command("STAT").startswith(b"+OK")
    # Dovecot had logged alice in; the proxy closed without QUIT: nothing deleted.
    dovecot.wait_for_log(r"pop3\(alice\).*Disconnected.*del=0/", since=mark)
    assert dovecot.message_count("alice") == len(messages)
    wait_until(
        lambda: (
            [r["end"] for r in slow_proxy.sessions() if r.get("user") == f"alice@{SLOW_TENANT}"]
            == ["kicked"]
        ),
        5,
        message="alice's session logged as kicked",
    )
    late = [r for r in slow_proxy.log_records() if r.get("message") == "kicked after login"]
    assert [r["scope"] for r in late] == [scope.removeprefix("--")] * (
        2 if scope == "--tenant" else 1
    )


def test_a_login_that_starts_after_the_kick_is_not_affected(
    slow_proxy, slow_backend, fresh_mailbox
):
    fresh_mailbox("alice")
    kicked = run_cli(slow_proxy.config_path, "kick", "--user", f"alice@{SLOW_TENANT}")
    assert kicked.returncode == 0, kicked.stderr
    with start_login(slow_proxy, "alice") as alice:
        assert slow_backend.wait_holding(HELD)
        slow_backend.release()
        assert alice.read_line().startswith(b"+OK")
        assert alice.command("STAT").startswith(b"+OK")
    assert not [r for r in slow_proxy.log_records() if r.get("message") == "kicked after login"]


def test_a_tenants_file_that_disables_the_tenant_mid_login_ends_that_login(
    make_proxy, slow_backend, fresh_mailbox, tmp_path
):
    """No Redis, no kick message: the process remembers the withdrawn tenant itself."""
    path = tmp_path / "tenants.yaml"

    def write(enabled: bool) -> None:
        backends = [{"host": slow_backend.host, "port": slow_backend.port}]
        record = {"name": SLOW_TENANT, "backends": backends, "enabled": enabled}
        path.write_text(json.dumps({"tenants": [record]}))

    write(enabled=True)
    proxy = make_proxy({"directory": {"store": "file", "file": str(path)}})
    fresh_mailbox("alice")
    fresh_mailbox("bob")
    with start_login(proxy, "bob") as bob:
        assert slow_backend.wait_holding(HELD)
        slow_backend.release()
        assert bob.read_line().startswith(b"+OK")
        with start_login(proxy, "alice") as alice:
            assert slow_backend.wait_holding(HELD)
            write(enabled=False)
            # bob's session ending shows the process has seen the reload.
            assert closed_within(bob, 6), "the file is polled every second, then checked"
            slow_backend.release()
            assert alice.read_line().startswith(b"-ERR [SYS/TEMP]")
            assert alice.read_line() == b""
