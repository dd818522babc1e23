"""The directory on Redis as operators scale it: Sentinel (with a failover of
the master while the proxy serves) and Cluster (three real nodes).

Both use a cache_ttl of an hour, so a change that shows up at once came
through pub/sub, not through expiry.
"""

from __future__ import annotations

import shutil

import pytest
from harness.cluster import RedisClusterSet
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess
from harness.sentinel import SentinelSet
from integration.conftest import DEAD_BACKEND, store_tenants
from integration.test_directory import PROPAGATION, attempt, cli, metric

pytestmark = pytest.mark.skipif(
    shutil.which("redis-cli") is None or shutil.which("redis-server") is None,
    reason="redis-server and redis-cli are needed",
)


def test_sentinel_master_failover_while_serving(tmp_path, certs, dovecot):
    with SentinelSet() as sentinels:
        directory = {
            "sentinel": {"master": sentinels.master_name, "addresses": sentinels.addresses},
            "key_prefix": "sentinel",
            "cache_ttl": "1h",
        }
        proxy = ProxyProcess(tmp_path / "proxy", certs, {"directory": directory})
        store_tenants(proxy.config_path, dovecot)
        with proxy:
            assert attempt(proxy, f"alice@{TENANT}").startswith(b"+OK")
            old_master = sentinels.master_address()

            new_master = sentinels.failover()
            assert new_master != old_master
            assert attempt(proxy, f"bob@{TENANT}").startswith(b"+OK")  # cached, unaffected

            # The CLI finds the new master through the sentinels; the proxy's
            # subscription follows it, so the change still arrives.
            cli(proxy.config_path, "tenant", "set", TENANT, "--backend", DEAD_BACKEND)
            wait_until(
                lambda: attempt(proxy, f"alice@{TENANT}").startswith(b"-ERR [SYS/TEMP]"),
                10,
                message="the change made on the new master",
            )
            assert attempt(proxy, "alice@off.example").startswith(b"-ERR [AUTH]")
            assert metric(proxy, "pop3proxy_redis_up") == 1
            assert sentinels.replica.client().exists("sentinel:tenant:acme.example") or (
                sentinels.master.client().exists("sentinel:tenant:acme.example")
            )


def test_cluster_of_three_nodes_serves_and_invalidates(tmp_path, certs, dovecot):
    with RedisClusterSet() as cluster:
        directory = {"redis_url": cluster.url, "cluster": True, "cache_ttl": "1h"}
        proxy = ProxyProcess(tmp_path / "proxy", certs, {"directory": directory})
        store_tenants(proxy.config_path, dovecot)
        for i in range(6):  # keys spread over the slots of all three nodes
            cli(proxy.config_path, "tenant", "set", f"t{i}.example", "--backend", DEAD_BACKEND)
        holders = {node.port for node in cluster.nodes if node.client().dbsize() > 0}
        assert len(holders) > 1
        with proxy:
            assert attempt(proxy, f"alice@{TENANT}").startswith(b"+OK")
            listing = cli(proxy.config_path, "tenant", "list")
            assert all(f"t{i}.example" in listing for i in range(6))
            cli(proxy.config_path, "tenant", "set", TENANT, "--backend", DEAD_BACKEND, "--disabled")
            wait_until(
                lambda: attempt(proxy, f"alice@{TENANT}").startswith(b"-ERR [AUTH]"),
                PROPAGATION,
                message="the change, published on a cluster node",
            )
