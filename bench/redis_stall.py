#!/usr/bin/env python
"""Greeting and login latency with Redis hung (SIGSTOP), next to Redis healthy.

    .venv/bin/python bench/redis_stall.py                   # 200 greetings, 50 logins each
    .venv/bin/python bench/redis_stall.py --tree /tmp/old --connections 10 --logins 3

A Redis that hangs (stopped, overloaded, a network path that drops packets)
accepts connections and answers nothing, so each request waits for
``directory.redis_timeout``. This starts a private redis-server, Dovecot and
pop3proxy on 127.0.0.1 (the per-address connection limit and the failed-login
budgets in Redis, as in production), then measures, one client at a time:
the time from connect to the greeting, and from connect to the ``+OK`` of
PASS for a user of a cached tenant; first with Redis running, then with it
stopped by SIGSTOP. The first connection after the stop, which finds out,
is reported on its own. ``--tree`` runs the proxy of another checkout.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from harness.certs import make_certs  # noqa: E402
from harness.dovecot import Dovecot  # noqa: E402
from harness.proxy import TENANT, ProxyProcess  # noqa: E402
from harness.redis import RedisServer  # noqa: E402
from harness.users import USERS  # noqa: E402
from harness.wire import Pop3Wire  # noqa: E402

from pop3proxy.directory import RedisStore  # noqa: E402
from pop3proxy.tenants import parse_tenant  # noqa: E402

PREFIX = "stall"


def greeting(proxy: ProxyProcess) -> float:
    started = time.perf_counter()
    with Pop3Wire(proxy.host, proxy.ports["plain"], timeout=60) as wire:
        elapsed = time.perf_counter() - started
        assert wire.greeting.startswith(b"+OK"), wire.greeting
        wire.command("QUIT")
    return elapsed


def login(proxy: ProxyProcess) -> float:
    """Connect to the ``+OK`` of PASS; then QUIT and wait for the close."""
    started = time.perf_counter()
    with Pop3Wire(proxy.host, proxy.ports["plain"], timeout=60) as wire:
        wire.login(f"alice@{TENANT}", USERS["alice"])
        elapsed = time.perf_counter() - started
        assert wire.command("QUIT").startswith(b"+OK")
        wire.read_line()
    return elapsed


def figures(samples: list[float]) -> str:
    if len(samples) < 2:
        return "   ".join(f"{1000 * s:8.1f}" for s in samples)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return f"{1000 * cuts[49]:8.1f} {1000 * cuts[98]:8.1f} {1000 * max(samples):8.1f}"


def measure(what: Callable[[ProxyProcess], float], proxy: ProxyProcess, count: int) -> list[float]:
    return [what(proxy) for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=200, help="greetings per phase")
    parser.add_argument("--logins", type=int, default=50, help="logins per phase")
    parser.add_argument("--tree", help="a checkout whose pop3proxy runs (default: this one)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pop3proxy-redis-stall-"))
    if args.tree:
        os.environ["PYTHONPATH"] = str(Path(args.tree).resolve())
        os.chdir(workdir)  # ``python -m`` puts the working directory first on the path
    certs = make_certs(workdir / "certs")
    with RedisServer() as redis_server, Dovecot(USERS, certs=certs) as dovecot:
        store = RedisStore(redis_server.client(), PREFIX)
        backend = {"host": dovecot.host, "port": dovecot.port}
        store.put(parse_tenant({"name": TENANT, "backends": [backend]}))
        overrides = {
            "directory": {"store": "redis", "redis_url": redis_server.url, "key_prefix": PREFIX},
            "logging": {"level": "warning", "format": "json"},
            "limits": {"max_connections_per_address": 100, "max_sessions_per_user": 10},
            "auth": {"allow": [], "failure_delay": "0s"},
        }
        with ProxyProcess(workdir / "proxy", certs, overrides) as proxy:
            login(proxy)  # the tenant is cached
            healthy = measure(greeting, proxy, args.connections)
            healthy_logins = measure(login, proxy, args.logins)
            assert redis_server.pid is not None
            os.kill(redis_server.pid, signal.SIGSTOP)
            try:
                first = greeting(proxy)
                stopped = measure(greeting, proxy, args.connections)
                stopped_logins = measure(login, proxy, args.logins)
            finally:
                os.kill(redis_server.pid, signal.SIGCONT)
    print(f"{args.connections} greetings and {args.logins} logins per phase, one client at a time")
    header = f"{'greeting p50':>12} {'p99':>8} {'max':>8}   {'login p50':>9} {'p99':>8} {'max':>8}"
    print(f"{'ms':16} {header}")
    print(f"{'redis healthy':16} {figures(healthy):>30}   {figures(healthy_logins)}")
    print(f"{'redis SIGSTOPped':16} {figures(stopped):>30}   {figures(stopped_logins)}")
    print(f"first greeting after the stop (finding out): {1000 * first:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
