"""One user, one identity: however a name is typed, it is one budget, one slot,
one mailbox; and a user may have as many sessions as the backend allows.

``Alice``, ``alice``, ``alice@acme.example`` (or ``alice`` with the tenant
from the default or from SNI) are the same user of a tenant whose backends
fold case (the default). The proxy derives that identity once and uses it
for the failure budget, the session slot and the name the backend sees.
"""

from __future__ import annotations

import json
import socket
import ssl

import pytest
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess, run_cli
from harness.proxy import attempt_login as attempt
from harness.users import MASTER_USERS, USERS, WRONG_PASSWORD
from harness.wire import Pop3Wire

LOCKED_OUT = b"-ERR [LOGIN-DELAY]"


class SNIWire(Pop3Wire):
    """POP3S that sends ``server_name`` as SNI (the certificate is not checked:
    the test is about the tenant the name picks, not about the certificate)."""

    def __init__(self, proxy: ProxyProcess, server_name: str) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection((proxy.host, proxy.ports["pop3s"]), timeout=10)
        self.sock = context.wrap_socket(raw, server_hostname=server_name)
        self._stream = self.sock.makefile("rb")
        self.greeting = self.read_line()


def test_every_spelling_of_a_name_spends_one_failure_budget(make_proxy, fresh_mailbox):
    """``alice`` (default tenant), ``ALICE`` (tenant from SNI) and
    ``Alice@ACME.example`` are one user: three failures, one per spelling,
    spend a budget of three."""
    fresh_mailbox("alice")
    proxy = make_proxy(
        {
            "auth": {"allow": [], "block_after": 3, "delay_after": 100, "failure_delay": "0s"},
            "tenancy": {"default_tenant": TENANT, "sni_tenant": True},
        }
    )
    assert attempt(proxy, "alice", WRONG_PASSWORD).startswith(b"-ERR [AUTH]")
    with SNIWire(proxy, TENANT) as wire:
        wire.command("USER ALICE")
        assert wire.command(f"PASS {WRONG_PASSWORD}").startswith(b"-ERR [AUTH]")
    assert attempt(proxy, f"Alice@{TENANT.upper()}", WRONG_PASSWORD).startswith(b"-ERR [AUTH]")
    assert attempt(proxy, f"alice@{TENANT}", USERS["alice"]).startswith(LOCKED_OUT)
    assert attempt(proxy, "bob", USERS["bob"]).startswith(b"+OK"), "bob has his own budget"


def test_a_name_with_the_separator_twice_is_refused_without_asking_the_backend(
    make_proxy, dovecot, fresh_mailbox
):
    fresh_mailbox("alice")
    proxy = make_proxy()
    mark = dovecot.log_mark()
    for user in (f"alice@{TENANT}@{TENANT}", f"alice@{TENANT}@", f"@{TENANT}"):
        assert attempt(proxy, user, USERS["alice"]).startswith(b"-ERR [AUTH]"), user
    assert attempt(proxy, f"alice@{TENANT}", USERS["alice"]).startswith(b"+OK")
    assert "alice@" not in dovecot.read_log()[mark:], "the backend was never asked"
    results = [s["result"] for s in proxy.sessions()]
    assert results.count("malformed_name") == 3, results


def test_every_spelling_holds_one_session_slot(make_proxy, fresh_mailbox):
    fresh_mailbox("alice")
    proxy = make_proxy(
        {"limits": {"max_sessions_per_user": 1}, "tenancy": {"default_tenant": TENANT}}
    )
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as first:
        first.login("ALICE", USERS["alice"])
        for spelling in ("alice", f"Alice@{TENANT}"):
            assert attempt(proxy, spelling, USERS["alice"]).startswith(b"-ERR [IN-USE]")
        assert first.command("QUIT").startswith(b"+OK")
    wait_for_session_end(proxy)
    assert attempt(proxy, "alice", USERS["alice"]).startswith(b"+OK")
    users = {s.get("user") for s in proxy.sessions() if s["result"] == "ok"}
    assert users == {f"alice@{TENANT}"}, "the session line names the user one way"


def wait_for_session_end(proxy: ProxyProcess) -> None:
    wait_until(lambda: any(s["end"] == "quit" for s in proxy.sessions()), 5)


# -- a backend that tells Alice from alice --------------------------------------

CASE_USERS = {**USERS, "ALICE": "ALICE-secret"}


@pytest.fixture
def case_sensitive_dovecot(make_dovecot):
    """Dovecot with ``auth_username_format = %u``: ``alice`` and ``ALICE`` are
    two users with two mailboxes (one message and two)."""
    server = make_dovecot(users=CASE_USERS, master_users=MASTER_USERS, username_format="%u")
    server.deliver("alice", [b"Subject: alice's\n\nhello\n"])
    server.deliver("ALICE", [b"Subject: one\n\nhello\n", b"Subject: two\n\nhello\n"])
    return server


def test_local_auth_logs_in_to_the_mailbox_whose_password_was_checked(
    make_local_tenant, case_sensitive_dovecot
):
    """``ALICE`` with alice's password is alice: the master login names
    ``alice``, never ``ALICE`` (another mailbox on this backend)."""
    proxy = make_local_tenant(case_sensitive_dovecot)
    mark = case_sensitive_dovecot.log_mark()
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login("ALICE@local.example", "local-pass")
        assert wire.command("STAT").startswith(b"+OK 1 "), "alice's mailbox"
        wire.command("QUIT")
    case_sensitive_dovecot.wait_for_log(r"Master user logging in as alice\b", since=mark)
    assert "logging in as ALICE" not in case_sensitive_dovecot.read_log()[mark:]


def test_a_tenant_with_case_sensitive_users_keeps_them_apart(
    make_local_tenant, case_sensitive_dovecot
):
    proxy = make_local_tenant(case_sensitive_dovecot, case_sensitive_users=True)
    assert attempt(proxy, "ALICE@local.example", "local-pass").startswith(b"-ERR [AUTH]"), (
        "ALICE has no password of her own yet"
    )
    result = run_cli(
        proxy.config_path, "user", "set-password", "ALICE@local.example", stdin="upper-pass\n"
    )
    assert result.returncode == 0, result.stderr
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login("ALICE@local.example", "upper-pass")
        assert wire.command("STAT").startswith(b"+OK 2 "), "ALICE's mailbox"
    assert attempt(proxy, "alice@local.example", "local-pass").startswith(b"+OK")
    listing = run_cli(proxy.config_path, "user", "list", "--tenant", "local.example", "--json")
    assert [entry["user"] for entry in json.loads(listing.stdout)] == [
        "ALICE@local.example",
        "alice@local.example",
    ]


# -- sessions per user ----------------------------------------------------------


def test_by_default_a_user_may_poll_from_two_clients_at_once(make_proxy, fresh_mailbox):
    """A phone and a desktop on one mailbox: the default allows it, as Dovecot does."""
    fresh_mailbox("erin")
    proxy = make_proxy(start=False)
    del proxy.config["limits"]["max_sessions_per_user"]  # the harness turns it off
    proxy.config_path.write_text(json.dumps(proxy.config))
    proxy.start()
    with (
        Pop3Wire(proxy.host, proxy.ports["plain"]) as phone,
        Pop3Wire(proxy.host, proxy.ports["plain"]) as desktop,
    ):
        phone.login(f"erin@{TENANT}", USERS["erin"])
        desktop.login(f"erin@{TENANT}", USERS["erin"])
        assert phone.command("STAT").startswith(b"+OK")
        assert desktop.command("STAT").startswith(b"+OK")


def test_in_use_only_past_the_limit(make_proxy, fresh_mailbox):
    fresh_mailbox("erin")
    proxy = make_proxy({"limits": {"max_sessions_per_user": 2}})
    with (
        Pop3Wire(proxy.host, proxy.ports["plain"]) as first,
        Pop3Wire(proxy.host, proxy.ports["plain"]) as second,
    ):
        first.login(f"erin@{TENANT}", USERS["erin"])
        second.login(f"erin@{TENANT}", USERS["erin"])
        assert attempt(proxy, f"erin@{TENANT}", USERS["erin"]).startswith(b"-ERR [IN-USE]")
