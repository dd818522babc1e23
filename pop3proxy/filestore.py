"""Tenant records from a YAML file: the store for small setups without Redis.

Same record shape as in Redis (:mod:`pop3proxy.tenants`). Validated at start,
reloaded on SIGHUP and when the file changes; a bad new file keeps the old
records and logs why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import yaml

from pop3proxy.tenants import RecordError, Tenant, parse_tenant
from pop3proxy.userrecords import UserRecord, UserRecordsUnsupported

log = logging.getLogger("pop3proxy.directory")

FILE_POLL_INTERVAL = 1.0
"""Seconds between checks of the file's identity and stamps."""


class FileStore:
    """Tenant records from a YAML file (``tenants:`` list).

    Validated at start (a bad file stops the start); reloaded on SIGHUP and
    when the file changes (mtime, size or inode, through symlinks, so a
    Kubernetes ConfigMap swap counts). A bad new file keeps the old records
    and logs why. It keeps no user records, and shares no Redis with the
    limits: they count per process.
    """

    source_label = "file"
    remote = False

    def __init__(
        self,
        tenants: dict[str, Tenant],
        path: Path | None = None,
        poll_interval: float = FILE_POLL_INTERVAL,
    ) -> None:
        self.tenants = tenants
        self.path = path
        self.poll_interval = poll_interval
        self._signature = _file_signature(path) if path is not None else None
        self._watcher: gevent.Greenlet | None = None
        self.reloads = 0

    @classmethod
    def load(cls, path: Path) -> FileStore:
        signature = _file_signature(path)
        store = cls(load_tenants_file(path), path)
        store._signature = signature
        return store

    def get(self, name: str) -> Tenant | None:
        return self.tenants.get(name)

    def get_user(self, tenant: str, local: str) -> UserRecord | None:
        return None

    def user_locals(self, tenant: str) -> Iterator[str]:
        return iter(())

    def put_user_fields(self, tenant: str, local: str, fields: dict[str, Any]) -> dict | None:
        raise UserRecordsUnsupported

    def delete_user(self, tenant: str, local: str) -> bool:
        raise UserRecordsUnsupported

    def reload(self, reason: str) -> bool:
        """Read the file again; on any problem keep the current records."""
        if self.path is None:
            return False
        self._signature = _file_signature(self.path)
        try:
            tenants = load_tenants_file(self.path)
        except RecordError as error:
            log.error(
                "tenants file rejected: keeping the previous records",
                extra={"file": str(self.path), "reason": reason, "problems": error.problems[:20]},
            )
            return False
        self.tenants = tenants
        self.reloads += 1
        log.info(
            "tenants file reloaded",
            extra={"file": str(self.path), "reason": reason, "tenants": len(tenants)},
        )
        return True

    def watch(self, on_change: Callable[[str], None], on_resync: Callable[[], None]) -> None:
        """Reload when the file changes. Nothing is cached in front of this
        store, so there is nobody to tell: the callbacks are not called."""
        self._watcher = gevent.spawn(self._watch)

    def _watch(self) -> None:
        while True:
            gevent.sleep(self.poll_interval)
            assert self.path is not None
            signature = _file_signature(self.path)
            if signature != self._signature:
                self.reload("file changed")

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.kill(block=False)

    def reachable(self) -> bool:
        return True

    def shared_redis(self) -> None:
        return None

    def shared_health(self) -> None:
        return None


def _file_signature(path: Path) -> tuple | None:
    """What changes when the file does: the target's identity and content
    stamps, and the link itself (a symlink swap may keep the mtime)."""
    try:
        target = os.stat(path)
        link = os.lstat(path)
    except OSError:
        return None
    return (target.st_dev, target.st_ino, target.st_mtime_ns, target.st_size, link.st_ino)


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
