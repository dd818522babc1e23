"""try_order: the routing order with the operator's backend states applied."""

from __future__ import annotations

from pop3proxy.backends import try_order
from pop3proxy.routing import Rotation
from pop3proxy.tenants import parse_tenant

TENANT = parse_tenant(
    {
        "name": "pool.example",
        "backends": [
            {"host": "a", "port": 110},
            {"host": "b", "port": 110},
            {"host": "c", "port": 110},
        ],
    }
)


def order(states: dict[str, str], pinned: str | None = None) -> list[str]:
    picked = try_order(
        TENANT, "alice@pool.example", Rotation(), pinned, lambda a: states.get(a, "online")
    )
    return [backend.address for backend in picked]


def test_standby_comes_after_every_online_backend():
    assert order({"a:110": "standby"}) == ["b:110", "c:110", "a:110"]


def test_evacuate_and_offline_are_left_out():
    assert order({"a:110": "evacuate", "c:110": "offline"}) == ["b:110"]
    assert order({address: "offline" for address in ("a:110", "b:110", "c:110")}) == []


def test_a_pin_on_a_backend_that_takes_no_logins_is_passed_over():
    assert order({}, pinned="c:110") == ["c:110", "a:110", "b:110"]
    assert order({"c:110": "evacuate"}, pinned="c:110") == ["a:110", "b:110"]
    assert order({"c:110": "standby"}, pinned="c:110") == ["a:110", "b:110", "c:110"]
