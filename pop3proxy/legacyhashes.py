"""Password hashes brought from another mail server, in Dovecot's notation.

Operators moving users off an old server bring its hashes (``pop3proxy user
import``). They are stored as Dovecot writes them, ``{SCHEME}hash``, so the
scheme stays recognisable in the record, and checked with kept libraries
(libpass, the maintained passlib; bcrypt; argon2-cffi), never hand-written
hashing. An argon2id hash is stored bare (``$argon2id$...``), as the proxy's
own are. On the first good login the proxy replaces a legacy hash by
argon2id (:meth:`pop3proxy.auth.Passwords.needs_rehash`).

Error messages name the scheme and what is wrong with the hash's shape,
never the hash itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import bcrypt
from argon2 import extract_parameters
from argon2.exceptions import InvalidHashError
from passlib.hash import (
    bcrypt as passlib_bcrypt,
)
from passlib.hash import (
    des_crypt,
    hex_md5,
    ldap_salted_sha1,
    ldap_salted_sha256,
    ldap_salted_sha512,
    md5_crypt,
    sha256_crypt,
    sha512_crypt,
)

ARGON2ID = "ARGON2ID"
ARGON2ID_PREFIX = "$argon2id$"

LEGACY_SCHEMES = (
    "SHA512-CRYPT",
    "SHA256-CRYPT",
    "MD5-CRYPT",
    "BLF-CRYPT",
    "SSHA512",
    "SSHA256",
    "SSHA",
    "PLAIN-MD5",
    "CRYPT",
)
"""The Dovecot schemes a legacy hash may have: what passwd-files hold."""

ACCEPTED_SCHEMES = (*LEGACY_SCHEMES, ARGON2ID)

BCRYPT_MAX_PASSWORD = 72
"""bcrypt reads at most 72 bytes of a password; Dovecot's BLF-CRYPT ignores
the rest, and the bcrypt library refuses longer ones instead: cut to match."""

_SCHEME_PREFIX = re.compile(r"^\{([A-Za-z0-9._-]+)\}")
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
_CRYPT_PREFIXES = {"$6$": "SHA512-CRYPT", "$5$": "SHA256-CRYPT", "$1$": "MD5-CRYPT"}
_CRYPT_PREFIX_OF = {kind: prefix for prefix, kind in _CRYPT_PREFIXES.items()}
_DES_CRYPT = re.compile(r"^[./0-9A-Za-z]{13}$")


class UnreadableHash(ValueError):
    """A hash this proxy cannot check; the message says why, without the hash."""


def _bcrypt_matches(payload: str, password: bytes) -> bool:
    return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], payload.encode("ascii"))


def _plain(handler: Any) -> Callable[[str, bytes], bool]:
    return lambda payload, password: bool(handler.verify(password, payload))


_CHECKS: dict[str, tuple[Any, Callable[[str, bytes], bool]]] = {
    "SHA512-CRYPT": (sha512_crypt, _plain(sha512_crypt)),
    "SHA256-CRYPT": (sha256_crypt, _plain(sha256_crypt)),
    "MD5-CRYPT": (md5_crypt, _plain(md5_crypt)),
    "BLF-CRYPT": (passlib_bcrypt, _bcrypt_matches),
    "DES-CRYPT": (des_crypt, _plain(des_crypt)),
    "PLAIN-MD5": (hex_md5, _plain(hex_md5)),
}
"""Scheme -> (the handler whose parser validates the hash's shape, the check)."""
_SALTED: dict[str, Any] = {
    "SSHA512": ldap_salted_sha512,
    "SSHA256": ldap_salted_sha256,
    "SSHA": ldap_salted_sha1,
}
"""The LDAP-style salted SHA handlers, which read the ``{SCHEME}`` prefix themselves."""


def _crypt_kind(payload: str) -> str | None:
    """What ``crypt(3)`` would make of a hash under Dovecot's ``CRYPT``
    scheme (the default for a hash with no ``{SCHEME}``): the crypt family
    its prefix names, or traditional DES for 13 characters."""
    if payload.startswith(_BCRYPT_PREFIXES):
        return "BLF-CRYPT"
    for prefix, kind in _CRYPT_PREFIXES.items():
        if payload.startswith(prefix):
            return kind
    return "DES-CRYPT" if _DES_CRYPT.match(payload) else None


def _expected_kind(scheme: str, payload: str) -> str:
    """The handler that checks ``payload`` under ``scheme``, or :class:`UnreadableHash`."""
    if scheme == "CRYPT":
        kind = _crypt_kind(payload)
        if kind is None:
            raise UnreadableHash("CRYPT hash of no crypt(3) form this proxy can check")
        return kind
    crypt_prefix = _CRYPT_PREFIX_OF.get(scheme)
    if crypt_prefix and not payload.startswith(crypt_prefix):
        raise UnreadableHash(f"{scheme} hash does not start with {crypt_prefix}")
    if scheme == "BLF-CRYPT" and not payload.startswith(_BCRYPT_PREFIXES):
        raise UnreadableHash("BLF-CRYPT hash does not start with $2a$, $2b$ or $2y$")
    return scheme


def _validate(scheme: str, payload: str) -> None:
    """Parse ``payload`` with the library that will check it; raises
    :class:`UnreadableHash` if it is malformed."""
    if scheme == ARGON2ID:
        try:
            parameters = extract_parameters(payload)
        except InvalidHashError:
            raise UnreadableHash("ARGON2ID hash is not a valid argon2id hash") from None
        if parameters.type.name != "ID":
            raise UnreadableHash("ARGON2ID hash is of another argon2 type")
        return
    if scheme in _SALTED:
        handler = _SALTED[scheme]
        text = f"{{{scheme}}}{payload}"
    else:
        handler = _CHECKS[_expected_kind(scheme, payload)][0]
        text = payload
    try:
        handler.from_string(text)
    except (ValueError, TypeError):
        raise UnreadableHash(f"{scheme} hash is malformed") from None


def parse_imported_hash(text: str) -> tuple[str, str]:
    """``(scheme, stored form)`` of a hash as a passwd-file or a two-column
    file holds it: ``{SCHEME}hash``, or a bare crypt hash (``$6$...``,
    ``$2y$...``, ``$argon2id$...``), which Dovecot reads with its default
    ``CRYPT`` scheme. Raises :class:`UnreadableHash`."""
    text = text.strip()
    if not text:
        raise UnreadableHash("no password hash")
    match = _SCHEME_PREFIX.match(text)
    if match is None:
        if text.startswith(ARGON2ID_PREFIX):
            scheme, payload = ARGON2ID, text
        else:
            kind = _crypt_kind(text)
            if kind is None or kind == "DES-CRYPT":
                raise UnreadableHash(
                    "no {SCHEME} prefix and not a $6$, $5$, $1$, $2y$ or $argon2id$ crypt hash"
                )
            scheme, payload = kind, text
    else:
        scheme, payload = match.group(1).upper(), text[match.end() :]
        if scheme not in ACCEPTED_SCHEMES:
            raise UnreadableHash(
                f"scheme {{{scheme}}} is not accepted (accepted: {', '.join(ACCEPTED_SCHEMES)})"
            )
        if not payload:
            raise UnreadableHash(f"{scheme} with no hash")
    _validate(scheme, payload)
    stored = payload if scheme == ARGON2ID else f"{{{scheme}}}{payload}"
    return scheme, stored


def stored_scheme(stored: str) -> str | None:
    """The scheme of a stored hash: ``ARGON2ID``, a legacy scheme, or ``None``
    for one this proxy did not write."""
    if stored.startswith(ARGON2ID_PREFIX):
        return ARGON2ID
    match = _SCHEME_PREFIX.match(stored)
    if match and match.group(1) in LEGACY_SCHEMES:
        return match.group(1)
    return None


def is_legacy(stored: str) -> bool:
    return stored_scheme(stored) in LEGACY_SCHEMES


def verify_legacy(stored: str, password: bytes) -> bool:
    """True if ``password`` matches a stored ``{SCHEME}hash``; False for a
    wrong password and for a hash that cannot be checked."""
    scheme = stored_scheme(stored)
    if scheme is None or scheme == ARGON2ID:
        return False
    payload = stored[len(scheme) + 2 :]
    try:
        if scheme in _SALTED:
            return bool(_SALTED[scheme].verify(password, stored))
        return _CHECKS[_expected_kind(scheme, payload)][1](payload, password)
    except (ValueError, TypeError, UnreadableHash):
        return False
