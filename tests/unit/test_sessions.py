"""Which sessions a kick's scope (or a ``who`` filter) matches."""

from __future__ import annotations

import pytest

from pop3proxy.sessions import Kick, KickScope, RecentKicks, parse_kick

ALICE = {
    "id": "ab12-7",
    "user": "alice@acme.example",
    "tenant": "acme.example",
    "client": "192.0.2.10",
    "backend": "10.0.0.1:110",
}
UNAUTHENTICATED = {**ALICE, "user": None, "tenant": None, "backend": None}


@pytest.mark.parametrize(
    ("scope", "value", "matches"),
    [
        ("user", "Alice@ACME.example", True),
        ("user", "bob@acme.example", False),
        ("tenant", "acme.example", True),
        ("tenant", "other.example", False),
        ("backend", "10.0.0.1:110", True),
        ("backend", "10.0.0.1:995", False),
        ("session", "ab12-7", True),
        ("session", "AB12-7", False),
        ("from", "192.0.2.0/24", True),
        ("from", "192.0.2.10", True),
        ("from", "198.51.100.0/24", False),
        ("from", "::/0", False),
    ],
)
def test_scope_matches(scope: str, value: str, matches: bool) -> None:
    assert KickScope(scope, value).matches(ALICE) is matches


def test_a_session_not_logged_in_matches_only_by_address_or_id() -> None:
    assert not KickScope("user", "alice@acme.example").matches(UNAUTHENTICATED)
    assert not KickScope("tenant", "acme.example").matches(UNAUTHENTICATED)
    assert KickScope("from", "192.0.2.0/24").matches(UNAUTHENTICATED)
    assert KickScope("session", "ab12-7").matches(UNAUTHENTICATED)


@pytest.mark.parametrize(("scope", "value"), [("who", "x"), ("from", "not-a-network")])
def test_bad_scope_refused(scope: str, value: str) -> None:
    with pytest.raises(ValueError):
        KickScope(scope, value)


def test_kick_message_read_back() -> None:
    message = '{"id": "k1", "scope": "tenant", "value": "acme.example", "reason": "moved"}'
    assert parse_kick(message) == Kick("k1", KickScope("tenant", "acme.example"), "moved", None)
    signed = message[:-1] + ', "by": "ops@admin1"}'
    assert parse_kick(signed).by == "ops@admin1"


def test_recent_kicks_match_only_logins_begun_before_them_and_are_forgotten() -> None:
    recent = RecentKicks(lambda: 35.0)
    assert not recent and recent.matching(ALICE, since=0.0, now=0.0) is None
    user = KickScope("user", "alice@acme.example")
    recent.add(KickScope("tenant", "other.example"), at=100.0)
    recent.add(user, at=100.0)
    assert recent.matching(ALICE, since=99.0, now=101.0) == user, "begun before the kick"
    assert recent.matching(ALICE, since=100.5, now=101.0) is None, "begun after it"
    assert recent.matching({**ALICE, "user": "bob@acme.example"}, since=99.0, now=101.0) is None
    assert recent.matching(ALICE, since=99.0, now=136.0) is None, "older than a login can take"
    assert not recent


def test_credential_scope_names_one_app_password_or_all_of_a_users() -> None:
    tablet = {**ALICE, "credential": "7gk2m"}
    assert KickScope("credential", "alice@acme.example/7GK2M").matches(tablet)
    assert not KickScope("credential", "alice@acme.example/aaaaa").matches(tablet)
    assert KickScope("credential", "Alice@acme.example/*").matches(tablet)
    assert not KickScope("credential", "bob@acme.example/*").matches(tablet)
    assert not KickScope("credential", "alice@acme.example/*").matches(ALICE), "mailbox password"
