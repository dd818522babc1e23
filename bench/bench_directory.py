#!/usr/bin/env python
"""The directory's lookup path: what a login pays for its tenant record.

    .venv/bin/python bench/bench_directory.py [--lookups 200000] [--logins 1000]

Starts a private redis-server on a free loopback port (tests/harness), then
measures, in this process and on gevent as the proxy runs:

1. a cached lookup (``Directory.lookup`` of a warm tenant): microseconds each;
2. a cold tenant asked for by N concurrent greenlets (N logins at once): how
   many Redis GETs that costs, counted by Redis itself (``INFO commandstats``,
   ``cmdstat_get``), expected 1 (single-flight);
3. a cache miss that goes to Redis: microseconds each (one round trip).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.redis import RedisServer  # noqa: E402

from pop3proxy.config import DirectoryConfig  # noqa: E402
from pop3proxy.directory import Directory, RedisStore  # noqa: E402
from pop3proxy.tenants import parse_tenant  # noqa: E402


def gets(server: RedisServer) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--logins", type=int, default=1000)
    parser.add_argument("--misses", type=int, default=2000)
    args = parser.parse_args()
    with RedisServer() as server:
        config = DirectoryConfig(redis_url=server.url, key_prefix="bench", cache_ttl=3600)
        store = RedisStore.from_config(config)
        for name in ("warm.example", "cold.example"):
            store.put(parse_tenant({"name": name, "backends": [{"host": "h", "port": 110}]}))
        for i in range(args.misses):
            store.put(parse_tenant({"name": f"m{i}.example", "backends": [{"host": "h"}]}))
        directory = Directory(RedisStore.from_config(config), config)

        directory.lookup("warm.example")
        started = time.perf_counter()
        for _ in range(args.lookups):
            directory.lookup("warm.example")
        cached_us = (time.perf_counter() - started) / args.lookups * 1e6

        before = gets(server)
        greenlets = [gevent.spawn(directory.lookup, "cold.example") for _ in range(args.logins)]
        gevent.joinall(greenlets, raise_error=True)
        cold_reads = gets(server) - before
        assert all(g.value is not None for g in greenlets)

        started = time.perf_counter()
        for i in range(args.misses):
            directory.lookup(f"m{i}.example")
        miss_us = (time.perf_counter() - started) / args.misses * 1e6

    result = {
        "cached_lookup_us": round(cached_us, 2),
        "concurrent_logins": args.logins,
        "redis_reads_for_cold_tenant": cold_reads,
        "redis_lookup_us": round(miss_us, 1),
    }
    print(f"cached lookup:                     {cached_us:8.2f} us")
    print(f"lookup from Redis (cache miss):    {miss_us:8.1f} us")
    print(f"Redis reads, {args.logins} concurrent logins, one cold tenant: {cold_reads}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
