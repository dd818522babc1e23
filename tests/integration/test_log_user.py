"""The user on the session summary and login-failure lines (``logging.user``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess, attempt_login
from harness.users import USERS, WRONG_PASSWORD

ALICE = f"alice@{TENANT}"


def log_in_and_fail(proxy: ProxyProcess) -> tuple[dict[str, Any], dict[str, Any]]:
    """A good login (typed in another case) and a wrong password; returns the
    good session's summary and the failure line."""
    assert attempt_login(proxy, f"Alice@{TENANT.upper()}", USERS["alice"]).startswith(b"+OK")
    assert attempt_login(proxy, ALICE, WRONG_PASSWORD).startswith(b"-ERR")

    def lines() -> tuple[dict[str, Any], dict[str, Any]] | None:
        records = proxy.log_records()
        good = [r for r in records if r["message"] == "session" and r["result"] == "ok"]
        failed = [r for r in records if r["message"] == "login failed"]
        return (good[-1], failed[-1]) if good and failed else None

    return wait_until(lines, 10, message="a session summary and a login-failure line")


def test_the_canonical_user_is_on_the_summary_and_the_failure_line(make_proxy, fresh_mailbox):
    fresh_mailbox("alice")
    summary, failure = log_in_and_fail(make_proxy())
    assert summary["user"] == ALICE
    assert failure["user"] == ALICE and failure["result"] == "bad_credentials"


def test_a_name_without_a_tenant_is_logged_bounded(make_proxy):
    proxy = make_proxy()
    typed = "Mallory" + "x" * 240  # the longest the protocol takes is 255
    assert attempt_login(proxy, typed, "whatever").startswith(b"-ERR")
    failure = wait_until(
        lambda: next((r for r in proxy.log_records() if r["message"] == "login failed"), None), 10
    )
    assert failure["result"] == "unknown_tenant"
    assert failure["user"].startswith("malloryxxx") and len(failure["user"]) == 128 + 3


def test_hashed_users_match_across_processes_and_never_show_the_name(
    make_proxy: Callable[..., ProxyProcess], fresh_mailbox, tmp_path: Path
):
    fresh_mailbox("alice")
    key_file = tmp_path / "log-hash-key"
    key_file.write_text("a key shared by every replica\n")
    hashed = {"logging": {"user": "hash", "user_hash_key_file": str(key_file)}}
    first, second = make_proxy(hashed), make_proxy(hashed)
    digests = set()
    for proxy in (first, second):
        summary, failure = log_in_and_fail(proxy)
        assert summary["user"] == failure["user"]
        assert summary["user"].startswith("h:") and len(summary["user"]) == 34
        digests.add(summary["user"])
        assert "alice" not in proxy.read_log().lower()
    assert len(digests) == 1

    key_file.write_text("another key\n")
    summary, _ = log_in_and_fail(make_proxy(hashed))
    assert summary["user"] not in digests


def test_off_writes_no_user(make_proxy, fresh_mailbox):
    fresh_mailbox("alice")
    proxy = make_proxy({"logging": {"user": "off"}})
    summary, failure = log_in_and_fail(proxy)
    assert "user" not in summary and "user" not in failure
    assert "alice" not in proxy.read_log().lower()
