"""Redis as operators run it beyond one plain server: any ``redis-server``
with extra settings (TLS, ACL users), and a Sentinel-managed master.

:class:`RedisNode` is one ``redis-server`` child with a config file of our
choosing, on a free loopback port. :class:`SentinelSet` starts a master, a
replica and N ``redis-server --sentinel`` processes watching them, and can
fail the master over while a test runs.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import redis

from . import process
from .ports import LOOPBACK, free_port, wait_until

START_TIMEOUT = 10.0
FAILOVER_TIMEOUT = 30.0


class RedisNode(process.ServerProcess):
    """``redis-server CONFIG`` with ``settings`` (lines of redis.conf) appended.

    ``client_kwargs`` is what a client needs to talk to it (TLS, ACL user).
    ``sentinel=True`` runs it as a sentinel.
    """

    def __init__(
        self,
        settings: Iterable[str] = (),
        *,
        port: int | None = None,
        sentinel: bool = False,
        tls: bool = False,
        client_kwargs: dict | None = None,
        name: str = "redis",
    ) -> None:
        self.host = LOOPBACK
        self.port = port or free_port()
        self.settings = list(settings)
        self.sentinel = sentinel
        self.tls = tls
        self.client_kwargs = dict(client_kwargs or {})
        self.directory = Path(tempfile.mkdtemp(prefix=f"pop3proxy-{name}-"))
        self._remove_files = weakref.finalize(self, shutil.rmtree, self.directory, True)
        self.config_path = self.directory / "redis.conf"
        self.log_path = self.directory / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self, **kwargs: object) -> redis.Redis:
        options: dict[str, object] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
        options.update(self.client_kwargs)
        options.update(kwargs)
        return redis.Redis(host=self.host, port=self.port, **options)

    def _write_config(self) -> None:
        port_line = f"tls-port {self.port}\nport 0" if self.tls else f"port {self.port}"
        lines = [
            f"bind {self.host}",
            port_line,
            'save ""',
            "appendonly no",
            f"dir {self.directory}",
            "daemonize no",
            *self.settings,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        if self.running:
            return
        if not self.config_path.exists():  # a sentinel rewrites its file: keep it
            self._write_config()
        argv = ["redis-server", str(self.config_path)]
        if self.sentinel:
            argv.append("--sentinel")
        self._proc = process.spawn(argv, self.log_path)
        try:
            wait_until(self._ready, START_TIMEOUT, message=f"redis-server on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(
                f"redis-server exited with {self._proc.returncode}:\n{self.read_log()[-2000:]}"
            )
        client = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return client.ping() and client.info("server")["process_id"] == self._proc.pid
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()


class SentinelSet:
    """A master, one replica, and ``sentinels`` sentinels (quorum 1) on loopback."""

    def __init__(self, master_name: str = "pop3master", sentinels: int = 1) -> None:
        self.master_name = master_name
        self.master = RedisNode(name="master")
        self.replica = RedisNode([f"replicaof {LOOPBACK} {self.master.port}"], name="replica")
        self.sentinels = [
            RedisNode(
                [
                    f"sentinel monitor {master_name} {LOOPBACK} {self.master.port} 1",
                    f"sentinel down-after-milliseconds {master_name} 1000",
                    f"sentinel failover-timeout {master_name} 10000",
                    f"sentinel parallel-syncs {master_name} 1",
                ],
                sentinel=True,
                name="sentinel",
            )
            for _ in range(sentinels)
        ]

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self.sentinels]

    def start(self) -> SentinelSet:
        self.master.start()
        self.replica.start()
        wait_until(self._replica_in_sync, START_TIMEOUT, message="replica in sync")
        for node in self.sentinels:
            node.start()
        wait_until(self._sentinels_see_replica, START_TIMEOUT, message="sentinels see replica")
        return self

    def _replica_in_sync(self) -> bool:
        info = self.replica.client().info("replication")
        return info.get("master_link_status") == "up"

    def _sentinels_see_replica(self) -> bool:
        for node in self.sentinels:
            replicas = node.client().sentinel_slaves(self.master_name)
            # Promotable: connected (no "disconnected" flag) with a working link.
            if not any(
                r.get("port") == self.replica.port
                and r.get("flags") == "slave"
                and r.get("master-link-status") == "ok"
                for r in replicas
            ):
                return False
        return True

    def master_address(self) -> tuple[str, int]:
        host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(self.master_name)
        return (host.decode() if isinstance(host, bytes) else host), int(port)

    def failover(self) -> tuple[str, int]:
        """SENTINEL FAILOVER: the replica becomes master; returns its address
        once the sentinel and the new master both say so."""
        before = self.master_address()
        self.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", self.master_name)

        def promoted() -> tuple[str, int] | None:
            now = self.master_address()
            if now == before:
                return None
            node = self.replica if now[1] == self.replica.port else self.master
            return now if node.client().info("replication")["role"] == "master" else None

        return wait_until(promoted, FAILOVER_TIMEOUT, interval=0.1, message="failover")

    def close(self) -> None:
        for node in [*self.sentinels, self.replica, self.master]:
            node.close()

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
