#!/usr/bin/env python
"""How long ``pop3proxy migrate map --tenant`` takes for a tenant of many users.

    .venv/bin/python bench/migrate_map.py --users 1000 --messages 50 --workers 4

Starts two Dovecots whose ``pop3_uidl_format`` differ and a redis-server,
writes the same Maildirs to both (files written directly, not delivered),
stores a passthrough tenant with both backends and a credentials file of
every user, then runs the real command (a subprocess, as an operator would)
and prints the time it took: every user's two mailboxes are logged in to
and read with UIDL, LIST and TOP n 0 for every message, matched, and the
maps stored. Each run is timed twice: once with ``--dry-run`` right after
the mailboxes are written (Dovecot builds its indexes then, as on the first
read of a real migration), once storing the maps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

TENANT = "bench.example"


def message(user: str, number: int, body_size: int) -> bytes:
    headers = (
        f"From: Sender {number} <sender{number}@example.org>\n"
        f"To: {user}@{TENANT}\nSubject: message {number} for {user}\n"
        f"Date: Tue, 01 Oct 2024 12:00:{number % 60:02d} +0000\n"
        f"Message-ID: <{user}-{number}@bench.pop3proxy>\n\n"
    )
    line = (f"{user} {number} " * 20)[:76] + "\n"
    body = (line * (body_size // len(line) + 1))[:body_size]
    return (headers + body).encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=50, help="messages per user")
    parser.add_argument("--size", type=int, default=2000, help="body bytes per message")
    parser.add_argument("--workers", type=int, default=4, help="migrate map --workers")
    args = parser.parse_args(argv)

    from harness.dovecot import Dovecot
    from harness.redis import RedisServer

    from pop3proxy.directory import RedisStore
    from pop3proxy.tenants import parse_tenant

    workdir = Path(tempfile.mkdtemp(prefix="pop3proxy-migrate-bench-"))
    users = {f"user{number:05d}": f"secret-{number}" for number in range(args.users)}
    with contextlib.ExitStack() as stack:
        old = stack.enter_context(Dovecot(users))
        new = stack.enter_context(Dovecot(users, uidl_format="%v.%u"))
        redis_server = stack.enter_context(RedisServer())
        started = time.monotonic()
        for user in users:
            mailbox = [message(user, number, args.size) for number in range(args.messages)]
            old.deliver(user, mailbox)
            new.deliver(user, mailbox)
        written = time.monotonic() - started
        store = RedisStore(redis_server.client(), "bench")
        backends = [{"host": server.host, "port": server.port} for server in (old, new)]
        store.put(parse_tenant({"name": TENANT, "backends": backends}))
        credentials = workdir / "credentials.yaml"
        credentials.write_text(
            yaml.safe_dump({f"{user}@{TENANT}": password for user, password in users.items()})
        )
        config = workdir / "pop3proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listeners": [{"name": "plain", "address": "127.0.0.1:1110", "tls": "none"}],
                    "directory": {
                        "store": "redis",
                        "redis_url": redis_server.url,
                        "key_prefix": "bench",
                    },
                }
            )
        )
        command = [
            sys.executable, "-m", "pop3proxy", "migrate", "map", "--tenant", TENANT,
            "--to", f"{new.host}:{new.port}", "--credentials", str(credentials),
            "--workers", str(args.workers), "--json", "--config", str(config),
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
        print(
            f"{args.users} users x {args.messages} messages on each of two Dovecots "
            f"(written in {written:.1f} s), --workers {args.workers}"
        )
        for label, extra in (("first read (--dry-run)", ["--dry-run"]), ("stored", [])):
            began = time.monotonic()
            result = subprocess.run(
                [*command, *extra], capture_output=True, text=True, env=env, check=False
            )
            seconds = time.monotonic() - began
            if result.returncode != 0:
                print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
                return 1
            totals = json.loads(result.stdout)["totals"]
            print(
                f"{label:24} {seconds:7.1f} s  {args.users / seconds:7.1f} users/s  "
                f"matched {totals['matched']}, unmatched {totals['unmatched_old']}"
                f"/{totals['unmatched_new']}, ambiguous {totals['ambiguous']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
