"""``pop3proxy who`` and ``pop3proxy kick`` across two proxy processes sharing one Redis."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess, run_cli
from harness.users import USERS
from harness.wire import Pop3Wire

from pop3proxy.directory import RedisStore
from pop3proxy.sessions import SessionRegistry, live_sessions
from pop3proxy.tenants import parse_tenant

KICK_WITHIN = 2.0


@pytest.fixture
def replicas(make_proxy) -> tuple[ProxyProcess, ProxyProcess]:
    """Two proxies, one Redis and one key prefix: two replicas of one deployment."""
    shared = {"directory": {"key_prefix": f"kick-{uuid.uuid4().hex[:8]}"}}
    return make_proxy(shared), make_proxy(shared)


def who(proxy: ProxyProcess, *args: str) -> list[dict[str, Any]]:
    result = run_cli(proxy.config_path, "who", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def users_listed(proxy: ProxyProcess, *args: str) -> set[str]:
    return {entry["user"] for entry in who(proxy, *args)}


def closed_within(wire: Pop3Wire, seconds: float) -> bool:
    """The proxy closed the connection (EOF) within ``seconds``, with nothing said."""
    wire.sock.settimeout(seconds)
    try:
        return wire.read_line() == b""
    except TimeoutError:
        return False


def test_who_lists_both_replicas_and_kick_user_ends_the_other_ones_session_without_deleting(
    replicas, fresh_mailbox, dovecot
):
    first, second = replicas
    messages = fresh_mailbox("carol")
    fresh_mailbox("dave")
    mark = dovecot.log_mark()
    with (
        Pop3Wire(first.host, first.ports["plain"]) as carol,
        Pop3Wire(second.host, second.ports["plain"]) as dave,
    ):
        carol.login(f"carol@{TENANT}", USERS["carol"])
        dave.login(f"DAVE@{TENANT}", USERS["dave"])
        wanted = {f"carol@{TENANT}", f"dave@{TENANT}"}
        wait_until(lambda: users_listed(first) == wanted, 10, message="who lists both sessions")
        entries = {entry["user"]: entry for entry in who(second)}
        assert entries[f"carol@{TENANT}"]["replica"] != entries[f"dave@{TENANT}"]["replica"]
        for entry in entries.values():
            assert entry["tenant"] == TENANT
            assert entry["backend"] == f"{dovecot.host}:{dovecot.port}"
            assert entry["listener"] == "plain"
            assert entry["client"] == "127.0.0.1"
            assert entry["phase"] == "relay"
            assert abs(entry["started"] - time.time()) < 60
        assert users_listed(first, "--user", f"Carol@{TENANT}") == {f"carol@{TENANT}"}

        assert carol.command("DELE 1").startswith(b"+OK")
        kicked = run_cli(second.config_path, "kick", "--user", f"carol@{TENANT}", "--reason", "x")
        assert kicked.returncode == 0, kicked.stderr
        assert kicked.stdout.strip() == "1 session(s) ended"
        assert closed_within(carol, KICK_WITHIN)
        assert dave.command("NOOP").startswith(b"+OK")  # another user: untouched
        wait_until(lambda: users_listed(first) == {f"dave@{TENANT}"}, 5, message="carol unlisted")
        dovecot.wait_for_log(r"pop3\(carol\).*Disconnected: Connection closed.*del=0/", since=mark)
    assert dovecot.message_count("carol") == len(messages)
    kicks = [r for r in first.log_records() if r.get("message") == "kick"]
    assert [(r["scope"], r["sessions"]) for r in kicks] == [("user", 1)]
    assert [r["end"] for r in first.sessions() if r.get("user") == f"carol@{TENANT}"] == ["kicked"]
    assert [r["sessions"] for r in second.log_records() if r.get("message") == "kick"] == [0]
    wait_until(
        lambda: 'pop3proxy_kicks_total{scope="user"} 1.0' in first.metrics(), 10, interval=0.5
    )


def test_kick_backend_ends_only_the_sessions_on_that_backend(
    replicas, make_dovecot, dovecot, fresh_mailbox, redis_server
):
    first, second = replicas
    other = make_dovecot()
    for user in ("erin", "alice"):
        other.reset_mailbox(user, [b"Subject: x\r\n\r\nhello\r\n"])
    fresh_mailbox("bob")
    fresh_mailbox("carol")
    store = RedisStore(redis_server.client(), first.config["directory"]["key_prefix"])
    store.put(
        parse_tenant(
            {"name": "other.example", "backends": [{"host": other.host, "port": other.port}]}
        )
    )
    store.client.close()
    other_backend = f"{other.host}:{other.port}"
    mark = other.log_mark()
    with (
        Pop3Wire(first.host, first.ports["plain"]) as bob,
        Pop3Wire(second.host, second.ports["plain"]) as carol,
        Pop3Wire(first.host, first.ports["plain"]) as alice,
        Pop3Wire(second.host, second.ports["plain"]) as erin,
    ):
        bob.login(f"bob@{TENANT}", USERS["bob"])
        carol.login(f"carol@{TENANT}", USERS["carol"])
        alice.login("alice@other.example", USERS["alice"])
        erin.login("erin@other.example", USERS["erin"])
        on_other = {"alice@other.example", "erin@other.example"}
        wait_until(
            lambda: users_listed(first, "--backend", other_backend) == on_other,
            10,
            message="who --backend lists alice and erin only",
        )
        assert alice.command("DELE 1").startswith(b"+OK")  # never committed: no QUIT follows
        kicked = run_cli(first.config_path, "kick", "--backend", other_backend)
        assert kicked.returncode == 0, kicked.stderr
        assert kicked.stdout.strip() == "2 session(s) ended", "one on each replica"
        assert closed_within(alice, KICK_WITHIN) and closed_within(erin, KICK_WITHIN)
        assert bob.command("NOOP").startswith(b"+OK"), "the other backend's sessions go on"
        assert carol.command("NOOP").startswith(b"+OK")
    for user in ("alice", "erin"):
        other.wait_for_log(rf"pop3\({user}\).*Disconnected.*del=0/", since=mark)
        assert other.message_count(user) == 1
    for proxy in (first, second):
        wait_until(
            lambda proxy=proxy: (
                'pop3proxy_kicked_sessions_total{scope="backend"} 1.0' in proxy.metrics()
            ),
            10,
            interval=0.5,
            message="the ended session counted",
        )


def test_kick_in_authorization_says_sys_temp(replicas):
    first, second = replicas
    with Pop3Wire(first.host, first.ports["plain"]) as wire:
        assert wire.greeting.startswith(b"+OK")
        assert wire.command(f"USER alice@{TENANT}").startswith(b"+OK")
        kicked = run_cli(second.config_path, "kick", "--from", "127.0.0.0/8")
        assert kicked.returncode == 0, kicked.stderr
        assert kicked.stdout.strip() == "1 session(s) ended"
        assert wire.read_line().startswith(b"-ERR [SYS/TEMP]")
        assert wire.read_line() == b""


def test_kick_with_nothing_matching_exits_0(replicas):
    kicked = run_cli(replicas[0].config_path, "kick", "--tenant", "nobody.example")
    assert kicked.returncode == 0, kicked.stderr
    assert kicked.stdout.strip() == "0 session(s) ended"


def test_kick_and_who_exit_1_when_redis_cannot_be_reached(make_proxy):
    proxy = make_proxy(
        {"directory": {"redis_url": "redis://127.0.0.1:1/0"}}, start=False, tenants=False
    )
    for args in (("kick", "--user", f"alice@{TENANT}"), ("who",)):
        result = run_cli(proxy.config_path, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "Redis" in result.stderr
        assert "Traceback" not in result.stderr


def test_kick_refuses_a_bad_cidr(replicas):
    result = run_cli(replicas[0].config_path, "kick", "--from", "not-a-network")
    assert result.returncode == 2
    assert "--from" in result.stderr and "Traceback" not in result.stderr


def synthetic_entry(session: str) -> dict[str, Any]:
    return {
        "id": session,
        "user": f"{session}@{TENANT}",
        "tenant": TENANT,
        "client": "192.0.2.1",
        "listener": "pop3",
        "backend": "10.0.0.1:110",
        "phase": "relay",
        "started": time.time(),
        "bytes_in": 10,
        "bytes_out": 1000,
    }


def test_who_reads_10000_sessions_in_under_a_second(redis_server):
    prefix = f"who-{uuid.uuid4().hex[:8]}"
    client = redis_server.client()
    states = {f"s{number}": (number, 0) for number in range(5_000)}
    for replica in ("a:1", "b:2"):
        SessionRegistry(client, prefix, replica).sync(states, synthetic_entry)
    started = time.perf_counter()
    listed = live_sessions(client, prefix)
    elapsed = time.perf_counter() - started
    assert len(listed) == 10_000
    assert {entry["replica"] for entry in listed} == {"a:1", "b:2"}
    assert elapsed < 1.0, elapsed
    client.close()


def test_changing_a_local_users_password_ends_that_users_sessions(
    make_local_tenant, dovecot, fresh_mailbox
):
    proxy = make_local_tenant(dovecot)
    fresh_mailbox("alice")
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login("alice@local.example", "local-pass")
        changed = run_cli(
            proxy.config_path, "user", "set-password", "alice@local.example", stdin="new-pass\n"
        )
        assert changed.returncode == 0, changed.stderr
        assert "1 session(s) of alice@local.example ended" in changed.stdout
        assert closed_within(wire, KICK_WITHIN)
    kick = [r for r in proxy.log_records() if r.get("message") == "kick"][-1]
    assert (kick["scope"], kick["reason"], kick["sessions"]) == ("user", "password changed", 1)


def test_disabling_or_deleting_a_tenant_ends_its_sessions_on_both_replicas(
    replicas, dovecot, fresh_mailbox, redis_server
):
    first, second = replicas
    backend = f"{dovecot.host}:{dovecot.port}"
    store = RedisStore(redis_server.client(), first.config["directory"]["key_prefix"])
    store.put(
        parse_tenant(
            {"name": "other.example", "backends": [{"host": dovecot.host, "port": dovecot.port}]}
        )
    )
    store.client.close()
    kept = {user: fresh_mailbox(user) for user in ("carol", "dave", "erin")}
    mark = dovecot.log_mark()
    with (
        Pop3Wire(first.host, first.ports["plain"]) as carol,
        Pop3Wire(second.host, second.ports["plain"]) as dave,
        Pop3Wire(second.host, second.ports["plain"]) as erin,
    ):
        carol.login(f"carol@{TENANT}", USERS["carol"])
        dave.login(f"dave@{TENANT}", USERS["dave"])
        erin.login("erin@other.example", USERS["erin"])
        assert carol.command("DELE 1").startswith(b"+OK")  # never committed: no QUIT follows

        disabled = run_cli(
            first.config_path, "tenant", "set", TENANT, "--backend", backend, "--disabled"
        )
        assert disabled.returncode == 0, disabled.stderr
        assert f"2 session(s) of tenant {TENANT} ended" in disabled.stdout
        assert closed_within(carol, KICK_WITHIN) and closed_within(dave, KICK_WITHIN)
        assert erin.command("NOOP").startswith(b"+OK"), "another tenant's session goes on"

        deleted = run_cli(second.config_path, "tenant", "delete", "other.example")
        assert deleted.returncode == 0, deleted.stderr
        assert "1 session(s) of tenant other.example ended" in deleted.stdout
        assert closed_within(erin, KICK_WITHIN)
    for user in ("carol", "dave", "erin"):
        dovecot.wait_for_log(rf"pop3\({user}\).*Disconnected.*del=0/", since=mark)
        assert dovecot.message_count(user) == len(kept[user])
    kicks = [r for p in (first, second) for r in p.log_records() if r.get("message") == "kick"]
    assert sorted((r["scope"], r["reason"], r["sessions"]) for r in kicks) == [
        ("tenant", "tenant deleted", 0),
        ("tenant", "tenant deleted", 1),
        ("tenant", "tenant disabled", 1),
        ("tenant", "tenant disabled", 1),
    ]
    assert all(r["by"] for r in kicks), "each replica logs who asked"
    assert [r["end"] for r in first.sessions() if r.get("user") == f"carol@{TENANT}"] == ["kicked"]


def test_importing_a_file_that_disables_a_tenant_ends_its_sessions(
    replicas, dovecot, fresh_mailbox, tmp_path
):
    first, second = replicas
    fresh_mailbox("carol")
    tenants_file = tmp_path / "tenants.yaml"
    record = {
        "name": TENANT,
        "enabled": False,
        "backends": [{"host": dovecot.host, "port": dovecot.port}],
    }
    tenants_file.write_text(json.dumps({"tenants": [record]}))
    with Pop3Wire(second.host, second.ports["plain"]) as carol:
        carol.login(f"carol@{TENANT}", USERS["carol"])
        imported = run_cli(first.config_path, "tenant", "import", str(tenants_file))
        assert imported.returncode == 0, imported.stderr
        assert f"1 session(s) of tenant {TENANT} ended" in imported.stdout
        assert closed_within(carol, KICK_WITHIN)


def test_kick_with_workers_counts_every_worker_and_waits_for_no_supervisor(
    make_proxy, fresh_mailbox
):
    """The supervisor follows the change channel too but runs no session: the
    CLI must not wait for its answer (nor warn that a replica is silent)."""
    proxy = make_proxy({"workers": 2})
    fresh_mailbox("carol")
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as carol:
        carol.login(f"carol@{TENANT}", USERS["carol"])
        wait_until(lambda: len({e["replica"] for e in who(proxy)}) == 1, 10, message="listed")
        wait_until(
            lambda: run_cli(proxy.config_path, "kick", "--tenant", "nobody.example").stderr == "",
            10,
            message="both workers answer a kick (each lists itself within a second of starting)",
        )
        kicked = run_cli(proxy.config_path, "kick", "--user", f"carol@{TENANT}")
        assert kicked.returncode == 0, kicked.stderr
        assert kicked.stdout.strip() == "1 session(s) ended"
        assert "warning" not in kicked.stderr, kicked.stderr
        assert closed_within(carol, KICK_WITHIN)


def test_a_changed_password_ends_the_users_sessions_on_both_replicas(
    make_local_tenant, make_proxy, dovecot, fresh_mailbox
):
    first = make_local_tenant(dovecot)
    second = make_proxy(
        {"directory": first.config["directory"], "auth": first.config["auth"]}
    )  # the same Redis and key prefix: the tenant and alice's password are shared
    fresh_mailbox("alice")
    mark = dovecot.log_mark()
    with (
        Pop3Wire(first.host, first.ports["plain"]) as on_first,
        Pop3Wire(second.host, second.ports["plain"]) as on_second,
    ):
        on_first.login("alice@local.example", "local-pass")
        on_second.login("alice@local.example", "local-pass")
        changed = run_cli(
            second.config_path, "user", "set-password", "alice@local.example", stdin="new-pass\n"
        )
        assert changed.returncode == 0, changed.stderr
        assert "2 session(s) of alice@local.example ended" in changed.stdout
        assert closed_within(on_first, KICK_WITHIN) and closed_within(on_second, KICK_WITHIN)
    dovecot.wait_for_log(r"pop3\(alice\).*Disconnected.*del=0/", since=mark)
    with Pop3Wire(first.host, first.ports["plain"]) as again:
        assert again.command("USER alice@local.example").startswith(b"+OK")
        assert again.command("PASS local-pass").startswith(b"-ERR"), "the old password is gone"


def test_a_tenants_file_that_disables_a_tenant_ends_its_sessions(
    make_proxy, dovecot, fresh_mailbox, tmp_path
):
    """No Redis, no kick: each process ends them itself after reloading the file."""
    backends = [{"host": dovecot.host, "port": dovecot.port}]
    path = tmp_path / "tenants.yaml"

    def write(acme_enabled: bool) -> None:
        records = [
            {"name": TENANT, "backends": backends, "enabled": acme_enabled},
            {"name": "other.example", "backends": backends},
        ]
        path.write_text(json.dumps({"tenants": records}))

    write(acme_enabled=True)
    proxy = make_proxy({"directory": {"store": "file", "file": str(path)}})
    fresh_mailbox("carol")
    fresh_mailbox("erin")
    mark = dovecot.log_mark()
    with (
        Pop3Wire(proxy.host, proxy.ports["plain"]) as carol,
        Pop3Wire(proxy.host, proxy.ports["plain"]) as erin,
    ):
        carol.login(f"carol@{TENANT}", USERS["carol"])
        erin.login("erin@other.example", USERS["erin"])
        write(acme_enabled=False)
        assert closed_within(carol, 6), "the file is polled every second, then checked"
        assert erin.command("NOOP").startswith(b"+OK")
    dovecot.wait_for_log(r"pop3\(carol\).*Disconnected.*del=0/", since=mark)
    kicks = [r for r in proxy.log_records() if r.get("message") == "kick"]
    assert [(r["value"], r["reason"], r["sessions"], r["by"]) for r in kicks] == [
        (TENANT, "tenant disabled", 1, "tenants file")
    ]
