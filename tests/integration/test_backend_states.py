"""Backend states set with ``pop3proxy backend set``: every replica follows
them from Redis; evacuate and offline take no new logins, standby only
takes them when no online backend can."""

from __future__ import annotations

import json
import re

from harness.dovecot import Dovecot
from harness.ports import wait_until
from harness.proxy import ProxyProcess, run_cli
from harness.users import USERS
from harness.wire import Pop3Wire
from test_routing import POOL, address, login, login_via, metric, store

from pop3proxy.backends import EVACUATE_QUIET


def set_state(proxy: ProxyProcess, backend: str, state: str) -> None:
    """``backend set`` from the CLI, then wait until the proxy applied it."""
    result = run_cli(proxy.config_path, "backend", "set", backend, "--state", state)
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stderr.strip().splitlines()[-1])
    assert (line["action"], line["backend"], line["state"]) == ("backend_set", backend, state)
    wait_until(
        lambda: metric(proxy, "pop3proxy_backend_state", backend=backend, state=state) == 1,
        5,
        message=f"the proxy applies {backend} {state}",
    )


def listed(proxy: ProxyProcess) -> dict[str, str]:
    result = run_cli(proxy.config_path, "backend", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {row["backend"]: row["state"] for row in json.loads(result.stdout)}


def pool(make_dovecot, make_proxy) -> tuple[ProxyProcess, Dovecot, Dovecot]:
    first, second = make_dovecot(), make_dovecot()
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, address(first), address(second))
    proxy.start()
    return proxy, first, second


def test_evacuate_sends_new_logins_elsewhere_and_ends_the_idle_session(make_dovecot, make_proxy):
    """Two replicas, RETR in flight, deadline: tests/integration/test_evacuate.py."""
    proxy, first, second = pool(make_dovecot, make_proxy)
    first.reset_mailbox("alice", [b"Subject: stays\r\n\r\nbody\r\n"])
    assert login_via(proxy) == address(first)
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as running:
        running.login(f"alice@{POOL}", USERS["alice"])
        set_state(proxy, address(first), "evacuate")
        assert listed(proxy) == {address(first): "evacuate"}
        table = run_cli(proxy.config_path, "backend", "list").stdout
        assert re.search(rf"{re.escape(address(first))}\s+evacuate\s+\d{{4}}-", table), table
        assert metric(proxy, "pop3proxy_backend_state", backend=address(first), state="online") == 0
        assert login_via(proxy) == address(second), "no new login on an evacuated backend"
        running.sock.settimeout(EVACUATE_QUIET + 4)
        assert running.read_line() == b"", "the idle session is ended, without a word"
    assert first.message_count("alice") == 1
    set_state(proxy, address(first), "online")
    assert listed(proxy) == {}
    assert login_via(proxy) == address(first)
    changes = [r for r in proxy.log_records() if r.get("message") == "backend state applied"]
    assert [(r["backend"], r["state"]) for r in changes] == [
        (address(first), "evacuate"),
        (address(first), "online"),
    ]
    assert metric(proxy, "pop3proxy_backend_state_changes_total", state="evacuate") == 1


def test_standby_takes_logins_only_when_the_online_backend_is_down(make_dovecot, make_proxy):
    proxy, first, second = pool(make_dovecot, make_proxy)
    set_state(proxy, address(first), "standby")
    assert login_via(proxy) == address(second), "the online backend comes before the standby"
    assert login_via(proxy) == address(second)
    second.stop()
    assert login_via(proxy) == address(first), "the standby takes over when nothing else can"


def test_offline_is_never_used(make_dovecot, make_proxy):
    proxy, first, second = pool(make_dovecot, make_proxy)
    set_state(proxy, address(first), "offline")
    assert login_via(proxy) == address(second)
    second.stop()
    assert login(proxy).startswith(b"-ERR [SYS/TEMP]"), "an offline backend is never tried"
    assert listed(proxy) == {address(first): "offline"}


def test_backend_set_refuses_bad_input(make_proxy):
    proxy = make_proxy()
    result = run_cli(proxy.config_path, "backend", "set", "nohost", "--state", "offline")
    assert result.returncode == 2 and "expected HOST:PORT" in result.stderr
    result = run_cli(proxy.config_path, "backend", "set", "h:110", "--state", "down")
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert listed(proxy) == {}
