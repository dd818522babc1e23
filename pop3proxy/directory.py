"""Tenant records: where they are stored, and the cached lookup in front.

Two stores share one record shape (:mod:`pop3proxy.tenants`): Redis, shared
by every replica and managed with ``pop3proxy tenant ...``, and a YAML file
for small setups without Redis. Logins only ever call
:meth:`Directory.lookup`, which answers from the in-process cache when it
can, so the hot path costs no round trip.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import redis
import yaml

from pop3proxy import metrics
from pop3proxy.cache import Source, TTLCache
from pop3proxy.config import DirectoryConfig
from pop3proxy.tenants import RecordError, Tenant, parse_tenant

log = logging.getLogger("pop3proxy.directory")


class DirectoryUnavailable(Exception):
    """The store cannot answer and nothing usable is cached: a temporary failure."""


class Store(Protocol):
    source_label: str
    """What ``pop3proxy_directory_lookups_total{source}`` says for a load."""

    def get(self, name: str) -> Tenant | None: ...


class RedisStore:
    """Tenant records as JSON under ``<prefix>:tenant:<name>``."""

    source_label = "redis"

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    @classmethod
    def from_config(cls, config: DirectoryConfig) -> RedisStore:
        client = redis.Redis.from_url(
            config.redis_url,
            socket_timeout=config.redis_timeout,
            socket_connect_timeout=config.redis_timeout,
            decode_responses=False,
        )
        return cls(client, config.key_prefix)

    def key(self, name: str) -> str:
        return f"{self.prefix}:tenant:{name}"

    def get(self, name: str) -> Tenant | None:
        started = time.perf_counter()
        try:
            raw = self.client.get(self.key(name))
        except redis.RedisError as error:
            metrics.REDIS_UP.set(0)
            raise DirectoryUnavailable(f"redis: {error}") from None
        metrics.REDIS_UP.set(1)
        metrics.DIRECTORY_REDIS_SECONDS.observe(time.perf_counter() - started)
        if raw is None:
            return None
        return decode_record(name, raw)

    def put(self, tenant: Tenant) -> None:
        self.client.set(self.key(tenant.name), json.dumps(tenant.to_dict(), sort_keys=True))

    def delete(self, name: str) -> bool:
        return bool(self.client.delete(self.key(name)))

    def names(self) -> Iterator[str]:
        prefix = f"{self.prefix}:tenant:"
        for key in self.client.scan_iter(match=prefix + "*", count=500):
            yield key.decode()[len(prefix) :]

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False


def decode_record(name: str, raw: bytes) -> Tenant:
    """Parse a stored record; a corrupt one fails only its own tenant."""
    try:
        return parse_tenant(json.loads(raw), path=f"tenant {name}")
    except (ValueError, RecordError) as error:
        log.error("corrupt tenant record", extra={"tenant": name, "error": str(error)})
        raise DirectoryUnavailable(f"corrupt record for tenant {name}") from None


class FileStore:
    """Tenant records from a YAML file (``tenants:`` list), read at start."""

    source_label = "file"

    def __init__(self, tenants: dict[str, Tenant]) -> None:
        self.tenants = tenants

    @classmethod
    def load(cls, path: Path) -> FileStore:
        return cls(load_tenants_file(path))

    def get(self, name: str) -> Tenant | None:
        return self.tenants.get(name)


def load_tenants_file(path: Path) -> dict[str, Tenant]:
    """Read and validate a tenants file; raises RecordError naming each problem."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RecordError([f"{path}: cannot read: {error.strerror}"]) from None
    except yaml.YAMLError as error:
        raise RecordError([f"{path}: not valid YAML: {error}"]) from None
    if not isinstance(data, dict) or not isinstance(data.get("tenants"), list):
        raise RecordError([f"{path}: expected a mapping with a 'tenants' list"])
    problems: list[str] = []
    tenants: dict[str, Tenant] = {}
    for i, item in enumerate(data["tenants"]):
        try:
            tenant = parse_tenant(item, path=f"tenants[{i}]")
        except RecordError as error:
            problems += error.problems
            continue
        if tenant.name in tenants:
            problems.append(f"tenants[{i}].name: duplicate tenant {tenant.name!r}")
        tenants[tenant.name] = tenant
    if set(data) - {"tenants"}:
        problems += [f"{key}: unknown key" for key in sorted(set(data) - {"tenants"})]
    if problems:
        raise RecordError(problems)
    return tenants


class Directory:
    """Cached tenant lookups in front of a store."""

    def __init__(self, store: Store, config: DirectoryConfig, stale_ttl: float = 3600.0) -> None:
        self.store = store
        self.cache: TTLCache[Tenant] = TTLCache(
            maxsize=config.cache_size,
            ttl=config.cache_ttl,
            negative_ttl=config.negative_ttl,
            stale_ttl=stale_ttl,
        )

    def lookup(self, name: str) -> Tenant | None:
        """The tenant record, or ``None`` if no such tenant exists.

        Raises :class:`DirectoryUnavailable` if the store is down and the
        tenant is not in the cache (fresh or stale).
        """
        tenant, source = self.cache.get_or_load(name, lambda: self.store.get(name))
        if source == Source.LOAD:
            source = self.store.source_label if tenant is not None else "miss"
        metrics.DIRECTORY_LOOKUPS.labels(source).inc()
        return tenant

    def ready(self) -> bool:
        """Can the directory answer? A file always can; Redis when it pings,
        or while the cache still holds records to serve from."""
        if isinstance(self.store, RedisStore):
            return self.store.ping() or len(self.cache) > 0
        return True


def open_directory(config: DirectoryConfig) -> Directory:
    if config.store == "file":
        assert config.file is not None
        return Directory(FileStore.load(Path(config.file)), config)
    return Directory(RedisStore.from_config(config), config)
