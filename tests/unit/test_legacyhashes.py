"""Hashes from another server: made by Dovecot's own ``doveadm pw``, checked
by the proxy's libraries, and replaced by argon2id after a good login."""

from __future__ import annotations

import pytest
from harness.doveadm import dovecot_hash

from pop3proxy.auth import HashParameters, Passwords
from pop3proxy.legacyhashes import (
    ACCEPTED_SCHEMES,
    LEGACY_SCHEMES,
    UnreadableHash,
    parse_imported_hash,
    stored_scheme,
    verify_legacy,
)
from unit.test_auth import CHEAP, fastest

PASSWORD = "Sommer 2019 ä!"


@pytest.fixture(scope="module")
def dovecot_hashes() -> dict[str, str]:
    """One hash per accepted scheme, of ``PASSWORD``, by ``doveadm pw``."""
    return {scheme: dovecot_hash(scheme, PASSWORD) for scheme in ACCEPTED_SCHEMES}


@pytest.mark.parametrize("scheme", ACCEPTED_SCHEMES)
def test_every_dovecot_scheme_verifies_and_asks_for_argon2id(
    dovecot_hashes: dict[str, str], scheme: str
):
    line = dovecot_hashes[scheme]
    assert line.startswith(f"{{{scheme}}}")
    parsed_scheme, stored = parse_imported_hash(line)
    assert parsed_scheme == scheme
    assert stored_scheme(stored) == scheme
    passwords = Passwords(CHEAP)
    assert passwords.verify(stored, PASSWORD)
    assert passwords.verify(stored, PASSWORD.encode())
    assert not passwords.verify(stored, PASSWORD + "x")
    assert not passwords.verify(stored, PASSWORD.upper())
    # Dovecot's argon2id parameters differ from these; every legacy scheme differs.
    assert passwords.needs_rehash(stored)
    fresh = passwords.hash(PASSWORD)
    assert stored_scheme(fresh) == "ARGON2ID"
    assert not passwords.needs_rehash(fresh)


def test_argon2id_is_stored_bare_and_legacy_schemes_keep_their_prefix(dovecot_hashes):
    _, stored = parse_imported_hash(dovecot_hashes["ARGON2ID"])
    assert stored.startswith("$argon2id$")
    for scheme in LEGACY_SCHEMES:
        _, stored = parse_imported_hash(dovecot_hashes[scheme])
        assert stored == dovecot_hashes[scheme]


@pytest.mark.parametrize("scheme", ["SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "BLF-CRYPT"])
def test_bare_crypt_hashes_are_read_as_dovecot_does(dovecot_hashes, scheme):
    """A hash without ``{SCHEME}`` is Dovecot's default, CRYPT: its prefix names it."""
    bare = dovecot_hashes[scheme].split("}", 1)[1]
    parsed_scheme, stored = parse_imported_hash(bare)
    assert parsed_scheme == scheme
    assert stored == dovecot_hashes[scheme]
    assert verify_legacy(stored, PASSWORD.encode())


def test_bare_argon2id():
    bare = dovecot_hash("ARGON2ID", PASSWORD).split("}", 1)[1]
    assert parse_imported_hash(bare) == ("ARGON2ID", bare)
    assert Passwords(CHEAP).verify(bare, PASSWORD)


def test_crypt_holds_any_crypt3_form_including_des():
    des = dovecot_hash("DES-CRYPT", "secret").split("}", 1)[1]
    for payload in (des, dovecot_hash("SHA512-CRYPT", "secret").split("}", 1)[1]):
        _, stored = parse_imported_hash(f"{{CRYPT}}{payload}")
        assert verify_legacy(stored, b"secret")
        assert not verify_legacy(stored, b"Secret")


def test_blf_crypt_reads_72_bytes_like_dovecot():
    long_password = "x" * 72
    _, stored = parse_imported_hash(dovecot_hash("BLF-CRYPT", long_password))
    assert verify_legacy(stored, (long_password + "ignored").encode())
    assert not verify_legacy(stored, long_password[:-1].encode())


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no password hash"),
        ("{PLAIN}secret", "scheme {PLAIN} is not accepted"),
        ("{SHA512-CRYPT}$5$abc$def", "does not start with $6$"),
        ("{SHA512-CRYPT}$6$salt$tooshort", "SHA512-CRYPT hash is malformed"),
        ("{SSHA}!!notbase64!!", "SSHA hash is malformed"),
        ("{PLAIN-MD5}0123", "PLAIN-MD5 hash is malformed"),
        ("{ARGON2ID}$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo", "ARGON2ID"),
        ("{CRYPT}not-a-crypt-hash", "no crypt(3) form"),
        ("{SSHA512}", "SSHA512 with no hash"),
        ("5ebe2294ecd0e0f08eab7690d2a6ee69", "no {SCHEME} prefix"),
    ],
)
def test_unreadable_hashes_say_why_without_the_hash(text, reason):
    with pytest.raises(UnreadableHash) as caught:
        parse_imported_hash(text)
    message = str(caught.value)
    assert reason in message
    payload = text.split("}", 1)[-1]
    if len(payload) > 8:
        assert payload not in message


def test_a_stored_hash_of_another_kind_never_verifies():
    passwords = Passwords(CHEAP)
    assert not passwords.verify("{PLAIN}secret", "secret")
    assert not passwords.verify("{SSHA}garbage", "secret")
    assert not passwords.verify("", "pop3proxy dummy password for unknown users")
    assert passwords.needs_rehash("{SSHA}garbage")


def test_a_wrong_password_on_a_fast_legacy_hash_costs_what_an_unknown_user_costs():
    """A salted SHA takes microseconds: without the dummy argon2id check a
    refusal would tell a migrated user from an unknown one."""
    passwords = Passwords(HashParameters(time_cost=2, memory_cost=8192))
    _, stored = parse_imported_hash(dovecot_hash("SSHA", "pw"))
    legacy = fastest(lambda: passwords.verify(stored, "wrong"))
    unknown = fastest(lambda: passwords.verify(None, "wrong"))
    assert 0.5 < legacy / unknown < 2.0, (legacy, unknown)
