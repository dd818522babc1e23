#!/usr/bin/env python
"""What Redis costs a login, and what a hung Redis costs: three measurements.

    .venv/bin/python bench/redis_costs.py stall [--tree /tmp/old]  # latency, Redis hung
    .venv/bin/python bench/redis_costs.py limits [before=/tmp/old after=.]  # per login
    .venv/bin/python bench/redis_costs.py lookup                    # tenant lookups
    .venv/bin/python bench/redis_costs.py budget                    # download budget

``bench/run.py`` measures pop3proxy with a file directory, where budgets and
leases stay in memory; in production the tenant records, the failed-login
budgets and the session leases live in Redis, shared by the replicas. Each
subcommand starts a private redis-server on 127.0.0.1 (``tests/harness``):

``stall``: Redis, Dovecot and pop3proxy (the per-address connection limit
and the budgets in Redis), one client at a time: the time from connect to
the greeting, and from connect to the ``+OK`` of PASS for a user of a cached
tenant; first with Redis running, then with it stopped by SIGSTOP (a hung
Redis accepts connections and answers nothing). The first connection after
the stop, which finds out, is reported on its own. ``--tree`` runs the proxy
of another checkout.

``limits``: what one successful login asks of Redis (the budget check, the
tenant and user slots, the login history's entry, giving them back): Redis
requests and time per login, for each ``NAME=PATH`` tree in a process of
its own.

``lookup``: in this process, on gevent as the proxy runs: a cached lookup
(microseconds), a cold tenant asked for by N concurrent logins (the Redis
GETs it costs, counted by Redis itself: 1 with single-flight), and a cache
miss that goes to Redis (one round trip).

``budget``: what ``limits.download_per_user_day`` costs: a login's Redis
round trips with the budget off and on (the login's budget and delay checks
and its meter, which read memory only), a meter's ``add`` per relayed
chunk, and one flush of N downloading users' bytes (its round trips, its
time and the Redis commands it sends), first of a day (INCRBY and
EXPIREAT) and then (INCRBY only).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    stall = commands.add_parser("stall", help="greeting and login latency with Redis hung")
    stall.add_argument("--connections", type=int, default=200, help="greetings per phase")
    stall.add_argument("--logins", type=int, default=50, help="logins per phase")
    stall.add_argument("--tree", help="a checkout whose pop3proxy runs (default: this one)")
    limits = commands.add_parser("limits", help="Redis round trips and time per login")
    limits.add_argument("trees", nargs="*", help="NAME=PATH of a tree holding pop3proxy/")
    limits.add_argument("--logins", type=int, default=2000)
    limits.add_argument("--url", help=argparse.SUPPRESS)
    lookup = commands.add_parser("lookup", help="the directory's tenant lookup")
    lookup.add_argument("--lookups", type=int, default=200_000)
    lookup.add_argument("--logins", type=int, default=1000, help="concurrent, one cold tenant")
    lookup.add_argument("--misses", type=int, default=2000)
    budget = commands.add_parser("budget", help="the download budget's Redis and CPU costs")
    budget.add_argument("--logins", type=int, default=2000)
    budget.add_argument("--users", type=int, nargs="*", default=[1, 100, 1000, 10000])
    args = parser.parse_args(argv)
    runs = {"stall": run_stall, "limits": run_limits, "lookup": run_lookup, "budget": run_budget}
    return runs[args.command](args)


# -- stall ------------------------------------------------------------------------------


def run_stall(args: argparse.Namespace) -> int:
    import signal
    import tempfile

    from harness.certs import make_certs
    from harness.dovecot import Dovecot
    from harness.proxy import TENANT, ProxyProcess, run_cli
    from harness.redis import RedisServer
    from harness.users import USERS

    workdir = Path(tempfile.mkdtemp(prefix="pop3proxy-redis-stall-"))
    if args.tree:
        os.environ["PYTHONPATH"] = str(Path(args.tree).resolve())
        os.chdir(workdir)  # ``python -m`` puts the working directory first on the path
    certs = make_certs(workdir / "certs")
    with RedisServer() as redis_server, Dovecot(USERS, certs=certs) as dovecot:
        overrides = {
            "directory": {"store": "redis", "redis_url": redis_server.url, "key_prefix": "stall"},
            "logging": {"level": "warning", "format": "json"},
            "limits": {"max_connections_per_address": 100, "max_sessions_per_user": 10},
            "auth": {"allow": [], "failure_delay": "0s"},
        }
        with ProxyProcess(workdir / "proxy", certs, overrides) as proxy:
            backend = f"{dovecot.host}:{dovecot.port}"
            done = run_cli(proxy.config_path, "tenant", "set", TENANT, "--backend", backend)
            if done.returncode != 0:
                sys.exit(f"tenant set failed: {done.stderr}")
            _login(proxy, TENANT, USERS["alice"])  # the tenant is cached
            healthy = [_greeting(proxy) for _ in range(args.connections)]
            healthy_logins = [_login(proxy, TENANT, USERS["alice"]) for _ in range(args.logins)]
            assert redis_server.pid is not None
            os.kill(redis_server.pid, signal.SIGSTOP)
            try:
                first = _greeting(proxy)
                stopped = [_greeting(proxy) for _ in range(args.connections)]
                stopped_logins = [_login(proxy, TENANT, USERS["alice"]) for _ in range(args.logins)]
            finally:
                os.kill(redis_server.pid, signal.SIGCONT)
    print(f"{args.connections} greetings and {args.logins} logins per phase, one client at a time")
    header = f"{'greeting p50':>12} {'p99':>8} {'max':>8}   {'login p50':>9} {'p99':>8} {'max':>8}"
    print(f"{'ms':16} {header}")
    print(f"{'redis healthy':16} {_quantiles(healthy):>30}   {_quantiles(healthy_logins)}")
    print(f"{'redis SIGSTOPped':16} {_quantiles(stopped):>30}   {_quantiles(stopped_logins)}")
    print(f"first greeting after the stop (finding out): {1000 * first:.0f} ms")
    return 0


def _greeting(proxy) -> float:
    import time

    from harness.wire import Pop3Wire

    started = time.perf_counter()
    with Pop3Wire(proxy.host, proxy.ports["plain"], timeout=60) as wire:
        elapsed = time.perf_counter() - started
        assert wire.greeting.startswith(b"+OK"), wire.greeting
        wire.command("QUIT")
    return elapsed


def _login(proxy, tenant: str, password: str) -> float:
    """Connect to the ``+OK`` of PASS; then QUIT and wait for the close."""
    import time

    from harness.wire import Pop3Wire

    started = time.perf_counter()
    with Pop3Wire(proxy.host, proxy.ports["plain"], timeout=60) as wire:
        wire.login(f"alice@{tenant}", password)
        elapsed = time.perf_counter() - started
        assert wire.command("QUIT").startswith(b"+OK")
        wire.read_line()
    return elapsed


def _quantiles(samples: list[float]) -> str:
    """p50, p99 and max in milliseconds."""
    import statistics

    if len(samples) < 2:
        return "   ".join(f"{1000 * s:8.1f}" for s in samples)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return f"{1000 * cuts[49]:8.1f} {1000 * cuts[98]:8.1f} {1000 * max(samples):8.1f}"


# -- limits -----------------------------------------------------------------------------


def run_limits(args: argparse.Namespace) -> int:
    import subprocess

    from harness.redis import RedisServer

    if args.url:
        print(_limits_of_this_tree(args.url, args.logins))
        return 0
    trees = dict(tree.split("=", 1) for tree in args.trees) or {"pop3proxy": str(HERE.parent)}
    with RedisServer() as server:
        for name, path in trees.items():
            env = {**os.environ, "PYTHONPATH": str(Path(path).resolve())}
            command = [sys.executable, __file__, "limits", "--url", server.url]
            command += ["--logins", str(args.logins)]
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            print(f"{name:12} {result.stdout.strip()}")
    return 0


def _limits_of_this_tree(url: str, logins: int) -> str:
    """One tree's figures (runs in a process whose ``pop3proxy`` is that tree's)."""
    import inspect
    import time

    import redis

    from pop3proxy.config import AuthConfig
    from pop3proxy.limits import FailureLimiter, LeaseLimiter, Slot

    client = redis.Redis.from_url(url)
    failures = FailureLimiter(client, "bench", AuthConfig())
    leases = LeaseLimiter(client, "bench")
    slots = [Slot("tenant", "acme.example", 1000), Slot("user", "alice@acme.example", 1)]
    requests = [0]
    original = redis.connection.Connection.send_packed_command

    def counted(self: object, *args: object, **kwargs: object) -> None:
        requests[0] += 1
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    try:  # the login history's write (a greenlet after the login, in the proxy)
        from pop3proxy.history import LoginHistory, LoginRecord
        from pop3proxy.redisconn import RedisHealth
    except ImportError:  # older trees keep none
        history = None
    else:
        history = LoginHistory(client, "bench", RedisHealth("bench"), 50, 30 * 86400)
        entry = LoginRecord(time.time(), "192.0.2.1", "pop3", "USER", "ok", "mail:110")

    # Older trees cleared the budget with succeeded(user), and only when the
    # verdict said there were failures (older still: always).
    remembers = len(inspect.signature(failures.succeeded).parameters) == 3

    def login(number: int) -> None:
        verdict = failures.check("alice@acme.example", "192.0.2.1")
        lease, _ = leases.acquire(f"s{number}", slots)
        if remembers:
            failures.succeeded("alice@acme.example", "192.0.2.1", verdict)
        elif getattr(verdict, "user_failures", 1):
            failures.succeeded("alice@acme.example")
        assert lease is not None
        if history is not None:
            history.record("alice@acme.example", entry)
        leases.release(lease)

    for number in range(50):
        login(number)
    redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]
    started = time.perf_counter()
    for number in range(logins):
        login(number)
    elapsed = time.perf_counter() - started
    trips = requests[0] / logins
    return f"{trips:.1f} Redis round trips, {elapsed / logins * 1e6:.0f} µs per login"


# -- lookup -----------------------------------------------------------------------------


def run_lookup(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()
    import json
    import time

    import gevent
    from harness.redis import RedisServer

    from pop3proxy.config import DirectoryConfig
    from pop3proxy.directory import Directory, RedisStore
    from pop3proxy.tenants import parse_tenant

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

        before = _gets(server)
        greenlets = [gevent.spawn(directory.lookup, "cold.example") for _ in range(args.logins)]
        gevent.joinall(greenlets, raise_error=True)
        cold_reads = _gets(server) - before
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
    return 0


# -- budget -----------------------------------------------------------------------------


def run_budget(args: argparse.Namespace) -> int:
    from gevent import monkey

    monkey.patch_all()
    import json
    import time
    import timeit

    import redis
    from harness.redis import RedisServer

    from pop3proxy.config import AuthConfig
    from pop3proxy.delays import Delays
    from pop3proxy.downloads import Downloads
    from pop3proxy.history import LoginHistory, LoginRecord
    from pop3proxy.limits import FailureLimiter, LeaseLimiter, Slot
    from pop3proxy.redisconn import RedisHealth

    sends = [0]
    original = redis.connection.Connection.send_packed_command

    def counted(self: object, *more: object, **options: object) -> None:
        sends[0] += 1
        original(self, *more, **options)  # type: ignore[arg-type]

    redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]
    result: dict[str, object] = {}
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        admin = server.client()
        health = RedisHealth("bench")
        failures = FailureLimiter(client, "bench", AuthConfig())
        leases = LeaseLimiter(client, "bench")
        history = LoginHistory(client, "bench", health, 50, 30 * 86400)
        delays = Delays(client, "bench", health)
        delays.update()
        user, tenant = "alice@acme.example", "acme.example"
        slots = [Slot("tenant", tenant, 100_000), Slot("user", user, 100_000)]
        entry = LoginRecord(time.time(), "192.0.2.1", "pop3", "USER", "ok", "mail:110")

        for budget in (0, 1_250_000_000, 0, 1_250_000_000):  # twice: the best of two
            downloads = Downloads(client, "bench", health, delays, budget)
            meters = []

            def login(number: int, downloads: Downloads = downloads, meters: list = meters) -> None:
                verdict = failures.check(user, "192.0.2.1")
                if downloads.exhausted(user) or delays.current(tenant, user):
                    raise AssertionError("no delay in this run")
                lease, _ = leases.acquire(f"s{number}", slots)
                failures.succeeded(user, "192.0.2.1", verdict)
                meters.append(downloads.meter(user))  # held like a session's
                history.record(user, entry)
                leases.release(lease)

            for number in range(50):
                login(number)
            sends[0] = 0
            started = time.perf_counter()
            for number in range(args.logins):
                login(number)
            elapsed = time.perf_counter() - started
            name = "on" if budget else "off"
            result[f"login_round_trips_budget_{name}"] = round(sends[0] / args.logins, 2)
            microseconds = round(elapsed / args.logins * 1e6, 1)
            best = result.get(f"login_us_budget_{name}", microseconds)
            result[f"login_us_budget_{name}"] = min(microseconds, best)  # type: ignore[type-var]

        downloads = Downloads(client, "bench", health, delays, 1_250_000_000)
        meter = downloads.meter(user)
        assert meter is not None
        add_ns = min(timeit.repeat(lambda: meter.add(16384), number=100_000, repeat=5)) * 1e4
        result["meter_add_ns"] = round(add_ns, 1)
        for users in args.users:
            downloads = Downloads(client, f"bench{users}", health, delays, 1_250_000_000)
            held = [downloads.meter(f"u{number}@acme.example") for number in range(users)]
            for phase in ("first", "then"):
                for each in held:
                    assert each is not None
                    each.add(50_000)
                before = _commands(admin)
                sends[0] = 0
                started = time.perf_counter()
                downloads.flush()
                elapsed = time.perf_counter() - started
                result[f"flush_{users}_users_{phase}"] = {
                    "round_trips": sends[0],
                    "redis_commands": _commands(admin) - before - 1,  # less the first INFO
                    "ms": round(elapsed * 1e3, 2),
                    "us_per_user": round(elapsed / users * 1e6, 2),
                }
    for key, value in result.items():
        print(f"{key:36} {value}")
    print(json.dumps(result))
    return 0


def _commands(admin) -> int:
    return int(admin.info("stats")["total_commands_processed"])


def _gets(server) -> int:
    stats = server.client().info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


if __name__ == "__main__":
    sys.exit(main())
