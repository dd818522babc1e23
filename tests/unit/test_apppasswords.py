"""App passwords: their shape, their record entries, the verified cache, the
tenant field and the kick scope."""

from __future__ import annotations

import json
import re
import time

import pytest

from pop3proxy import apppasswords
from pop3proxy.apppasswords import (
    AppPassword,
    AppPasswordError,
    AppPasswords,
    VerifiedCredentials,
    canonical,
    generate,
    new_app_password,
)
from pop3proxy.interfaces import LoginFailed
from pop3proxy.sessions import KickScope
from pop3proxy.tenants import RecordError, Tenant, parse_tenant, split_user
from pop3proxy.userrecords import UserRecordError, decode_user_record

SHAPE = re.compile(r"^[a-km-np-z2-9]{5}(-[a-km-np-z2-9]{5}){4}$")


def test_a_generated_password_has_the_shape_and_at_least_80_secret_bits() -> None:
    passwords = {generate() for _ in range(200)}
    assert len(passwords) == 200
    assert all(SHAPE.match(p) for p in passwords)
    assert len(apppasswords.ALPHABET) == len(set(apppasswords.ALPHABET)) == 32
    assert not set("lo01") & set(apppasswords.ALPHABET)
    assert apppasswords.SECRET_BITS >= 80
    # every symbol is used: nothing narrows the 5 bits each one carries
    assert set("".join(passwords).replace("-", "")) == set(apppasswords.ALPHABET)


@pytest.mark.parametrize(
    "typed",
    [
        "abcde-fghij-kmnpq-rstuv-wxyz2",
        "Abcde-fghij-kmnpq-rstuv-wxyz2",  # a phone's capital
        "ABCDE FGHIJ KMNPQ RSTUV WXYZ2",
        "abcdefghijkmnpqrstuvwxyz2",
        b"abcde-fghij-kmnpq-rstuv-wxyz2",
    ],
)
def test_typed_loosely_it_is_the_same_app_password(typed: str | bytes) -> None:
    assert canonical(typed) == "abcde-fghij-kmnpq-rstuv-wxyz2"


@pytest.mark.parametrize(
    "other",
    [
        "alice-secret",
        "abcde-fghij-kmnpq-rstuv-wxyz",  # one short
        "abcde-fghij-kmnpq-rstuv-wxyz22",  # one long
        "abcde-fghij-kmnpq-rstuv-wxyz1",  # a symbol it never uses
        "abcdé-fghij-kmnpq-rstuv-wxyz2",
        b"\xff" * 25,
        b"a" * 10_000,
    ],
)
def test_anything_else_is_a_mailbox_password(other: str | bytes) -> None:
    assert canonical(other) is None


def test_new_app_password_stores_a_hash_that_verifies_and_never_the_password() -> None:
    password, entry = new_app_password(
        [], " phone ", "90d", ["192.0.2.7/24", "2001:db8::/32"], now=1000.0
    )
    assert entry.id == password[:5] and entry.label == "phone"
    assert (entry.created, entry.expires) == (1000.0, 1000.0 + 90 * 86400)
    assert entry.allow_from == ("192.0.2.0/24", "2001:db8::/32")
    stored = json.dumps(entry.stored())
    assert password not in stored and password[6:] not in stored
    assert entry.hash.startswith("$argon2id$") and "m=19456,t=2,p=1" in entry.hash
    assert apppasswords.Passwords(apppasswords.HASH_PARAMETERS).verify(entry.hash, password)
    assert "hash" not in entry.public()


@pytest.mark.parametrize(
    ("label", "expires", "networks", "message"),
    [
        ("", None, [], "--label"),
        ("x" * 101, None, [], "--label"),
        ("tab\there", None, [], "--label"),
        ("phone", "soon", [], "--expires"),
        ("phone", "0s", [], "--expires: expected a duration greater than zero"),
        ("phone", None, ["10.0.0.0/33"], "--allow-from"),
    ],
)
def test_unusable_options_are_named(
    label: str, expires: str | None, networks: list[str], message: str
) -> None:
    with pytest.raises(AppPasswordError, match=re.escape(message)):
        new_app_password([], label, expires, networks)


def test_allowed_networks_count_an_ipv4_client_on_a_dual_stack_socket() -> None:
    entry = AppPassword("abcde", "office", 0.0, allow_from=("192.0.2.0/24",))
    assert entry.allows("192.0.2.9")
    assert entry.allows("::ffff:192.0.2.9")
    assert not entry.allows("198.51.100.1")
    assert not entry.allows(None)
    assert AppPassword("abcde", "anywhere", 0.0).allows(None)


def test_a_user_record_reads_its_app_passwords_and_names_bad_fields() -> None:
    _, entry = new_app_password([], "phone", now=5.0)
    raw = json.dumps({"version": 1, "app_passwords": {entry.id: entry.stored()}})
    record = decode_user_record("acme.example", "alice", raw.encode())
    assert record.app_passwords == (entry,)
    bad = {"app_passwords": {"toolongid": {}, entry.id: {"created": "x", "hash": 3, "y": 1}}}
    with pytest.raises(UserRecordError) as error:
        decode_user_record("acme.example", "alice", json.dumps(bad).encode())
    problems = "\n".join(error.value.problems)
    assert "app_passwords.toolongid: expected an id of 5 symbols" in problems
    assert f"app_passwords.{entry.id}.created: expected seconds since the epoch" in problems
    assert f"app_passwords.{entry.id}.hash: expected a non-empty string" in problems
    assert f"app_passwords.{entry.id}.y: unknown key" in problems


def test_the_verified_cache_is_per_user_and_forgets_by_ttl_replacement_and_change() -> None:
    cache = VerifiedCredentials(ttl=10, size=3)
    phone = AppPassword("abcde", "phone", created=1.0)
    alice = cache.key("acme.example", "alice", "abcde-x")
    bob = cache.key("acme.example", "bob", "abcde-x")
    assert alice != bob and "abcde-x" not in repr(alice)
    cache.remember(alice, phone, now=100.0)
    assert cache.holds(alice, phone, now=105.0)
    assert not cache.holds(bob, phone, now=105.0)
    assert not cache.holds(alice, phone, now=111.0)  # past the TTL: dropped
    assert len(cache) == 0
    cache.remember(alice, phone, now=100.0)
    replaced = AppPassword("abcde", "phone", created=2.0)  # a new one under the same id
    assert not cache.holds(alice, replaced, now=101.0)
    cache.remember(alice, phone, now=100.0)
    cache.remember(bob, phone, now=100.0)
    cache.forget_user("acme.example", "alice")
    assert not cache.holds(alice, phone, now=101.0) and cache.holds(bob, phone, now=101.0)
    cache.forget_user(None, None)
    assert len(cache) == 0
    for n in range(5):
        cache.remember(cache.key("t", f"u{n}", "p"), phone, now=100.0)
    assert len(cache) == 3  # the oldest went


def judge(mode: str, password: str, stored: tuple[AppPassword, ...]) -> object:
    judged = AppPasswords(clock=time.time)
    try:
        return judged.check(
            "acme.example", mode, "alice", password.encode(), "127.0.0.1", lambda: stored
        )
    except LoginFailed as failure:
        return (failure.result, failure.detail)


def test_the_modes_decide_what_a_mailbox_password_gets() -> None:
    password, entry = new_app_password([], "phone")
    stored = (entry,)
    assert judge("off", password, stored) is None
    assert judge("allowed", "mailbox-secret", stored) is None
    assert judge("required", "mailbox-secret", stored) == (
        "bad_credentials",
        "not an app password",
    )
    other = generate()
    assert judge("allowed", other, stored) is None  # an unknown id: maybe a mailbox password
    assert judge("required", other, stored) == ("bad_credentials", "no such app password")
    accepted = judge("required", password, stored)
    assert accepted == apppasswords.Accepted(entry.id, "phone")


def test_a_tenant_with_app_passwords_needs_and_keeps_its_master_credentials() -> None:
    backend = {"host": "mail.acme.internal"}
    with pytest.raises(RecordError) as error:
        parse_tenant({"name": "acme.example", "backends": [backend], "app_passwords": "allowed"})
    problems = "\n".join(error.value.problems)
    assert "master_user: is required with app_passwords: allowed" in problems
    assert "app_passwords: allowed (after an app password" in problems
    with pytest.raises(RecordError, match="app_passwords: expected one of off, allowed"):
        parse_tenant({"name": "acme.example", "backends": [backend], "app_passwords": "yes"})
    tenant = parse_tenant(
        {
            "name": "acme.example",
            "backends": [backend],
            "app_passwords": "required",
            "master_user": "proxymaster",
            "master_password_env": "ACME_MASTER",
        }
    )
    assert parse_tenant(tenant.to_dict()) == tenant  # passthrough keeps its master fields
    assert (
        tenant.backend_login(tenant.identity(split_user("Alice@acme.example", "@", None)))
        == "alice"
    )
    assert (
        tenant.backend_login(tenant.identity(split_user("Alice@acme.example", "@", None)), True)
        == "alice*proxymaster"
    )
    plain = parse_tenant({"name": "acme.example", "backends": [backend]})
    assert "app_passwords" not in plain.to_dict()  # readable by older proxies
    assert plain.app_passwords == Tenant.app_passwords == "off"


def test_a_credential_kick_matches_that_users_app_password_only() -> None:
    scope = KickScope("credential", "alice@acme.example/abcde")
    assert scope.matches({"user": "alice@acme.example", "credential": "abcde"})
    assert not scope.matches({"user": "bob@acme.example", "credential": "abcde"})
    assert not scope.matches({"user": "alice@acme.example", "credential": "zzzzz"})
    assert not scope.matches({"user": "alice@acme.example", "credential": None})
