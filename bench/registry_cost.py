#!/usr/bin/env python
"""What the session registry (``pop3proxy who`` / ``kick``) costs a session.

    .venv/bin/python bench/registry_cost.py before=/tmp/old after=.

``bench/compare.py`` runs the proxies with a tenants file, where there is no
registry; this runs each ``NAME=PATH`` tree as a proxy with its directory in
Redis (a redis-server of its own, so Redis's command counts are that tree's),
all against one Dovecot, and drives full sessions (login, STAT, LIST, UIDL,
RETR 1, QUIT) at a few concurrent clients, the trees taken in turn for
several rounds. Prints per tree the median CPU per session (user + system
of the proxy process) and the Redis commands per session counted by Redis
(``INFO commandstats``; the registry's are written once a second per
replica in one pipeline, whatever the number of sessions).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", metavar="NAME=PATH")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=400, help="sessions per round and tree")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)

    from harness.certs import make_certs
    from harness.dovecot import Dovecot
    from harness.mailbox import big_message
    from harness.proxy import ProxyProcess
    from harness.redis import RedisServer
    from load import run_sessions
    from procstat import cpu_seconds

    from pop3proxy.directory import RedisStore
    from pop3proxy.tenants import parse_tenant

    trees = dict(tree.split("=", 1) for tree in args.trees) or {"pop3proxy": str(HERE.parent)}
    workdir = Path(tempfile.mkdtemp(prefix="pop3proxy-registry-cost-"))
    os.chdir(workdir)  # ``python -m`` puts the working directory first on the path
    certs = make_certs(workdir / "certs")
    users = {f"user{number}": f"secret-{number}" for number in range(args.concurrency)}
    tenant = "bench.example"
    with contextlib.ExitStack() as stack:
        dovecot = stack.enter_context(Dovecot(users, certs=certs))
        for user in users:
            dovecot.deliver(user, [big_message(20_000, seed=user.encode())])
        proxies = {}
        for name, path in trees.items():
            redis_server = stack.enter_context(RedisServer())
            store = RedisStore(redis_server.client(), "bench")
            backend = {"host": dovecot.host, "port": dovecot.port}
            store.put(parse_tenant({"name": tenant, "backends": [backend]}))
            os.environ["PYTHONPATH"] = str(Path(path).resolve())
            overrides = {
                "directory": {
                    "store": "redis",
                    "redis_url": redis_server.url,
                    "key_prefix": "bench",
                },
                "logging": {"level": "warning", "format": "json"},
                "auth": {"allow": [], "failure_delay": "0s"},
            }
            proxy = stack.enter_context(ProxyProcess(workdir / name, certs, overrides))
            proxies[name] = (proxy, redis_server.client())
        logins = [(f"{user}@{tenant}", password) for user, password in users.items()]
        cpu: dict[str, list[float]] = {name: [] for name in trees}
        commands: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(args.rounds):
            for name, (proxy, client) in proxies.items():
                pid = proxy.proc.pid
                calls_before = _redis_calls(client)
                cpu_before = cpu_seconds([pid])
                result = run_sessions(
                    proxy.ports["plain"], False, certs.ca_file, logins,
                    args.concurrency, 600.0, args.sessions,
                )  # fmt: skip
                cpu[name].append((cpu_seconds([pid]) - cpu_before) / result.sessions)
                calls = _redis_calls(client) - calls_before - 1  # INFO itself
                commands[name].append(calls / result.sessions)
        first = statistics.median(cpu[next(iter(trees))])
        print(f"{'tree':12} {'CPU ms/session':>15} {'ratio':>7} {'Redis commands/session':>23}")
        for name in trees:
            median = statistics.median(cpu[name])
            print(
                f"{name:12} {1000 * median:15.3f} {median / first:7.3f} "
                f"{statistics.median(commands[name]):23.2f}"
            )
    return 0


def _redis_calls(client: Any) -> int:
    return sum(int(stats["calls"]) for stats in client.info("commandstats").values())


if __name__ == "__main__":
    sys.exit(main())
