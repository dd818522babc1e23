"""Tenant and user records: where they are stored, and the cached lookup in front.

Two stores share one record shape (:mod:`pop3proxy.tenants`): Redis, shared
by every replica and managed with ``pop3proxy tenant ...``, and a YAML file
for small setups without Redis. Logins only ever call
:meth:`Directory.lookup` and :meth:`Directory.user_pin`, which answer from
the in-process cache when they can, so the hot path costs no round trip.

Redis connections are built in :mod:`pop3proxy.redisconn`, cache
invalidation over pub/sub lives in :mod:`pop3proxy.invalidation`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import redis

from pop3proxy import invalidation, metrics
from pop3proxy.cache import Source, TTLCache
from pop3proxy.config import DirectoryConfig
from pop3proxy.filestore import FileStore
from pop3proxy.redisconn import RedisHealth, connect, describe
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
    source_label: str
    """What ``pop3proxy_directory_lookups_total{source}`` says for a load."""

    def get(self, name: str) -> Tenant | None: ...

    def get_user(self, tenant: str, local: str) -> UserRecord | None: ...


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

    def __init__(self, client: Any, prefix: str, health: RedisHealth | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.health = health or RedisHealth("redis")
        self.corrupt = CorruptLog()

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

    # Writes: the admin commands. Each announces the change.

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
        raw = self.client.get(key)
        data: dict[str, Any] = {}
        if raw is not None:
            try:
                loaded = json.loads(raw)
                data = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                data = {}  # corrupt: the new record replaces it
        for field, value in fields.items():
            if value is None:
                data.pop(field, None)
            else:
                data[field] = value
        data.setdefault("version", 1)
        if set(data) == {"version"}:
            self.client.delete(key)
            stored = None
        else:
            self.client.set(key, json.dumps(data, sort_keys=True))
            stored = data
        self.publish(invalidation.user_message(*user_key_parts(tenant, local)))
        return stored

    def publish(self, message: str) -> None:
        invalidation.publish(self.client, self.prefix, message)

    def names(self) -> Iterator[str]:
        prefix = f"{self.prefix}:tenant:"
        for key in self.client.scan_iter(match=prefix + "*", count=500):
            yield (key.decode() if isinstance(key, bytes) else key)[len(prefix) :]

    def raw(self, name: str) -> bytes | None:
        return self.client.get(self.key(name))

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False


class Directory:
    """Cached tenant and user lookups in front of a store."""

    def __init__(self, store: Store, config: DirectoryConfig) -> None:
        self.store = store
        self.config = config
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
        self.subscriber: invalidation.Subscriber | None = None
        self._bad_pins: set[tuple[str, str, str]] = set()

    def lookup(self, name: str) -> Tenant | None:
        """The tenant record, or ``None`` if no such tenant exists.

        Raises :class:`DirectoryUnavailable` if the store is down (or the
        record corrupt) and the tenant is not in the cache (fresh or stale).
        """
        if isinstance(self.store, FileStore):
            tenant = self.store.get(name)
            metrics.add(metrics.DIRECTORY_LOOKUPS, "file" if tenant is not None else "miss")
            return tenant
        tenant, source = self.cache.get_or_load(name, lambda: self.store.get(name))
        if source == Source.LOAD:
            source = self.store.source_label if tenant is not None else "miss"
        metrics.add(metrics.DIRECTORY_LOOKUPS, source)
        return tenant

    def user_pin(self, tenant_name: str, local: str) -> str | None:
        """``host:port`` of the backend ``local@tenant_name`` is pinned to, if any
        (``local``: the canonical local part, as in every user record call).

        A pin is a routing preference: when the user's record cannot be read
        (Redis down and nothing cached, or the record corrupt) the login is
        routed by the tenant's policy instead of failing. A tenant with one
        backend has nothing to choose, so no record is read for it.
        """
        try:
            record = self.user_record(tenant_name, local)
        except DirectoryUnavailable:
            return None
        return record.backend if record is not None else None

    def user_record(self, tenant_name: str, local: str) -> UserRecord | None:
        """The user's record (pin, password hash), cached like tenants.

        Raises :class:`DirectoryUnavailable` when it cannot be read and
        nothing is cached; a file store has no user records.
        """
        if isinstance(self.store, FileStore):
            return None
        key = ":".join(user_key_parts(tenant_name, local))
        record, _ = self.users.get_or_load(key, lambda: self.store.get_user(tenant_name, local))
        return record

    @property
    def redis(self) -> Any:
        """The Redis client shared with the limits, or ``None`` for a file store."""
        return self.store.client if isinstance(self.store, RedisStore) else None

    @property
    def redis_health(self) -> RedisHealth | None:
        """The view of that Redis shared with the limits: one outage, one detection."""
        return self.store.health if isinstance(self.store, RedisStore) else None

    def pinned_backend(self, tenant: Tenant, local: str) -> str | None:
        """The pin if it names one of ``tenant``'s backends; a stale pin (the
        tenant moved) is logged once and ignored."""
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
        if kind == "tenant" and rest:
            self.cache.invalidate(rest.lower())
        elif kind == "user" and rest:
            tenant, _, local = rest.partition(":")
            self.users.invalidate(":".join(user_key_parts(tenant, local)))
        else:  # "all", or a message from a newer version: be safe
            self.cache.clear()
            self.users.clear()

    def on_subscribed(self) -> None:
        """(Re)subscribed: changes may have been missed; reload everything."""
        self.cache.expire_all()
        self.users.expire_all()

    def start(self) -> None:
        """Background work: the change subscription (Redis) or the file watcher."""
        if isinstance(self.store, RedisStore):
            self.subscriber = invalidation.Subscriber(
                self.store.client,
                self.store.prefix,
                self.store.health,
                self.on_change,
                self.on_subscribed,
            )
            self.subscriber.start()
        elif isinstance(self.store, FileStore):
            self.store.watch()

    def reload(self) -> None:
        """SIGHUP: reread a tenants file; with Redis, drop the cache."""
        if isinstance(self.store, FileStore):
            self.store.reload("SIGHUP")
        else:
            self.cache.expire_all()
            self.users.expire_all()
            log.info("directory cache expired on SIGHUP")

    def stop(self) -> None:
        if self.subscriber is not None:
            self.subscriber.stop()
        if isinstance(self.store, FileStore):
            self.store.stop()

    def ready(self) -> bool:
        """Can the directory answer logins? A file always can; Redis while it
        is reachable, or while the cache still holds records to serve from."""
        if isinstance(self.store, RedisStore):
            if self.store.health.up is None and self.store.ping():
                self.store.health.ok()
            return bool(self.store.health.up) or self.cache.servable() > 0
        return True


def open_directory(config: DirectoryConfig) -> Directory:
    if config.store == "file":
        assert config.file is not None
        return Directory(FileStore.load(Path(config.file)), config)
    return Directory(RedisStore.from_config(config), config)
