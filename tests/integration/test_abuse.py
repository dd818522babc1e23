"""Authentication modes and abuse control, shared by replicas through one Redis.

The proxies here turn abuse control back on (the harness default allows
loopback, since the rest of the suite fails logins from it on purpose).
"""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest
from harness.ports import LOOPBACK, free_port, wait_until
from harness.proxy import TENANT, ProxyProcess, run_cli
from harness.proxy import attempt_login as attempt
from harness.users import USERS, WRONG_PASSWORD
from harness.wire import Pop3Wire

from pop3proxy.protocol.proxyproto import build_v1

LOCKED_OUT = b"-ERR [LOGIN-DELAY]"


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


def test_one_session_per_user_when_limited_to_one(make_proxy, fresh_mailbox):
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
def local_tenant(make_local_tenant, dovecot):
    """A proxy whose tenant ``local.example`` judges passwords itself and logs in
    to Dovecot as ``user*proxymaster``; alice's proxy password is ``local-pass``."""
    return make_local_tenant(dovecot, failure_delay="0.7s")


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
        {
            "user": "alice@local.example",
            "password": True,
            "password_scheme": "ARGON2ID",
            "legacy_hash": False,
            "backend": None,
        }
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


# -- budgets that do not lock the owner out ------------------------------------------


def lb_proxy(make_proxy, auth: dict) -> ProxyProcess:
    """A private proxy with one more listener, ``lb``, behind a "load balancer"
    on 127.0.0.1: each connection presents the client address of its PROXY header."""
    proxy = make_proxy({"auth": {"allow": [], "failure_delay": "0s", **auth}}, start=False)
    port = free_port()
    proxy.config["listeners"].append(
        {
            "name": "lb",
            "address": f"{LOOPBACK}:{port}",
            "tls": "none",
            "proxy_protocol": True,
            "proxy_protocol_trusted": ["127.0.0.1/32"],
        }
    )
    proxy.config_path.write_text(json.dumps(proxy.config))
    proxy.ports["lb"] = port
    return proxy.start()


def attempt_from(proxy: ProxyProcess, client_ip: str, user: str, password: str) -> bytes:
    """:func:`attempt`, from ``client_ip`` as the load balancer says."""
    destination = "::1" if ":" in client_ip else LOOPBACK
    header = build_v1((client_ip, 40000), (destination, proxy.ports["lb"]))
    return attempt(proxy, user, password, listener="lb", proxy_header=header)


OWNER_HOME = "2001:db8:aa:bb::5"
ATTACKER = "203.0.113.66"


def test_an_attack_on_a_user_does_not_lock_the_owner_out(make_proxy, fresh_mailbox):
    """50 guesses from one address (five connections at a time) spend alice's
    budget; alice, from the /64 she logged in from before, logs in all the
    same while the attack goes on. From anywhere else the budget holds."""
    fresh_mailbox("alice")
    proxy = lb_proxy(make_proxy, {"block_after": 5, "delay_after": 100})
    user = f"alice@{TENANT}"
    assert attempt_from(proxy, OWNER_HOME, user, USERS["alice"]).startswith(b"+OK")
    replies: list[bytes] = []

    def attack() -> None:
        for _ in range(10):
            replies.append(attempt_from(proxy, ATTACKER, user, WRONG_PASSWORD))

    attackers = [threading.Thread(target=attack) for _ in range(5)]
    for thread in attackers:
        thread.start()
    try:
        wait_until(lambda: LOCKED_OUT in b"".join(replies), 30, message="alice's budget spent")
        assert attempt_from(proxy, "2001:db8:aa:bb::9", user, USERS["alice"]).startswith(b"+OK")
        assert attempt_from(proxy, "198.51.100.3", user, USERS["alice"]).startswith(LOCKED_OUT)
    finally:
        for thread in attackers:
            thread.join(60)
    assert len(replies) == 50
    guessed = [reply for reply in replies if not reply.startswith(LOCKED_OUT)]
    assert 5 <= len(guessed) < 10, "the budget of 5 held (give or take the connections in flight)"
    assert attempt_from(proxy, OWNER_HOME, user, USERS["alice"]).startswith(b"+OK")
    assert attempt_from(proxy, ATTACKER, user, USERS["alice"]).startswith(LOCKED_OUT), (
        "the owner's logins do not clear the budget the attacker spent"
    )


def test_an_ipv6_client_is_its_64(make_proxy, fresh_mailbox):
    """Each of a /64's addresses is the same client: one budget, not 2**64."""
    fresh_mailbox("bob")
    proxy = lb_proxy(
        make_proxy,
        {"block_after_per_address": 3, "block_after_names_per_address": 0, "delay_after": 100},
    )
    for host, name in zip((1, 2, 3), ("ghost1", "ghost2", "ghost3"), strict=True):
        reply = attempt_from(proxy, f"2001:db8:1:2::{host}", f"{name}@{TENANT}", WRONG_PASSWORD)
        assert reply.startswith(b"-ERR [AUTH]")
    user = f"bob@{TENANT}"
    assert attempt_from(proxy, "2001:db8:1:2:ffff::1", user, USERS["bob"]).startswith(LOCKED_OUT)
    assert attempt_from(proxy, "2001:db8:1:3::1", user, USERS["bob"]).startswith(b"+OK")


def test_a_guesser_rotating_its_64s_meets_the_56(make_proxy, fresh_mailbox):
    fresh_mailbox("bob")
    proxy = lb_proxy(
        make_proxy,
        {
            "block_after_names_per_address": 0,
            "delay_after": 100,
            "ipv6_networks": [{"prefix": 56, "block_after": 3}],
        },
    )
    for subnet in range(3):
        client = f"2001:db8:1:{subnet}::1"
        assert attempt_from(proxy, client, f"ghost@{TENANT}", WRONG_PASSWORD).startswith(b"-ERR")
    user = f"bob@{TENANT}"
    assert attempt_from(proxy, "2001:db8:1:ff::1", user, USERS["bob"]).startswith(LOCKED_OUT)
    assert attempt_from(proxy, "2001:db8:1:100::1", user, USERS["bob"]).startswith(b"+OK")


def test_a_password_spray_blocks_its_address(make_proxy, fresh_mailbox):
    """A few guesses at each of many users: no user budget is spent, but the
    address is blocked once enough distinct names failed from it."""
    fresh_mailbox("bob")
    proxy = lb_proxy(make_proxy, {"block_after_names_per_address": 3, "delay_after": 100})
    sprayer = "198.51.100.40"
    for name in ("carol", "dave", "erin"):
        assert attempt_from(proxy, sprayer, f"{name}@{TENANT}", WRONG_PASSWORD).startswith(
            b"-ERR [AUTH]"
        )
    user = f"bob@{TENANT}"
    assert attempt_from(proxy, sprayer, user, USERS["bob"]).startswith(LOCKED_OUT)
    assert attempt_from(proxy, "198.51.100.41", user, USERS["bob"]).startswith(b"+OK")
    scraped = proxy.metrics()
    assert 'pop3proxy_limit_rejections_total{scope="failures_names"} 1.0' in scraped
