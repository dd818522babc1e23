"""Authentication modes and abuse control, shared by replicas through one Redis.

The proxies here turn abuse control back on (the harness default allows
loopback, since the rest of the suite fails logins from it on purpose).
"""

from __future__ import annotations

import json
import signal
import time

import pytest
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess, run_cli
from harness.proxy import attempt_login as attempt
from harness.users import MASTER_USERS, USERS, WRONG_PASSWORD
from harness.wire import Pop3Wire

LOCKED_OUT = b"-ERR [LOGIN-DELAY]"
MASTER_ENV = "POP3PROXY_TEST_MASTER_PASSWORD"
CHEAP_HASH = {"argon2_time_cost": 1, "argon2_memory_cost": 1024}


def replicas(make_proxy, prefix: str, count: int = 2, **sections) -> list[ProxyProcess]:
    """``count`` proxies on one Redis prefix: replicas of one deployment."""
    overrides = {"directory": {"key_prefix": prefix}, **sections}
    return [make_proxy(overrides) for _ in range(count)]


def test_failure_budget_is_shared_by_replicas(make_proxy, tmp_path):
    auth = {"allow": [], "block_after": 4, "delay_after": 100, "failure_delay": "0s"}
    first, second = replicas(make_proxy, f"budget-{tmp_path.name}", auth=auth)
    user = f"carol@{TENANT}"
    for proxy in (first, second, first, second):
        assert attempt(proxy, user, WRONG_PASSWORD).startswith(b"-ERR [AUTH]")
    assert attempt(first, user, USERS["carol"]).startswith(LOCKED_OUT), "even the right password"
    assert attempt(second, user, USERS["carol"]).startswith(LOCKED_OUT)
    assert attempt(second, f"dave@{TENANT}", WRONG_PASSWORD).startswith(b"-ERR [AUTH]")


def test_refusals_grow_slower_past_the_soft_threshold(make_proxy):
    proxy = make_proxy({"auth": {"allow": [], "delay_after": 2, "failure_delay": "0s"}})
    timings = []
    for _ in range(3):
        started = time.monotonic()
        attempt(proxy, f"ghost@{TENANT}", WRONG_PASSWORD)
        timings.append(time.monotonic() - started)
    assert timings[1] >= 1.0 > timings[0] - 0.6, timings  # Dovecot itself takes 0.5 s
    assert timings[2] >= 2.0, timings


def test_success_clears_the_user_budget(make_proxy, fresh_mailbox):
    fresh_mailbox("bob")
    proxy = make_proxy({"auth": {"allow": [], "block_after": 3, "failure_delay": "0s"}})
    user = f"bob@{TENANT}"
    for _ in range(2):
        attempt(proxy, user, WRONG_PASSWORD)
    assert attempt(proxy, user, USERS["bob"]).startswith(b"+OK")
    for _ in range(2):
        attempt(proxy, user, WRONG_PASSWORD)
    assert attempt(proxy, user, USERS["bob"]).startswith(b"+OK")


def test_tenant_max_sessions_holds_across_replicas(make_proxy, tmp_path, dovecot, fresh_mailbox):
    for user in ("alice", "bob"):
        fresh_mailbox(user)
    first, second = replicas(make_proxy, f"tenant-{tmp_path.name}")
    backend = f"{dovecot.host}:{dovecot.port}"
    result = run_cli(
        first.config_path, "tenant", "set", TENANT, "--backend", backend, "--max-sessions", "1"
    )
    assert result.returncode == 0, result.stderr
    with Pop3Wire(first.host, first.ports["plain"]) as holder:
        holder.login(f"alice@{TENANT}", USERS["alice"])
        refused = attempt(second, f"bob@{TENANT}", USERS["bob"])
        assert refused.startswith(b"-ERR [SYS/TEMP] Too many sessions")
        holder.command("QUIT")
    wait_until(lambda: attempt(second, f"bob@{TENANT}", USERS["bob"]).startswith(b"+OK"), 5)


def test_one_session_per_user_by_default(make_proxy, fresh_mailbox):
    fresh_mailbox("erin")
    proxy = make_proxy({"limits": {"max_sessions_per_user": 1}})
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as first:
        first.login(f"erin@{TENANT}", USERS["erin"])
        assert attempt(proxy, f"erin@{TENANT}", USERS["erin"]).startswith(b"-ERR [IN-USE]")
        assert attempt(proxy, f"erin@{TENANT}", WRONG_PASSWORD).startswith(b"-ERR [AUTH]"), (
            "a wrong password must not learn that the user is online"
        )
        assert first.command("STAT").startswith(b"+OK"), "the first session is untouched"


def test_a_client_that_quit_can_log_in_again_at_once(make_proxy, fresh_mailbox):
    """With one session per user, a client that sent QUIT and saw the connection
    close logs in again straight away: its slot is back before the close."""
    fresh_mailbox("erin")
    proxy = make_proxy({"limits": {"max_sessions_per_user": 1}})
    for _ in range(5):
        with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
            wire.login(f"erin@{TENANT}", USERS["erin"])
            assert wire.command("QUIT").startswith(b"+OK")
            assert wire.read_line() == b"", "the proxy closes after QUIT"


def test_killed_replica_frees_its_slots_within_the_lease_ttl(make_proxy, tmp_path, fresh_mailbox):
    fresh_mailbox("dave")
    limits = {"max_sessions_per_user": 1, "lease_ttl": "3s"}
    doomed, survivor = replicas(make_proxy, f"lease-{tmp_path.name}", limits=limits)
    user = f"dave@{TENANT}"
    wire = Pop3Wire(doomed.host, doomed.ports["plain"])
    wire.login(user, USERS["dave"])
    assert attempt(survivor, user, USERS["dave"]).startswith(b"-ERR [IN-USE]")
    doomed.signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: attempt(survivor, user, USERS["dave"]).startswith(b"+OK"), 6)
    assert time.monotonic() - killed < 4.5, "back within the 3 s lease TTL (plus one check)"
    wire.drop()


def test_connections_per_address(make_proxy):
    proxy = make_proxy({"limits": {"max_connections_per_address": 3}})
    # The harness's readiness probes are connections from this address too.
    wait_until(lambda: _no_connections(proxy), 5, message="readiness probes closed")
    held = [Pop3Wire(proxy.host, proxy.ports["plain"]) for _ in range(3)]
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as extra:
        assert extra.greeting.startswith(b"-ERR [SYS/TEMP] Too many connections")
    held.pop().drop()
    wait_until(lambda: _greets(proxy), 5)
    for wire in held:
        wire.drop()


def _no_connections(proxy: ProxyProcess) -> bool:
    """No client connection open: each one's address slot is back in Redis."""
    return all(
        float(line.rsplit(" ", 1)[1]) == 0
        for line in proxy.metrics().splitlines()
        if line.startswith("pop3proxy_connections_active{")
    )


def _greets(proxy: ProxyProcess) -> bool:
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        return wire.greeting.startswith(b"+OK")


@pytest.fixture
def local_tenant(make_proxy, tmp_path, dovecot, monkeypatch):
    """A proxy whose tenant ``local.example`` judges passwords itself and logs in
    to Dovecot as ``user*proxymaster``; alice's proxy password is ``local-pass``."""
    monkeypatch.setenv(MASTER_ENV, MASTER_USERS["proxymaster"])
    proxy = make_proxy({"auth": {**CHEAP_HASH, "failure_delay": "0.7s"}})
    record = tmp_path / "local.yaml"
    record.write_text(
        json.dumps(
            {
                "name": "local.example",
                "backends": [{"host": dovecot.host, "port": dovecot.port}],
                "auth": "local",
                "master_user": "proxymaster",
                "master_password_env": MASTER_ENV,
            }
        )
    )
    for args, stdin in (
        (("tenant", "set", "--from-file", str(record)), None),
        (("user", "set-password", "alice@local.example"), "local-pass\n"),
    ):
        result = run_cli(proxy.config_path, *args, stdin=stdin)
        assert result.returncode == 0, result.stderr
    return proxy


def test_local_auth_logs_in_with_the_master_user(local_tenant, dovecot, fresh_mailbox):
    messages = fresh_mailbox("alice")
    mark = dovecot.log_mark()
    with Pop3Wire(local_tenant.host, local_tenant.ports["plain"]) as wire:
        wire.login("alice@local.example", "local-pass")
        assert wire.command("STAT").startswith(f"+OK {len(messages)} ".encode())
    dovecot.wait_for_log(r"auth: Info: Master user logging in as alice", since=mark)
    assert attempt(local_tenant, "alice@local.example", USERS["alice"]).startswith(b"-ERR [AUTH]")
    assert attempt(local_tenant, "nobody@local.example", "x").startswith(b"-ERR [AUTH]")


def test_user_commands(local_tenant):
    listing = run_cli(
        local_tenant.config_path, "user", "list", "--tenant", "local.example", "--json"
    )
    assert json.loads(listing.stdout) == [
        {"user": "alice@local.example", "password": True, "backend": None}
    ]
    shown = run_cli(local_tenant.config_path, "user", "show", "alice@local.example")
    assert "$argon2" not in shown.stdout, "the hash is never printed"
    assert (
        run_cli(local_tenant.config_path, "user", "delete", "alice@local.example").returncode == 0
    )
    assert attempt(local_tenant, "alice@local.example", "local-pass").startswith(b"-ERR [AUTH]")


def test_changed_hash_parameters_rehash_on_login(local_tenant, redis_server, fresh_mailbox):
    fresh_mailbox("alice")
    prefix = local_tenant.config["directory"]["key_prefix"]
    key = f"{prefix}:user:local.example:alice"
    client = redis_server.client()
    before = json.loads(client.get(key))["password_hash"]
    local_tenant.stop()
    stronger = {**local_tenant.config}
    stronger["auth"] = {**stronger["auth"], "argon2_time_cost": 2}
    local_tenant.config_path.write_text(json.dumps(stronger))
    local_tenant.start()
    with Pop3Wire(local_tenant.host, local_tenant.ports["plain"]) as wire:
        wire.login("alice@local.example", "local-pass")
    wait_until(lambda: json.loads(client.get(key))["password_hash"] != before, 5)
    assert ",t=2," in json.loads(client.get(key))["password_hash"]
    client.close()


def test_refusals_take_the_same_time_whatever_failed(local_tenant, fresh_mailbox):
    """Unknown tenant, disabled tenant, unknown user (local auth: a dummy hash)
    and a wrong password (Dovecot takes 0.5 s) look alike on the clock."""
    fresh_mailbox("alice")
    cases = {
        "wrong password": (f"alice@{TENANT}", WRONG_PASSWORD),
        "unknown tenant": ("alice@nowhere.example", WRONG_PASSWORD),
        "disabled tenant": ("alice@off.example", USERS["alice"]),
        "unknown user (local)": ("nobody@local.example", WRONG_PASSWORD),
        "wrong password (local)": ("alice@local.example", WRONG_PASSWORD),
    }
    fastest = {}
    for label, (user, password) in cases.items():
        timings = []
        for _ in range(2):
            started = time.monotonic()
            assert attempt(local_tenant, user, password).startswith(b"-ERR [AUTH]")
            timings.append(time.monotonic() - started)
        fastest[label] = min(timings)  # the least disturbed by other processes
    assert max(fastest.values()) < 1.35 * min(fastest.values()), fastest
