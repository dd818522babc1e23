#!/usr/bin/env python
"""CPU per login with an app password, first and repeated, next to a passthrough login.

    .venv/bin/python bench/app_password_cost.py [--logins 200] [--rounds 3]

Runs one proxy process with its directory in Redis, in front of a Dovecot
with a master user, and logs in one client at a time (USER, PASS, QUIT) in
three ways, in turn for several rounds: the mailbox password of a
passthrough tenant (Dovecot judges it: the baseline), an app password the
replica has not seen (one argon2id check, then the backend login as the
master user), and an app password it verified a moment ago (the verified
cache: no argon2). Prints per way the median CPU per login of the proxy
process (user + system, argon2's thread-pool threads included) and the
Redis commands per login counted by Redis (``INFO commandstats``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

MASTER_ENV = "POP3PROXY_BENCH_MASTER_PASSWORD"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=200, help="logins per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    from harness.certs import make_certs
    from harness.dovecot import Dovecot
    from harness.proxy import ProxyProcess
    from harness.redis import RedisServer
    from harness.wire import Pop3Wire
    from procstat import cpu_seconds

    from pop3proxy.apppasswords import RECORD_FIELD, new_app_password
    from pop3proxy.directory import RedisStore
    from pop3proxy.tenants import parse_tenant

    workdir = Path(tempfile.mkdtemp(prefix="pop3proxy-app-password-cost-"))
    os.chdir(workdir)
    certs = make_certs(workdir / "certs")
    tenant = "bench.example"
    os.environ[MASTER_ENV] = "bench-master-secret"
    with contextlib.ExitStack() as stack:
        dovecot = stack.enter_context(
            Dovecot(
                {"alice": "alice-secret"},
                certs=certs,
                master_users={"proxymaster": os.environ[MASTER_ENV]},
            )
        )
        redis_server = stack.enter_context(RedisServer())
        client = redis_server.client()
        store = RedisStore(client, "bench")
        store.put(
            parse_tenant(
                {
                    "name": tenant,
                    "backends": [{"host": dovecot.host, "port": dovecot.port}],
                    "app_passwords": "allowed",
                    "master_user": "proxymaster",
                    "master_password_env": MASTER_ENV,
                }
            )
        )
        overrides = {
            "directory": {"store": "redis", "redis_url": redis_server.url, "key_prefix": "bench"},
            "logging": {"level": "warning", "format": "json"},
            "auth": {"allow": [], "failure_delay": "0s"},
        }
        proxy = stack.enter_context(ProxyProcess(workdir / "proxy", certs, overrides))
        pid = proxy.proc.pid
        user = f"alice@{tenant}"

        def fresh_passwords(count: int) -> list[str]:
            """``count`` new app passwords of alice, stored as ``app-password add`` does."""
            made = [new_app_password([], f"device {n}") for n in range(count)]

            def with_new(current: Any) -> dict[str, Any]:
                return {**(current or {}), **{entry.id: entry.stored() for _, entry in made}}

            store.update_user_field(tenant, "alice", RECORD_FIELD, with_new)
            return [password for password, _ in made]

        def login(password: str) -> None:
            with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
                wire.command(f"USER {user}")
                reply = wire.command(f"PASS {password}")
                assert reply.startswith(b"+OK"), reply
                wire.command("QUIT")

        def measure(passwords: list[str]) -> tuple[float, float]:
            calls_before = _redis_calls(client)
            cpu_before = cpu_seconds([pid])
            for password in passwords:
                login(password)
            cpu = (cpu_seconds([pid]) - cpu_before) / len(passwords)
            return cpu, (_redis_calls(client) - calls_before - 1) / len(passwords)

        repeated = fresh_passwords(1)[0]
        login(repeated)  # verified once: from here on from the cache
        ways: dict[str, Callable[[], list[str]]] = {
            "passthrough password": lambda: ["alice-secret"] * args.logins,
            "app password, first": lambda: fresh_passwords(args.logins),
            "app password, repeat": lambda: [repeated] * args.logins,
        }
        cpu: dict[str, list[float]] = {name: [] for name in ways}
        commands: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, passwords in ways.items():
                chosen = passwords()
                if name == "app password, first":
                    # the record change reaches the proxy's cache on the change channel
                    login(chosen.pop())
                seconds, calls = measure(chosen)
                cpu[name].append(seconds)
                commands[name].append(calls)
            store.update_user_field(tenant, "alice", RECORD_FIELD, lambda current: None)
            repeated = fresh_passwords(1)[0]
            login(repeated)
        results = {
            name: {
                "cpu_ms_per_login": round(1000 * statistics.median(cpu[name]), 2),
                "redis_commands_per_login": round(statistics.median(commands[name]), 2),
            }
            for name in ways
        }
        print(f"{'login':24} {'CPU ms/login':>13} {'Redis commands/login':>21}")
        for name, figures in results.items():
            print(
                f"{name:24} {figures['cpu_ms_per_login']:13.2f} "
                f"{figures['redis_commands_per_login']:21.2f}"
            )
        print(json.dumps(results))
    return 0


def _redis_calls(client: Any) -> int:
    return sum(int(stats["calls"]) for stats in client.info("commandstats").values())


if __name__ == "__main__":
    sys.exit(main())
