"""``pop3proxy user history``: a user's last logins, kept in the real Redis."""

from __future__ import annotations

import base64
import json
from typing import Any

from harness.certs import Certs
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess, attempt_login, run_cli
from harness.users import USERS, WRONG_PASSWORD
from harness.wire import Pop3Wire

ALICE = f"alice@{TENANT}"


def history(proxy: ProxyProcess, user: str = ALICE) -> list[dict[str, Any]]:
    done = run_cli(proxy.config_path, "user", "history", user, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["user"] == ALICE
    return answer["logins"]


def history_of(proxy: ProxyProcess, count: int) -> list[dict[str, Any]]:
    """Waits for ``count`` entries: they are written after the login, off its path."""

    def enough() -> list[dict[str, Any]] | None:
        found = history(proxy)
        return found if len(found) >= count else None

    return wait_until(enough, 10)


def auth_plain(proxy: ProxyProcess, certs: Certs, user: str, password: str) -> None:
    with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=certs.ssl_client_context()) as wire:
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        assert wire.command(f"AUTH PLAIN {token}").startswith(b"+OK")
        wire.command("QUIT")


def test_the_last_logins_show_newest_first_with_their_fields(make_proxy, fresh_mailbox, certs):
    fresh_mailbox("alice")
    proxy = make_proxy()
    assert attempt_login(proxy, f"ALICE@{TENANT}", USERS["alice"]).startswith(b"+OK")
    assert attempt_login(proxy, ALICE, WRONG_PASSWORD).startswith(b"-ERR")
    auth_plain(proxy, certs, ALICE, USERS["alice"])
    newest, failed, oldest = history_of(proxy, 3)

    assert (newest["mechanism"], newest["listener"], newest["result"]) == ("PLAIN", "pop3s", "ok")
    assert (failed["mechanism"], failed["listener"]) == ("USER", "plain")
    assert failed["result"] == "bad_credentials" and failed["backend"] is None
    assert (oldest["mechanism"], oldest["listener"], oldest["result"]) == ("USER", "plain", "ok")
    for entry in (newest, oldest):
        assert entry["client"] == "127.0.0.1"
        assert entry["backend"] and entry["backend"].endswith(f":{proxy_backend_port(proxy)}")
    assert newest["time"] >= failed["time"] >= oldest["time"]

    table = run_cli(proxy.config_path, "user", "history", ALICE)
    assert table.returncode == 0 and table.stdout.count("\n") == 4, table.stdout


def test_the_history_is_capped(make_proxy, fresh_mailbox):
    fresh_mailbox("alice")
    proxy = make_proxy({"limits": {"login_history": 2}})
    for _ in range(4):
        assert attempt_login(proxy, ALICE, WRONG_PASSWORD).startswith(b"-ERR")
    assert attempt_login(proxy, ALICE, USERS["alice"]).startswith(b"+OK")

    def with_the_good_login() -> list[dict[str, Any]] | None:
        found = history(proxy)
        return found if found and found[0]["result"] == "ok" else None

    entries = wait_until(with_the_good_login, 10)
    assert [e["result"] for e in entries] == ["ok", "bad_credentials"]


def proxy_backend_port(proxy: ProxyProcess) -> int:
    """The port of the shared Dovecot the tenant's backend points to."""
    summary = wait_until(lambda: next((s for s in proxy.sessions() if s.get("backend")), None), 10)
    return int(summary["backend"].rpartition(":")[2])
