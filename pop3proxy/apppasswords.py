"""App passwords: one generated password per device, in front of any backend.

A tenant with ``app_passwords: allowed`` or ``required`` lets its users log
in with passwords the proxy generated (``pop3proxy user app-password add``),
one per device: revocable on its own, optionally expiring and limited to
some networks. The proxy judges the app password itself and logs in to the
backend with the tenant's master credentials, so the mailbox password never
has to be typed into a phone.

The shape: five groups of five symbols of a 32-symbol alphabet (lower-case
letters and digits without the look-alikes ``l``, ``o``, ``0`` and ``1``),
``7gk2m-xq4ab-...``: 125 random bits from :mod:`secrets`, typed on a phone
without switching case. The first group is the password's **id**: stored in
clear with the record, it finds the one hash to check, so a login costs
one argon2id check however many app passwords the user has. The other 100
bits are the secret. Case, and spaces or dashes between groups, do not
matter when it is typed.

Stored in the user record (``<prefix>:user:<tenant>:<local>``) under
``app_passwords``: per id the argon2id hash (never the password), label,
creation time, expiry and allowed networks. When each was last used (time
and client address) is written apart (:mod:`pop3proxy.history`), with the
login's history entry, so a login never rewrites the record (which would
make every replica drop its cached copy).

A good login is remembered in memory for :data:`VERIFIED_TTL` in a
:class:`VerifiedCredentials` cache, so a device that polls every few minutes
costs no argon2 at all: keyed by tenant, user and a keyed digest of the
password (never the password itself), and checked against the current user
record on every use, so a revoked or expired app password is refused at
once (a revocation changes the record and every replica drops its cached
copy on the change channel).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gevent

from pop3proxy.auth import HashParameters, Passwords
from pop3proxy.interfaces import LoginFailed
from pop3proxy.protocol.backend import AUTH_FAILURE
from pop3proxy.schema import Reader, parse_duration

MECHANISM = "app_password"
"""``LoggedIn.mechanism`` and the ``mechanism`` label of a login with one."""

ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"
"""32 symbols (5 bits each): lower case without ``l`` and ``o``, digits without ``0`` and ``1``."""
_SYMBOLS = frozenset(ALPHABET)
GROUP = 5
GROUPS = 5
SEPARATOR = "-"
ID_LENGTH = GROUP
"""The id is the first group (25 bits): unique among one user's app passwords."""
SECRET_BITS = (GROUPS * GROUP - ID_LENGTH) * 5

HASH_PARAMETERS = HashParameters(time_cost=2, memory_cost=19456, parallelism=1)
"""argon2id for app passwords: OWASP's minimum (19 MiB, 2 passes). The
mailbox password's parameters (``auth.argon2_*``, 64 MiB) guard what people
choose; an app password holds 100 random bits, which no guessing reaches
with any hash, so the hash only has to be one-way and a cold login can stay
cheap."""

VERIFIED_TTL = 600.0
"""Seconds a verified app password is remembered per replica: longer than
the usual polling interval of a mail client, short enough that a stolen
memory image of a replica is of little use."""
VERIFIED_MAX = 10_000
"""Remembered logins per replica; the oldest go first."""

MAX_LABEL_LENGTH = 100
RECORD_FIELD = "app_passwords"
"""The user record's field: id -> stored entry."""


class AppPasswordError(ValueError):
    """A value from the command line (label, expiry, network) is not usable."""


def generate() -> str:
    """A new app password, ``xxxxx-xxxxx-xxxxx-xxxxx-xxxxx``."""
    symbols = "".join(secrets.choice(ALPHABET) for _ in range(GROUP * GROUPS))
    return SEPARATOR.join(symbols[i : i + GROUP] for i in range(0, len(symbols), GROUP))


def canonical(password: bytes | str) -> str | None:
    """The app password ``password`` is, as it was generated; ``None`` when it
    has not an app password's shape (then it is a mailbox password).

    Phones capitalise the first letter and people type the groups with
    spaces or without dashes: case and separators do not count.
    """
    if isinstance(password, bytes):
        if len(password) > 2 * GROUP * GROUPS:
            return None
        try:
            password = password.decode("ascii")
        except UnicodeDecodeError:
            return None
    compact = password.lower().replace(SEPARATOR, "").replace(" ", "")
    if len(compact) != GROUP * GROUPS or not _SYMBOLS.issuperset(compact):
        return None
    return SEPARATOR.join(compact[i : i + GROUP] for i in range(0, len(compact), GROUP))


def looks_like(password: bytes | str) -> bool:
    return canonical(password) is not None


def id_of(canonical_password: str) -> str:
    return canonical_password[:ID_LENGTH]


@dataclass(frozen=True)
class AppPassword:
    """One app password as stored (without the password itself)."""

    id: str
    label: str
    created: float
    """Seconds since the epoch."""
    expires: float | None = None
    allow_from: tuple[str, ...] = ()
    """Networks (CIDR) the client must connect from; empty: anywhere."""
    hash: str = field(default="", repr=False)
    """argon2id of the canonical password: never printed, logged or listed."""

    @functools.cached_property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.allow_from)

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def allows(self, address: str | None) -> bool:
        """Is a client at ``address`` allowed to use it? (An IPv4 client seen as
        ``::ffff:a.b.c.d`` on a dual-stack socket counts as ``a.b.c.d``.)"""
        if not self.allow_from:
            return True
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        candidates = (ip, mapped) if mapped is not None else (ip,)
        return any(candidate in network for candidate in candidates for network in self.networks)

    def stored(self) -> dict[str, Any]:
        """The record's entry (keyed by id)."""
        data: dict[str, Any] = {"label": self.label, "created": self.created, "hash": self.hash}
        if self.expires is not None:
            data["expires"] = self.expires
        if self.allow_from:
            data["allow_from"] = list(self.allow_from)
        return data

    def public(self) -> dict[str, Any]:
        """What ``app-password list`` shows: everything but the hash."""
        return {
            "id": self.id,
            "label": self.label,
            "created": self.created,
            "expires": self.expires,
            "allow_from": list(self.allow_from),
        }


def read_app_passwords(r: Reader, key: str = RECORD_FIELD) -> tuple[AppPassword, ...]:
    """The ``app_passwords`` field of a user record (a mapping id -> entry),
    every problem added to ``r`` with its path."""
    raw = r.raw(key)
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        r.problem(key, f"expected a mapping of id to app password, got {type(raw).__name__}")
        return ()
    found = []
    for password_id, data in raw.items():
        path = f"{r.key_path(key)}.{password_id}"
        if not (isinstance(password_id, str) and len(password_id) == ID_LENGTH):
            r.problems.append(f"{path}: expected an id of {ID_LENGTH} symbols")
            continue
        entry = Reader(data, path, r.problems)
        label = entry.string("label", "") or ""
        created = _number(entry, "created", required=True) or 0.0
        expires = _number(entry, "expires")
        allow_from = tuple(_networks(entry))
        password_hash = entry.string("hash", None, required=True) or ""
        entry.finish()
        found.append(AppPassword(password_id, label, created, expires, allow_from, password_hash))
    return tuple(sorted(found, key=lambda p: (p.created, p.id)))


def _number(r: Reader, key: str, *, required: bool = False) -> float | None:
    value = r.raw(key)
    if value is None:
        if required:
            r.problem(key, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        r.problem(key, f"expected seconds since the epoch, got {value!r}")
        return None
    return float(value)


def _networks(r: Reader) -> Iterable[str]:
    value = r.raw("allow_from", [])
    if not isinstance(value, list):
        r.problem("allow_from", f"expected a list of networks, got {type(value).__name__}")
        return
    for i, cidr in enumerate(value):
        try:
            ipaddress.ip_network(str(cidr), strict=False)
        except ValueError:
            r.problem(f"allow_from[{i}]", f"expected a network such as 192.0.2.0/24, got {cidr!r}")
            continue
        yield str(cidr)


def without_hashes(record: dict[str, Any]) -> dict[str, Any]:
    """A user record's fields as ``user show`` prints them: its app passwords
    without their hashes."""
    passwords = record.get(RECORD_FIELD)
    if not isinstance(passwords, dict):
        return record
    hidden = {
        password_id: {k: v for k, v in entry.items() if k != "hash"}
        if isinstance(entry, dict)
        else entry
        for password_id, entry in passwords.items()
    }
    return {**record, RECORD_FIELD: hidden}


# -- made by the CLI ------------------------------------------------------------


def new_app_password(
    taken: Iterable[str],
    label: str,
    expires_in: str | None = None,
    allow_from: Iterable[str] = (),
    now: float | None = None,
) -> tuple[str, AppPassword]:
    """A fresh password and its record entry (with its hash). Raises
    :class:`AppPasswordError` for an unusable label, duration or network."""
    label = label.strip()
    if not label or len(label) > MAX_LABEL_LENGTH or not label.isprintable():
        raise AppPasswordError(
            f"--label: expected a name for the device, 1-{MAX_LABEL_LENGTH} printable characters"
        )
    now = time.time() if now is None else now
    expires = None
    if expires_in is not None:
        try:
            seconds = parse_duration(expires_in)
        except ValueError as error:
            raise AppPasswordError(f"--expires: {error}") from None
        if seconds <= 0:
            raise AppPasswordError("--expires: expected a duration greater than zero")
        expires = now + seconds
    networks = []
    for cidr in allow_from:
        try:
            networks.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError:
            raise AppPasswordError(
                f"--allow-from: expected a network such as 192.0.2.0/24 or 2001:db8::/32, "
                f"got {cidr!r}"
            ) from None
    taken = set(taken)
    password = generate()
    while id_of(password) in taken:  # 1 in 33 million per existing one
        password = generate()
    stored = Passwords(HASH_PARAMETERS).hash(password)
    entry = AppPassword(id_of(password), label, now, expires, tuple(networks), stored)
    return password, entry


# -- at login -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The app password a login was accepted with."""

    id: str
    label: str


@dataclass(slots=True)
class _Verified:
    created: float
    """Of the app password that was verified: a new one under the same id never matches."""
    until: float


class VerifiedCredentials:
    """App passwords verified lately, so a repeated login costs no argon2.

    Keyed by tenant, user and an HMAC of the password under a key that only
    this process holds (made at start, never stored): the password is never
    kept, a digest taken from memory is no use without the key, and one
    user's entry can never answer for another user.
    """

    def __init__(self, ttl: float = VERIFIED_TTL, size: int = VERIFIED_MAX) -> None:
        self.ttl = ttl
        self.size = size
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[tuple[str, str, bytes], _Verified] = OrderedDict()

    def __repr__(self) -> str:
        return f"<VerifiedCredentials {len(self._entries)} entries>"

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, tenant: str, local: str, password: str) -> tuple[str, str, bytes]:
        message = "\0".join((tenant, local, password)).encode()
        return tenant, local, hmac.new(self._key, message, hashlib.sha256).digest()

    def holds(self, key: tuple[str, str, bytes], stored: AppPassword, now: float) -> bool:
        """Was this very app password (still stored as ``stored``) verified
        within the TTL? A stale or replaced entry is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        if entry.until > now and entry.created == stored.created:
            return True
        del self._entries[key]
        return False

    def remember(self, key: tuple[str, str, bytes], stored: AppPassword, now: float) -> None:
        self._entries[key] = _Verified(stored.created, now + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, key: tuple[str, str, bytes]) -> None:
        self._entries.pop(key, None)

    def forget_user(self, tenant: str | None, local: str | None) -> None:
        """The user's record changed (an app password revoked, maybe): forget
        what was verified for them; ``None``: for everyone (changes may have
        been missed). The next login of each device costs one check again."""
        if tenant is None:
            self._entries.clear()
            return
        for key in [k for k in self._entries if k[0] == tenant and k[1] == local]:
            del self._entries[key]


class AppPasswords:
    """The login's judge of app passwords (:class:`pop3proxy.login.LoginService`)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.passwords = Passwords(HASH_PARAMETERS)
        self.verified = VerifiedCredentials()
        self.clock = clock

    def __repr__(self) -> str:
        return f"<AppPasswords {self.verified!r}>"

    def check(
        self,
        tenant: str,
        mode: str,
        local: str,
        password: bytes,
        address: str | None,
        stored_for_user: Callable[[], Iterable[AppPassword]],
    ) -> Accepted | None:
        """Judge ``password`` as an app password of ``local@tenant``.

        Returns what it was accepted as; ``None`` when it is no app password
        and the tenant's ``mode`` (``allowed``) lets the mailbox password be
        tried instead. Raises :class:`LoginFailed` (``-ERR [AUTH]``, the
        reply of any wrong password) for a wrong, expired or out-of-network
        app password, and with ``required`` for anything else, after the
        same one argon2id check, so the clock tells nothing either.
        ``stored_for_user`` reads the user's app passwords from their record
        (asked only when the password has an app password's shape).
        """
        if mode == "off":
            return None
        text = canonical(password)
        stored = None
        if text is not None:
            wanted = id_of(text)
            stored = next((p for p in stored_for_user() if p.id == wanted), None)
        if stored is None:
            if mode != "required":
                return None
            self._verify(None, password)  # as long as a real check
            detail = "not an app password" if text is None else "no such app password"
            raise LoginFailed(AUTH_FAILURE, "bad_credentials", tenant, detail)
        assert text is not None
        now = self.clock()
        key = self.verified.key(tenant, local, text)
        if not self.verified.holds(key, stored, now) and not self._verify(stored.hash, text):
            raise LoginFailed(AUTH_FAILURE, "bad_credentials", tenant, "wrong app password")
        if stored.expired(now):
            self.verified.forget(key)
            raise LoginFailed(AUTH_FAILURE, "expired", tenant, f"app password {stored.id}")
        if not stored.allows(address):
            raise LoginFailed(AUTH_FAILURE, "not_allowed_from", tenant, f"app password {stored.id}")
        self.verified.remember(key, stored, now)
        return Accepted(stored.id, stored.label)

    def _verify(self, stored: str | None, password: bytes | str) -> bool:
        """argon2id off the event loop (it releases the GIL: checks run in
        parallel on the hub's thread pool)."""
        return bool(gevent.get_hub().threadpool.apply(self.passwords.verify, (stored, password)))
