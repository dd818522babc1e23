"""The directory asks its store only through the :class:`Store` interface:
any store that implements it works, and a tenants file says "no user
records" in one way. No servers: an in-memory store and a real file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pop3proxy.config import DirectoryConfig
from pop3proxy.directory import Directory
from pop3proxy.filestore import FileStore
from pop3proxy.tenants import Tenant, parse_tenant
from pop3proxy.userrecords import UserRecord, UserRecordsUnsupported, parse_user_record


class MemoryStore:
    """A remote store kept in a dict: neither of the two the project ships."""

    source_label = "memory"
    remote = True

    def __init__(self) -> None:
        self.tenants: dict[str, Tenant] = {}
        self.users: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads = 0
        self.up = True
        self.on_change: Callable[[str], None] | None = None
        self.stopped = False

    def get(self, name: str) -> Tenant | None:
        self.reads += 1
        return self.tenants.get(name)

    def get_user(self, tenant: str, local: str) -> UserRecord | None:
        data = self.users.get((tenant, local))
        return None if data is None else parse_user_record(tenant, local, data)

    def user_locals(self, tenant: str) -> Iterator[str]:
        return (local for (owner, local) in self.users if owner == tenant)

    def put_user_fields(self, tenant: str, local: str, fields: dict[str, Any]) -> dict | None:
        record = self.users.setdefault((tenant, local), {"version": 1})
        record.update(fields)
        assert self.on_change is not None
        self.on_change(f"user:{tenant}:{local}")
        return record

    def delete_user(self, tenant: str, local: str) -> bool:
        return self.users.pop((tenant, local), None) is not None

    def watch(self, on_change: Callable[[str], None], on_resync: Callable[[], None]) -> None:
        self.on_change = on_change

    def reload(self, reason: str) -> bool:
        return False

    def stop(self) -> None:
        self.stopped = True

    def reachable(self) -> bool:
        return self.up

    def shared_redis(self) -> Any:
        return "the shared client"

    def shared_health(self) -> None:
        return None


def tenant(name: str, *ports: int) -> Tenant:
    return parse_tenant({"name": name, "backends": [{"host": "h", "port": p} for p in ports]})


def test_any_store_that_implements_the_interface_is_cached_watched_and_written():
    store = MemoryStore()
    store.tenants["a.example"] = tenant("a.example", 1, 2)
    directory = Directory(store, DirectoryConfig(cache_ttl=3600))
    directory.start()
    assert store.on_change is not None, "start() follows the store's changes"
    assert directory.redis == "the shared client"
    directory.lookup("a.example")
    directory.lookup("a.example")
    assert store.reads == 1, "a remote store is read once, then the cache answers"

    store.users[("a.example", "alice")] = {"version": 1, "backend": "h:2"}
    assert directory.pinned_backend(directory.lookup("a.example"), "alice") == "h:2"
    directory.update_password_hash("a.example", "alice", "$argon2id$new")
    record = directory.user_record("a.example", "alice")
    assert record is not None and record.password_hash == "$argon2id$new"
    assert record.backend == "h:2", "a rehash keeps the pin"

    store.up = False
    assert directory.ready(), "the cache still holds a record to serve"
    directory.stop()
    assert store.stopped


def test_a_tenants_file_has_no_user_records_and_no_shared_redis(tmp_path):
    path = tmp_path / "tenants.yaml"
    path.write_text("tenants: [{name: a.example, backends: [{host: h}, {host: i}]}]\n")
    directory = Directory(FileStore.load(path), DirectoryConfig())
    found = directory.lookup("a.example")
    assert found is not None
    assert directory.pinned_backend(found, "alice") is None
    assert directory.user_record("a.example", "alice") is None
    assert directory.redis is None and directory.redis_health is None
    assert directory.ready()
    with pytest.raises(UserRecordsUnsupported, match="kept in Redis only"):
        directory.update_password_hash("a.example", "alice", "$argon2id$new")
    with pytest.raises(UserRecordsUnsupported):
        directory.store.delete_user("a.example", "alice")
