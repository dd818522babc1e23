"""``pop3proxy route`` against real logins: it names the backend a login
lands on, for every policy, with states, pins, budgets and slots."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from _migration import MOVING, message, set_up_move, uidls
from harness.proxy import ProxyProcess, run_cli
from harness.redis import RedisServer
from harness.users import USERS
from harness.wire import Pop3Wire
from test_backend_states import set_state
from test_routing import POOL, address, login_via, store

from pop3proxy.backends import EVACUATE_DEADLINE
from pop3proxy.logs import utc_text


def route(proxy: ProxyProcess, user: str, *extra: str) -> dict[str, Any]:
    result = run_cli(proxy.config_path, "route", user, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def first_try(explained: dict[str, Any]) -> str:
    return next(row["backend"] for row in explained["backends"] if row["try"] == 1)


@pytest.mark.parametrize("policy", ["failover", "hash"])
def test_route_names_the_backend_a_login_lands_on(make_dovecot, make_proxy, policy):
    first, second = make_dovecot(), make_dovecot()
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, address(first), address(second), policy=policy)
    proxy.start()
    for user in sorted(USERS):
        explained = route(proxy, f"{user}@{POOL}")
        assert explained["tenant"] == POOL and explained["tenant_from"] == "name"
        assert explained["identity"] == f"{user}@{POOL}" and explained["policy"] == policy
        assert first_try(explained) == login_via(proxy, user)
        assert {row["breaker"] for row in explained["backends"]} == {
            "not known from the CLI (each replica keeps its own)"
        }


def test_route_follows_states_and_rotation(make_dovecot, make_proxy):
    first, second = make_dovecot(), make_dovecot()
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, address(first), address(second), policy="round_robin")
    proxy.start()
    explained = route(proxy, f"alice@{POOL}")
    assert [row["try"] for row in explained["backends"]] == [1, 2]
    assert "round_robin" in explained["note"]
    landed = {login_via(proxy) for _ in range(2)}
    assert landed == {row["backend"] for row in explained["backends"]}, "it rotates over these"
    set_state(proxy, address(first), "evacuate")
    explained = route(proxy, f"alice@{POOL}")
    rows = {row["backend"]: row for row in explained["backends"]}
    assert rows[address(first)] == {
        **rows[address(first)],
        "state": "evacuate",
        "try": None,
    }
    assert rows[address(second)]["try"] == 1
    deadline = rows[address(first)]["deadline"]
    assert time.time() < deadline <= time.time() + EVACUATE_DEADLINE, "the default deadline"
    assert rows[address(second)]["deadline"] is None
    text = run_cli(proxy.config_path, "route", f"alice@{POOL}").stdout
    assert f"1.  {address(second)}  state=online  breaker" in text
    assert f"-   {address(first)}  state=evacuate (ends {utc_text(deadline)})" in text
    assert "breaker: not known from the CLI" in text
    assert {login_via(proxy) for _ in range(2)} == {address(second)}


def test_route_shows_pin_budgets_and_slots(make_dovecot, make_proxy):
    first, second = make_dovecot(), make_dovecot()
    proxy = make_proxy(
        {"tenancy": {"default_tenant": "other.example", "sni_tenant": True}, "auth": {"allow": []}},
        start=False,
        tenants=False,
    )
    store(proxy, address(first), address(second))
    result = run_cli(proxy.config_path, "user", "pin", f"bob@{POOL}", "--backend", address(second))
    assert result.returncode == 0, result.stderr
    proxy.start()
    wrong = run_cli(proxy.config_path, "route", "bob", "--from", "nonsense")
    assert wrong.returncode == 2 and "--from: expected an IP address" in wrong.stderr
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.command(f"USER bob@{POOL}")
        assert wire.command("PASS wrong").startswith(b"-ERR")
    by_default = run_cli(proxy.config_path, "route", "bob", "--json")
    assert by_default.returncode == 1, "other.example is no tenant: the login would fail"
    assert json.loads(by_default.stdout)["tenant_from"] == "default_tenant"
    explained = route(proxy, "bob", "--from", "127.0.0.1", "--sni", POOL)
    assert explained["tenant"] == POOL and explained["tenant_from"] == "sni"
    assert explained["pin"] == address(second) and first_try(explained) == address(second)
    assert explained["limits"]["failures"] == {"user": 1, "address": 1, "names_from_address": 1}
    assert explained["limits"]["address_allowed"] is False
    assert explained["limits"]["sessions"]["tenant"]["in_use"] == 0
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as holding:
        holding.login(f"bob@{POOL}", USERS["bob"])
        explained = route(proxy, f"bob@{POOL}", "--from", "127.0.0.1")
        assert explained["limits"]["sessions"]["tenant"]["in_use"] == 1
        assert explained["limits"]["failures"]["user"] == 0, "a login resets the user's budget"
    unknown = run_cli(proxy.config_path, "route", "bob@nowhere.example")
    assert unknown.returncode == 1 and "unknown_tenant" in unknown.stdout


def test_route_shows_the_uidl_map_and_whether_a_login_is_translated(
    make_dovecot, make_proxy, redis_server: RedisServer, tmp_path: Path
):
    move = set_up_move(make_dovecot, make_proxy, redis_server, tmp_path)
    move.deliver("alice", [message(1), message(2)], [message(1), message(2)])
    assert route(move.proxy, f"alice@{MOVING}")["uidl_map"] is None
    code, _, err = move.cli(
        "map", f"alice@{MOVING}", "--to", move.to, "--credentials", str(move.credentials)
    )
    assert code == 0, err
    before = route(move.proxy, f"alice@{MOVING}")
    assert before["uidl_map"] == {
        **before["uidl_map"],
        "backend": move.to,
        "entries": 2,
        "translated_on_first_try": False,  # failover: the old backend comes first
    }
    assert time.time() < before["uidl_map"]["expires"]
    assert route(move.proxy, f"bob@{MOVING}")["uidl_map"] is None, "only alice has a map"

    code, _, err = move.cli("cutover", f"alice@{MOVING}", "--to", move.to)
    assert code == 0, err
    after = route(move.proxy, f"alice@{MOVING}")
    assert first_try(after) == move.to
    assert after["uidl_map"]["translated_on_first_try"] is True
    text = run_cli(move.proxy.config_path, "route", f"alice@{MOVING}").stdout
    assert f"uidl map:  2 UIDLs for {move.to} (until " in text
    assert "translated on the first backend tried: yes" in text
    with Pop3Wire(move.proxy.host, move.proxy.ports["plain"]) as wire:  # as route says
        wire.login(f"alice@{MOVING}", USERS["alice"])
        assert wire.command("UIDL").startswith(b"+OK")
        listed = [line.split()[1] for line in wire.read_multiline().splitlines()[:-1]]
    assert listed == uidls(move.old, "alice")
