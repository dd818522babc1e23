"""A real Redis Cluster: three ``redis-server --cluster-enabled yes`` masters
on free loopback ports, joined with ``redis-cli --cluster create``.

Three masters and no replicas is the smallest cluster ``redis-cli`` builds;
the 16384 hash slots are split between them, so a handful of tenant keys
land on different nodes.
"""

from __future__ import annotations

import socket
import subprocess
from types import TracebackType

import redis

from .ports import LOOPBACK, free_port, wait_until
from .sentinel import RedisNode

START_TIMEOUT = 30.0
BUS_OFFSET = 10000
"""A node's cluster bus listens on its port + 10000, so the port must be
<= 55535 and that second port free as well."""


def cluster_port() -> int:
    for _ in range(200):
        port = free_port()
        if port + BUS_OFFSET <= 65535 and port_is_free(port + BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


class RedisClusterSet:
    def __init__(self, nodes: int = 3) -> None:
        self.nodes = [
            RedisNode(
                [
                    "cluster-enabled yes",
                    "cluster-config-file nodes.conf",
                    "cluster-node-timeout 2000",
                ],
                name="cluster",
                port=cluster_port(),
            )
            for _ in range(nodes)
        ]

    @property
    def url(self) -> str:
        """A seed node; clients discover the others."""
        return f"redis://{self.nodes[0].address}/0"

    def start(self) -> RedisClusterSet:
        for node in self.nodes:
            node.start()
        argv = [
            "redis-cli", "--cluster", "create",
            *(node.address for node in self.nodes),
            "--cluster-replicas", "0", "--cluster-yes",
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}"
            )
        wait_until(self._ok, START_TIMEOUT, interval=0.1, message="cluster_state:ok on every node")
        return self

    def _ok(self) -> bool:
        for node in self.nodes:
            try:
                info = node.client().execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        return True

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(
            host=self.nodes[0].host, port=self.nodes[0].port, socket_timeout=2.0
        )

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisClusterSet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
