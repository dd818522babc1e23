"""Tenant and user records: where they are stored, and the cached lookup in front.

Two stores share one record shape (:mod:`pop3proxy.tenants`): Redis, shared
by every replica and managed with ``pop3proxy tenant ...``, and a YAML file
for small setups without Redis. Both implement :class:`Store`, so the
:class:`Directory` never asks which one it has. Logins read through
:meth:`Directory.lookup`, :meth:`Directory.pinned_backend` and
:meth:`Directory.user_record`, which answer from the in-process cache when
they can, so most logins cost no round trip to the store.

Redis connections are built in :mod:`pop3proxy.redisconn`, cache
invalidation over pub/sub lives in :mod:`pop3proxy.invalidation`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import redis

from pop3proxy import invalidation, metrics
from pop3proxy.cache import Source, TTLCache
from pop3proxy.config import DirectoryConfig
from pop3proxy.filestore import FileStore
from pop3proxy.redisconn import RedisHealth, as_text, connect, describe
from pop3proxy.tenants import RecordError, Tenant, parse_tenant
from pop3proxy.userrecords import (
    UserRecord,
    UserRecordError,
    decode_user_record,
    user_key_parts,
)

log = logging.getLogger("pop3proxy.directory")


class DirectoryUnavailable(Exception):
    """The store cannot answer and nothing usable is cached: a temporary failure."""


class Store(Protocol):
    """Where tenant and user records live: everything the :class:`Directory`
    (and the ``user`` admin commands) ask of one, so that neither needs to
    know which store it has. Two implement it: :class:`RedisStore` and
    :class:`pop3proxy.filestore.FileStore`."""

    source_label: str
    """What ``pop3proxy_directory_lookups_total{source}`` says for a load."""
    remote: bool
    """Reading a record costs a round trip, so the directory answers from its
    cache. A store that holds its records in memory is asked every time, so
    that a reload shows at once."""

    def get(self, name: str) -> Tenant | None: ...

    def get_user(self, tenant: str, local: str) -> UserRecord | None: ...

    def user_locals(self, tenant: str) -> Iterator[str]:
        """The local parts of ``tenant``'s users that have a record."""
        ...

    def put_user_fields(self, tenant: str, local: str, fields: dict[str, Any]) -> dict | None:
        """Merge ``fields`` into a user record; raises
        :class:`~pop3proxy.userrecords.UserRecordsUnsupported` where there are none."""
        ...

    def delete_user(self, tenant: str, local: str) -> bool: ...

    def watch(self, on_change: Callable[[str], None], on_resync: Callable[[], None]) -> None:
        """Start following changes: ``on_change`` gets each change message
        (:mod:`pop3proxy.invalidation`), ``on_resync`` runs when changes may
        have been missed."""
        ...

    def reload(self, reason: str) -> bool:
        """Read again what the store holds in memory (SIGHUP)."""
        ...

    def stop(self) -> None: ...

    def reachable(self) -> bool:
        """Can the store answer now?"""
        ...

    def shared_redis(self) -> Any:
        """The Redis client the limits share, or ``None``: they keep per-process counts."""
        ...

    def shared_health(self) -> RedisHealth | None:
        """The health view of that Redis, shared so that one outage is detected once."""
        ...


class CorruptLog:
    """Logs each corrupt record once (per content), counts every read of one."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def report(self, kind: str, key: str, raw: bytes, problems: list[str]) -> None:
        metrics.add(metrics.DIRECTORY_CORRUPT, kind)
        digest = hashlib.sha256(raw).hexdigest()
        if self._seen.get(key) == digest:
            return
        self._seen[key] = digest
        log.error(
            "corrupt record: its logins fail with -ERR [SYS/TEMP] until it is fixed",
            extra={"kind": kind, "key": key, "problems": problems[:10]},
        )

    def fixed(self, key: str) -> None:
        self._seen.pop(key, None)


class RedisStore:
    """Tenant records as JSON under ``<prefix>:tenant:<name>``, user records
    under ``<prefix>:user:<tenant>:<local>``; changes announced on
    ``<prefix>:changes``."""

    source_label = "redis"
    remote = True

    def __init__(self, client: Any, prefix: str, health: RedisHealth | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.health = health or RedisHealth("redis")
        self.corrupt = CorruptLog()
        self._subscriber: invalidation.Subscriber | None = None

    @classmethod
    def from_config(cls, config: DirectoryConfig) -> RedisStore:
        client = connect(config)
        return cls(client, config.key_prefix, RedisHealth(describe(config), probe=client.ping))

    def key(self, name: str) -> str:
        return f"{self.prefix}:tenant:{name}"

    def user_key(self, tenant: str, local: str) -> str:
        tenant, local = user_key_parts(tenant, local)
        return f"{self.prefix}:user:{tenant}:{local}"

    def _read(self, key: str) -> bytes | None:
        if not self.health.should_try():
            raise DirectoryUnavailable("redis unreachable (retrying with backoff)")
        started = time.perf_counter()
        try:
            raw = self.client.get(key)
        except (redis.RedisError, OSError) as error:
            self.health.failed(error)
            raise DirectoryUnavailable(f"redis: {error}") from None
        self.health.ok()
        metrics.observe(metrics.DIRECTORY_REDIS_SECONDS, value=time.perf_counter() - started)
        return raw

    def get(self, name: str) -> Tenant | None:
        key = self.key(name)
        raw = self._read(key)
        if raw is None:
            return None
        try:
            tenant = parse_tenant(json.loads(raw), path=f"tenant {name}")
        except (ValueError, RecordError) as error:
            problems = getattr(error, "problems", None) or [f"not valid JSON: {error}"]
            self.corrupt.report("tenant", key, raw, problems)
            raise DirectoryUnavailable(f"corrupt record for tenant {name}") from None
        self.corrupt.fixed(key)
        return tenant

    def get_user(self, tenant: str, local: str) -> UserRecord | None:
        key = self.user_key(tenant, local)
        raw = self._read(key)
        if raw is None:
            return None
        try:
            record = decode_user_record(*user_key_parts(tenant, local), raw)
        except UserRecordError as error:
            self.corrupt.report("user", key, raw, error.problems)
            raise DirectoryUnavailable(f"corrupt user record {key}") from None
        self.corrupt.fixed(key)
        return record

    def user_locals(self, tenant: str) -> Iterator[str]:
        return self._scan(self.user_key(tenant, ""))

    def names(self) -> Iterator[str]:
        """Every stored tenant's name."""
        return self._scan(f"{self.prefix}:tenant:")

    def _scan(self, prefix: str) -> Iterator[str]:
        """What follows ``prefix`` in each key that starts with it."""
        for key in self.client.scan_iter(match=prefix + "*", count=500):
            yield as_text(key)[len(prefix) :]

    def raw(self, name: str) -> bytes | None:
        """A tenant's record as stored, unparsed (the admin commands report corrupt ones)."""
        return self.client.get(self.key(name))

    # Writes: the admin commands, and a rehash at login. Each announces the change.

    def put(self, tenant: Tenant) -> None:
        self.client.set(self.key(tenant.name), json.dumps(tenant.to_dict(), sort_keys=True))
        self.publish(invalidation.tenant_message(tenant.name))

    def delete(self, name: str) -> bool:
        deleted = bool(self.client.delete(self.key(name)))
        self.publish(invalidation.tenant_message(name))
        return deleted

    def delete_user(self, tenant: str, local: str) -> bool:
        """Remove the whole user record (pin, password), announced like any change."""
        deleted = bool(self.client.delete(self.user_key(tenant, local)))
        self.publish(invalidation.user_message(*user_key_parts(tenant, local)))
        return deleted

    def put_user_fields(self, tenant: str, local: str, fields: dict[str, Any]) -> dict | None:
        """Merge ``fields`` into the user record (``None`` removes a field),
        keeping fields other writers own; an empty record is deleted.
        Returns the stored record, or ``None`` when deleted."""
        key = self.user_key(tenant, local)
        data = _editable_record(self.client.get(key))
        _merge_fields(data, fields)
        stored = _write_record(self.client, key, data)
        self.publish(invalidation.user_message(*user_key_parts(tenant, local)))
        return stored

    def update_user_field(
        self, tenant: str, local: str, name: str, change: Callable[[Any], Any]
    ) -> Any:
        """Replace field ``name`` of the user record with ``change(its value)``
        (``None`` when absent; returning ``None`` removes it), keeping every
        other field, in one transaction: a concurrent writer of the record
        (WATCH) makes it read and change again, so two operators adding app
        passwords at once both keep theirs. Returns the new value; announced
        like any change."""
        key = self.user_key(tenant, local)

        def in_transaction(pipe: Any) -> Any:
            data = _editable_record(pipe.get(key))
            value = change(data.get(name))
            _merge_fields(data, {name: value})
            pipe.multi()
            _write_record(pipe, key, data)
            return value

        value = self.client.transaction(in_transaction, key, value_from_callable=True)
        self.publish(invalidation.user_message(*user_key_parts(tenant, local)))
        return value

    def publish(self, message: str) -> None:
        invalidation.publish(self.client, self.prefix, message)

    # Running in the server.

    def watch(self, on_change: Callable[[str], None], on_resync: Callable[[], None]) -> None:
        """Subscribe to ``<prefix>:changes``; ``on_resync`` runs on every
        (re)subscription, since messages sent meanwhile are lost."""
        self._subscriber = invalidation.Subscriber(
            self.client, self.prefix, self.health, on_change, on_resync
        )
        self._subscriber.start()

    def reload(self, reason: str) -> bool:
        """Nothing to read again: records are read from Redis when they are needed."""
        return False

    def stop(self) -> None:
        if self._subscriber is not None:
            self._subscriber.stop()

    def reachable(self) -> bool:
        """Up as far as the shared health view knows; before any request has
        told, a PING decides (a fresh replica is not ready until Redis answers)."""
        if self.health.up is None and self.ping():
            self.health.ok()
        return bool(self.health.up)

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    def shared_redis(self) -> Any:
        return self.client

    def shared_health(self) -> RedisHealth:
        return self.health


def _editable_record(raw: bytes | str | None) -> dict[str, Any]:
    """A stored user record as fields to change; a corrupt one is replaced by the change."""
    if raw is None:
        return {}
    try:
        loaded = json.loads(raw)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _merge_fields(data: dict[str, Any], fields: dict[str, Any]) -> None:
    """Set each of ``fields`` in ``data``; ``None`` removes the field."""
    for field, value in fields.items():
        if value is None:
            data.pop(field, None)
        else:
            data[field] = value


def _write_record(target: Any, key: str, data: dict[str, Any]) -> dict[str, Any] | None:
    """Store ``data`` through ``target`` (the client, or a transaction's
    pipeline); a record left with no field but its version is deleted.
    Returns what was stored, or ``None`` when deleted."""
    data.setdefault("version", 1)
    if set(data) == {"version"}:
        target.delete(key)
        return None
    target.set(key, json.dumps(data, sort_keys=True))
    return data


class Directory:
    """Cached tenant and user lookups in front of a store."""

    def __init__(self, store: Store, config: DirectoryConfig) -> None:
        self.store = store
        self.cache: TTLCache[Tenant] = TTLCache(
            maxsize=config.cache_size,
            ttl=config.cache_ttl,
            negative_ttl=config.negative_ttl,
            stale_ttl=config.stale_ttl,
        )
        self.users: TTLCache[UserRecord] = TTLCache(
            maxsize=config.cache_size,
            ttl=config.cache_ttl,
            negative_ttl=config.negative_ttl,
            stale_ttl=config.stale_ttl,
            stale_negative=True,
        )
        self._bad_pins: set[tuple[str, str, str]] = set()
        self.on_kick: Callable[[str], None] | None = None
        """Gets each ``kick:`` message's rest (:mod:`pop3proxy.sessions`): set by the app."""
        self.on_user_change: Callable[[str | None, str | None], None] | None = None
        """Told of each changed user record (tenant, local part; ``None, None``:
        maybe any), for what the login remembers beside the directory's cache
        (:class:`pop3proxy.apppasswords.VerifiedCredentials`)."""

    def lookup(self, name: str) -> Tenant | None:
        """The tenant record, or ``None`` if no such tenant exists.

        Raises :class:`DirectoryUnavailable` if the store is down (or the
        record corrupt) and the tenant is not in the cache (fresh or stale).
        """
        if self.store.remote:
            tenant, source = self.cache.get_or_load(name, lambda: self.store.get(name))
        else:
            tenant, source = self.store.get(name), Source.LOAD
        if source == Source.LOAD:
            source = self.store.source_label if tenant is not None else "miss"
        metrics.add(metrics.DIRECTORY_LOOKUPS, source)
        return tenant

    def user_pin(self, tenant_name: str, local: str) -> str | None:
        """``host:port`` of the backend ``local@tenant_name`` is pinned to, if any
        (``local``: the canonical local part, as in every user record call).

        A pin is a routing preference: when the user's record cannot be read
        (Redis down and nothing cached, or the record corrupt) the login is
        routed by the tenant's policy instead of failing.
        """
        try:
            record = self.user_record(tenant_name, local)
        except DirectoryUnavailable:
            return None
        return record.backend if record is not None else None

    def user_record(self, tenant_name: str, local: str) -> UserRecord | None:
        """The user's record (pin, password hash), cached like tenants.

        Raises :class:`DirectoryUnavailable` when it cannot be read and
        nothing is cached.
        """
        if not self.store.remote:
            return self.store.get_user(tenant_name, local)
        key = ":".join(user_key_parts(tenant_name, local))
        record, _ = self.users.get_or_load(key, lambda: self.store.get_user(tenant_name, local))
        return record

    def update_password_hash(self, tenant_name: str, local: str, password_hash: str) -> None:
        """Store a new hash for the user, keeping the record's other fields.

        The store announces the change, so every proxy's cache (this one's
        too) drops the old record. Raises
        :class:`~pop3proxy.userrecords.UserRecordsUnsupported` for a store
        without user records.
        """
        self.store.put_user_fields(tenant_name, local, {"password_hash": password_hash})

    @property
    def redis(self) -> Any:
        """The Redis client shared with the limits, or ``None`` for a file store."""
        return self.store.shared_redis()

    @property
    def redis_health(self) -> RedisHealth | None:
        """The view of that Redis shared with the limits: one outage, one detection."""
        return self.store.shared_health()

    def pinned_backend(self, tenant: Tenant, local: str) -> str | None:
        """The pin if it names one of ``tenant``'s backends; a stale pin (the
        tenant moved) is logged once and ignored. A tenant with one backend
        has nothing to choose, so no record is read for it."""
        if len(tenant.backends) < 2:
            return None
        local = tenant.canonical_local(local)
        pin = self.user_pin(tenant.name, local)
        if pin is None:
            return None
        if any(backend.address == pin for backend in tenant.backends):
            return pin
        if (tenant.name, local, pin) not in self._bad_pins:
            self._bad_pins.add((tenant.name, local, pin))
            log.warning(
                "user pinned to a backend the tenant no longer has: pin ignored",
                extra={"tenant": tenant.name, "backend": pin},
            )
        return None

    def on_change(self, message: str) -> None:
        """An invalidation message from :mod:`pop3proxy.invalidation`."""
        kind, _, rest = message.partition(":")
        if kind == "kick":
            if self.on_kick is not None:
                self.on_kick(rest)
        elif kind == "tenant" and rest:
            self.cache.invalidate(rest.lower())
        elif kind == "user" and rest:
            tenant, _, local = rest.partition(":")
            self.users.invalidate(":".join(user_key_parts(tenant, local)))
            self._users_changed(*user_key_parts(tenant, local))
        else:  # "all", or a message from a newer version: be safe
            self.cache.clear()
            self.users.clear()
            self._users_changed(None, None)

    def _users_changed(self, tenant: str | None, local: str | None) -> None:
        if self.on_user_change is not None:
            self.on_user_change(tenant, local)

    def on_resync(self) -> None:
        """Changes may have been missed (the subscription was lost): every
        cached record becomes due for a reload, kept as a stale fallback."""
        self.cache.expire_all()
        self.users.expire_all()
        self._users_changed(None, None)

    def start(self) -> None:
        """Follow the store's changes: its change subscription or file watcher."""
        self.store.watch(self.on_change, self.on_resync)

    def reload(self) -> None:
        """SIGHUP: a tenants file is read again; cached records become due for a
        reload (kept as a stale fallback while the store is down)."""
        self.store.reload("SIGHUP")
        if self.store.remote:
            self.cache.expire_all()
            self.users.expire_all()
            log.info("directory cache expired on SIGHUP")

    def stop(self) -> None:
        self.store.stop()

    def ready(self) -> bool:
        """Can the directory answer logins? While the store can, or while the
        cache still holds records to serve from (a Redis outage)."""
        return self.store.reachable() or self.cache.servable() > 0


def open_store(config: DirectoryConfig) -> Store:
    """The store ``directory.store`` names."""
    if config.store == "file":
        assert config.file is not None
        return FileStore.load(Path(config.file))
    return RedisStore.from_config(config)


def open_directory(config: DirectoryConfig) -> Directory:
    return Directory(open_store(config), config)
