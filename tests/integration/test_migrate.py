"""``pop3proxy migrate``: a mailbox moves between two real Dovecots whose
``pop3_uidl_format`` differ, so the same messages get different UIDLs."""

from __future__ import annotations

import json
import time

import pytest
from _migration import MOVING, NEW_UIDL_FORMAT, Move, message, set_up_move, uidls
from harness.ports import wait_until
from harness.proxy import run_cli
from harness.redis import RedisServer
from harness.users import MASTER_USERS, USERS
from harness.wire import Pop3Wire

from pop3proxy.delays import read_delays
from pop3proxy.directory import RedisStore
from pop3proxy.migration import (
    MapInfo,
    UidlMaps,
    UidlMapUnavailable,
    map_key,
    read_index,
    read_map,
    store_map,
)
from pop3proxy.redisconn import RedisHealth
from pop3proxy.tenants import parse_tenant


@pytest.fixture
def move(make_dovecot, make_proxy, redis_server, tmp_path) -> Move:
    return set_up_move(make_dovecot, make_proxy, redis_server, tmp_path)


def test_map_reports_matched_unmatched_ambiguous_and_stores_new_to_old(move: Move):
    common = [message(1), message(2), message(3), message(9, "twice"), message(9, "twice")]
    move.deliver("alice", [*common, message(4, "only old")], [*common, message(5, "only new")])
    code, out, err = move.cli(
        "map", f"alice@{MOVING}", "--to", move.to, "--credentials", str(move.credentials), "--json"
    )
    assert code == 0, err
    (report,) = json.loads(out)["users"]
    assert report["old_backend"] == f"{move.old.host}:{move.old.port}"
    assert report["new_backend"] == move.to
    assert {key: report[key] for key in ("old", "new", "matched", "ambiguous")} == {
        "old": 6,
        "new": 6,
        "matched": 3,
        "ambiguous": 2,
    }
    assert (report["unmatched_old"], report["unmatched_new"]) == (1, 1)
    assert report["order_preserved"] and report["stored"]

    old_uidls, new_uidls = uidls(move.old, "alice"), uidls(move.new, "alice")
    assert not set(old_uidls) & set(new_uidls)  # the formats really differ
    stored = read_map(move.store.client, move.store.prefix, f"alice@{MOVING}")
    assert stored == dict(zip(new_uidls[:5], old_uidls[:5], strict=True))
    info = read_index(move.store.client, move.store.prefix)[f"alice@{MOVING}"]
    assert (info.backend, info.entries) == (move.to, 5)
    audit = json.loads(err.strip().splitlines()[-1])
    assert (audit["action"], audit["count"], audit["user"]) == ("migrate_map", 1, f"alice@{MOVING}")


def test_dry_run_reports_and_stores_nothing(move: Move):
    long_header = message(2).replace(b"\n\n", b"\nX-Long: " + b"x" * 3000 + b"\n\n", 1)
    mail = [message(1), long_header]  # a header line longer than poplib's own limit
    move.deliver("bob", mail, mail)
    code, out, err = move.cli(
        "map", f"bob@{MOVING}", "--to", move.to, "--credentials", str(move.credentials), "--dry-run"
    )
    assert code == 0, err
    assert "matched 2" in out and "not stored (dry run)" in out
    assert read_index(move.store.client, move.store.prefix) == {}
    assert not move.store.client.exists(map_key(move.store.prefix, f"bob@{MOVING}"))


def test_a_tenant_is_mapped_cut_over_rolled_back_and_forgotten_user_by_user(move: Move):
    for user in ("alice", "bob"):
        move.deliver(user, [message(1), message(2)], [message(1), message(2), message(3)])
    credentials = move.credentials.with_name("two.yaml")
    credentials.write_text(
        "\n".join(f"{user}@{MOVING}: {USERS[user]}" for user in ("alice", "bob")) + "\n"
    )
    code, out, err = move.cli(
        "map", "--tenant", MOVING, "--to", move.to, "--credentials", str(credentials), "--json"
    )
    assert code == 0, err
    document = json.loads(out)
    assert [report["user"] for report in document["users"]] == [
        f"alice@{MOVING}",
        f"bob@{MOVING}",
    ]
    assert document["totals"]["matched"] == 4
    assert document["totals"]["unmatched_new"] == 2
    assert set(read_index(move.store.client, move.store.prefix)) == {
        f"alice@{MOVING}",
        f"bob@{MOVING}",
    }
    wait_until(
        lambda: "pop3proxy_uidl_maps 2.0" in move.proxy.metrics(),
        10,
        message="the proxy counts two users with a map",
    )

    code, out, err = move.cli("cutover", "--tenant", MOVING, "--to", move.to)
    assert code == 0, err
    assert out.strip() == f"2 user(s) pinned to {move.to}, 0 session(s) ended"
    for user in ("alice", "bob"):
        record = move.store.get_user(MOVING, user)
        assert record is not None and record.backend == move.to
    code, out, err = move.cli("rollback", "--tenant", MOVING)
    assert code == 0, err
    assert all(move.store.get_user(MOVING, user) is None for user in ("alice", "bob"))
    code, out, err = move.cli("forget", "--tenant", MOVING)
    assert code == 0, err
    assert out.strip() == "2 map(s) removed"
    assert read_index(move.store.client, move.store.prefix) == {}


def test_a_user_missing_from_the_credentials_file_fails_with_a_reason_and_exit_1(move: Move):
    move.credentials.write_text("{}")
    code, out, _ = move.cli(
        "map", f"carol@{MOVING}", "--to", move.to, "--credentials", str(move.credentials)
    )
    assert code == 1
    assert "FAILED" in out and "no password" in out
    assert USERS["carol"] not in out


def test_to_must_be_a_backend_of_the_tenant(move: Move):
    code, _, err = move.cli("map", f"alice@{MOVING}", "--to", "127.0.0.1:1")
    assert code == 2
    assert "not a backend of tenant move.example" in err


def test_verify_is_clean_after_a_full_match_and_fails_on_new_mail(move: Move):
    mail = [message(1), message(2), message(3)]
    move.deliver("carol", mail, mail)
    credentials = ("--credentials", str(move.credentials))
    code, _, err = move.cli("map", f"carol@{MOVING}", "--to", move.to, *credentials)
    assert code == 0, err
    code, out, err = move.cli("verify", f"carol@{MOVING}", *credentials)
    assert code == 0, out + err
    assert out.strip().endswith("same")

    move.new.deliver("carol", [message(7, "arrived on the new server")])
    code, out, _ = move.cli("verify", f"carol@{MOVING}", *credentials, "--json")
    assert code == 1
    result = json.loads(out)
    assert result["missing"] == [] and len(result["extra"]) == 1
    assert not result["same"]


def test_maps_reach_a_replica_without_a_round_trip_per_login(move: Move):
    """The index is read in the background: a user without a map costs nothing;
    a map applies only on the backend it was made for; forget removes it."""
    mail = [message(1), message(2)]
    move.deliver("dave", mail, mail)
    credentials = ("--credentials", str(move.credentials))
    assert move.cli("map", f"dave@{MOVING}", "--to", move.to, *credentials)[0] == 0
    maps = UidlMaps(move.store.client, move.store.prefix)
    maps.update()
    translated = maps.for_login(f"dave@{MOVING}", move.to)
    assert translated is not None
    assert sorted(translated.values()) == sorted(uidls(move.old, "dave"))
    assert maps.for_login(f"dave@{MOVING}", f"{move.old.host}:{move.old.port}") is None
    assert maps.for_login(f"erin@{MOVING}", move.to) is None

    code, out, err = move.cli("forget", f"dave@{MOVING}")
    assert code == 0, err
    assert out.strip() == "1 map(s) removed"
    maps.update()
    assert maps.for_login(f"dave@{MOVING}", move.to) is None
    assert move.cli("forget", f"dave@{MOVING}")[0] == 1


def test_cutover_pins_kicks_without_deleting_and_rollback_returns(move: Move):
    """A session in TRANSACTION during the cutover (it marked a message
    deleted) is cut without QUIT: nothing is lost, nothing deleted."""
    mail = [message(1), message(2), message(3)]
    move.deliver("erin", mail, mail)
    user = f"erin@{MOVING}"
    assert move.cli("map", user, "--to", move.to, "--credentials", str(move.credentials))[0] == 0
    proxy = move.proxy
    old_mark, new_mark = move.old.log_mark(), move.new.log_mark()
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as session:
        session.login(user, USERS["erin"])
        move.old.wait_for_log(r"Login: user=<erin>", since=old_mark)
        assert session.command("DELE 1").startswith(b"+OK")
        code, out, err = move.cli("cutover", user, "--to", move.to)
        assert code == 0, err
        assert out.strip() == f"1 user(s) pinned to {move.to}, 1 session(s) ended"
        session.sock.settimeout(5)
        assert session.read_line() == b""  # cut: the proxy closed the session
    move.old.wait_for_log(r"pop3\(erin\).*Disconnected.*del=0/3", since=old_mark)
    assert move.old.message_count("erin") == 3
    record = move.store.get_user(MOVING, "erin")
    assert record is not None and record.backend == move.to
    assert read_index(move.store.client, move.store.prefix)[user].cutover is not None

    with Pop3Wire(proxy.host, proxy.ports["plain"]) as session:
        session.login(user, USERS["erin"])
        assert session.command("STAT").startswith(b"+OK 3 ")
        assert session.command("UIDL").startswith(b"+OK")
        listed = [line.split()[1] for line in session.read_multiline().splitlines()[:-1]]
    move.new.wait_for_log(r"Login: user=<erin>", since=new_mark)
    assert listed == uidls(move.old, "erin")  # the old backend's UIDLs, through the new one
    wait_until(
        lambda: f'pop3proxy_uidl_translated_total{{tenant="{MOVING}"}} 3.0' in proxy.metrics(),
        10,
        message="the three translated UIDLs are counted",
    )

    code, out, err = move.cli("rollback", user)
    assert code == 0, err
    assert out.strip().startswith("1 user(s) back on their previous route")
    record = move.store.get_user(MOVING, "erin")
    assert record is None or record.backend is None
    old_mark = move.old.log_mark()
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as session:
        session.login(user, USERS["erin"])
    move.old.wait_for_log(r"Login: user=<erin>", since=old_mark)


def test_cutover_refuses_a_user_without_a_map(move: Move):
    code, _, err = move.cli("cutover", f"alice@{MOVING}", "--to", move.to)
    assert code == 1
    assert "run pop3proxy migrate map first" in err
    assert move.store.get_user(MOVING, "alice") is None


def test_cutover_lifts_the_wait_it_set(move: Move):
    mail = [message(1)]
    move.deliver("bob", mail, mail)
    user = f"bob@{MOVING}"
    assert move.cli("map", user, "--to", move.to, "--credentials", str(move.credentials))[0] == 0
    assert move.cli("cutover", user, "--to", move.to)[0] == 0
    wait_until(
        lambda: read_delays(move.store.client, move.store.prefix) == {},
        5,
        message="the cutover's delay is lifted",
    )


MASTER_ENV = "POP3PROXY_TEST_MIGRATE_MASTER"


def test_a_tenant_with_master_credentials_is_read_without_a_credentials_file(
    make_dovecot, make_proxy, redis_server, monkeypatch
):
    """``auth: local``: the users are the tenant's user records, and both
    mailboxes are read as ``user*proxymaster``."""
    monkeypatch.setenv(MASTER_ENV, MASTER_USERS["proxymaster"])
    old = make_dovecot(master_users=MASTER_USERS)
    new = make_dovecot(master_users=MASTER_USERS, uidl_format=NEW_UIDL_FORMAT)
    proxy = make_proxy({"auth": {"argon2_time_cost": 1, "argon2_memory_cost": 1024}})
    store = RedisStore(redis_server.client(), proxy.config["directory"]["key_prefix"])
    record = {
        "name": "local-move.example",
        "backends": [{"host": server.host, "port": server.port} for server in (old, new)],
        "auth": "local",
        "master_user": "proxymaster",
        "master_password_env": MASTER_ENV,
    }
    store.put(parse_tenant(record))
    result = run_cli(
        proxy.config_path, "user", "set-password", "alice@local-move.example", stdin="pw\n"
    )
    assert result.returncode == 0, result.stderr
    mail = [message(1), message(2), message(3)]
    old.reset_mailbox("alice", mail)
    new.reset_mailbox("alice", mail)
    result = run_cli(
        proxy.config_path,
        "migrate", "map", "--tenant", "local-move.example",
        "--to", f"{new.host}:{new.port}", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = json.loads(result.stdout)["users"]
    assert (report["user"], report["matched"], report["stored"]) == (
        "alice@local-move.example",
        3,
        True,
    )
    assert MASTER_USERS["proxymaster"] not in result.stdout + result.stderr


def test_a_map_that_cannot_be_read_fails_the_login_instead_of_showing_new_uidls():
    """With Redis stopped, a user whose map this replica has in memory keeps
    it; for one whose map it never read, the replica raises
    :class:`UidlMapUnavailable` (the login answers ``-ERR [SYS/TEMP]`` and the
    client retries) rather than show new UIDLs that make it download everything."""
    with RedisServer() as server:
        client = server.client()
        now = time.time()
        for user in ("read@move.example", "unread@move.example"):
            info = MapInfo("10.0.0.2:110", now + 3600, 1, now)
            store_map(client, "m", user, {b"new-1": b"old-1"}, info)
        maps = UidlMaps(client, "m", RedisHealth("test redis"))
        maps.update()
        assert maps.for_login("read@move.example", "10.0.0.2:110") == {b"new-1": b"old-1"}
        server.stop()
        assert maps.for_login("read@move.example", "10.0.0.2:110") == {b"new-1": b"old-1"}
        with pytest.raises(UidlMapUnavailable):
            maps.for_login("unread@move.example", "10.0.0.2:110")
        maps.update()  # fails: the index last read stays in force
        assert maps.for_login("someone@move.example", "10.0.0.2:110") is None
        with pytest.raises(UidlMapUnavailable):
            maps.for_login("unread@move.example", "10.0.0.2:110")
