#!/usr/bin/env python
"""What the failed-login budgets and session leases cost per login with Redis.

    .venv/bin/python bench/redis_limits.py                       # this checkout
    .venv/bin/python bench/redis_limits.py before=/tmp/old after=.  # A/B of two trees

``bench/run.py`` measures pop3proxy with a file directory, where budgets and
leases stay in memory; in production they live in Redis, shared by the
replicas, and a login pays for them in round trips. This runs what one
successful login asks of Redis (the budget check, the tenant and user
slots, giving them back) against a private redis-server on 127.0.0.1, and
prints the Redis requests and the time per login for each tree, each in a
process of its own.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from harness.redis import RedisServer  # noqa: E402

LOGINS = 2000


def measure(url: str) -> str:
    """One tree's figures (runs in a process whose ``pop3proxy`` is that tree's)."""
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

    # Trees before known clients cleared the budget with succeeded(user), and
    # only when the verdict said there were failures (older ones: always).
    remembers = len(inspect.signature(failures.succeeded).parameters) == 3

    def login(number: int) -> None:
        verdict = failures.check("alice@acme.example", "192.0.2.1")
        lease, _ = leases.acquire(f"s{number}", slots)
        if remembers:
            failures.succeeded("alice@acme.example", "192.0.2.1", verdict)
        elif getattr(verdict, "user_failures", 1):
            failures.succeeded("alice@acme.example")
        assert lease is not None
        leases.release(lease)

    for number in range(50):
        login(number)
    redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]
    started = time.perf_counter()
    for number in range(LOGINS):
        login(number)
    elapsed = time.perf_counter() - started
    trips = requests[0] / LOGINS
    return f"{trips:.1f} Redis round trips, {elapsed / LOGINS * 1e6:.0f} µs per login"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", help="NAME=PATH of a tree holding pop3proxy/")
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.url:
        print(measure(args.url))
        return 0
    trees = dict(tree.split("=", 1) for tree in args.trees) or {"pop3proxy": str(HERE.parent)}
    with RedisServer() as server:
        for name, path in trees.items():
            env = {**os.environ, "PYTHONPATH": str(Path(path).resolve())}
            command = [sys.executable, str(Path(__file__).resolve()), "--url", server.url]
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            print(f"{name:12} {result.stdout.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
