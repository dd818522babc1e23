"""Per-user records: ``<prefix>:user:<tenant>:<local>``, JSON.

A user record may pin the user to one backend of their tenant (legacy
installations shard mailboxes over several servers), and holds the password
hash of a user of a tenant with ``auth: local``. It is an open record:
writers change only the fields they own and keep the rest (the CLI's pin
and a rehash at login may meet), and a record with nothing left in it is
deleted. Only Redis keeps user records; a tenants file has none.

```json
{"version": 1, "backend": "mail2.acme.internal:110", "password_hash": "$argon2id$...",
 "app_passwords": {"7gk2m": {"label": "phone", "created": 1767225600, "hash": "$argon2id$..."}}}
```

A hash imported from another server (``pop3proxy user import``) is kept as
Dovecot writes it, ``{SHA512-CRYPT}$6$...``, so its scheme shows; the first
good login replaces it by argon2id (:mod:`pop3proxy.legacyhashes`).
``app_passwords`` (see :mod:`pop3proxy.apppasswords`) is read with the rest,
so a login with one costs no read of its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pop3proxy.apppasswords import AppPassword, read_app_passwords
from pop3proxy.legacyhashes import stored_scheme
from pop3proxy.schema import Reader, SchemaError
from pop3proxy.tenants import parse_backend_address

USER_RECORD_VERSION = 1


class UserRecordError(SchemaError):
    """A user record is invalid; ``problems`` names each field."""


class UserRecordsUnsupported(Exception):
    """The store keeps no user records (a tenants file): a pin or a local
    password cannot be written to it."""

    def __init__(self) -> None:
        super().__init__(
            "user records (backend pins, local passwords) are kept in Redis only, "
            "and directory.store is file"
        )


@dataclass(frozen=True)
class UserRecord:
    tenant: str
    local: str
    backend: str | None = None
    """``host:port`` of the pinned backend, one of the tenant's."""
    password_hash: str | None = field(default=None, repr=False)
    """argon2id hash for tenants with ``auth: local``, or an imported
    ``{SCHEME}hash`` until the user's first good login."""
    app_passwords: tuple[AppPassword, ...] = field(default=(), repr=False)
    """The user's app passwords, oldest first."""
    raw: tuple[tuple[str, Any], ...] = field(default=(), repr=False)
    """Every stored field, for writers that must keep what they do not own;
    ``password_hash`` among them, so never in a repr."""

    @property
    def password_scheme(self) -> str | None:
        """``ARGON2ID``, the legacy scheme of an imported hash, ``unknown``, or
        ``None`` without a password: the scheme, never the hash."""
        if not self.password_hash:
            return None
        return stored_scheme(self.password_hash) or "unknown"


def user_key_parts(tenant: str, local: str) -> tuple[str, str]:
    """Tenant and local part as they appear in the key: the tenant lower case,
    the local part as given. Callers pass the canonical local part
    (:meth:`pop3proxy.tenants.Tenant.identity`): lower case unless the tenant's
    backends are case-sensitive, where ``Bob`` and ``bob`` are two users with
    two records."""
    return tenant.lower(), local


def parse_user_record(tenant: str, local: str, data: object, path: str = "") -> UserRecord:
    problems: list[str] = []
    r = Reader(data, path or f"user {local}@{tenant}", problems)
    version = r.integer("version", USER_RECORD_VERSION, minimum=1)
    if version > USER_RECORD_VERSION:
        r.problem("version", f"record version {version} is newer than this proxy")
    backend = r.string("backend", None)
    if backend is not None:
        try:
            parse_backend_address(backend)
        except ValueError as error:
            r.problem("backend", str(error))
    password_hash = r.string("password_hash", None)
    app_passwords = read_app_passwords(r)
    r.finish()
    if problems:
        raise UserRecordError(problems)
    raw = tuple(sorted(dict(data).items())) if isinstance(data, dict) else ()
    return UserRecord(
        tenant=tenant,
        local=local,
        backend=backend,
        password_hash=password_hash,
        app_passwords=app_passwords,
        raw=raw,
    )


def decode_user_record(tenant: str, local: str, raw: bytes) -> UserRecord:
    """Parse stored JSON; raises :class:`UserRecordError` (also for bad JSON)."""
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise UserRecordError([f"user {local}@{tenant}: not valid JSON: {error}"]) from None
    return parse_user_record(tenant, local, data)
