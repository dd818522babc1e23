#!/usr/bin/env python
"""What an OAuth login costs the proxy, next to a password login.

    .venv/bin/python bench/oauth_cost.py [--sessions 300] [--rounds 5]

Two figures, both with the issuer's keys cached (the steady state: keys are
fetched once per ``auth.oauth_keys_max_age``):

* in process: CPU per :meth:`pop3proxy.oauth.TokenChecker.user` call (the
  JWT signature and claim checks) for each default algorithm;
* end to end: a proxy with its directory in Redis, a Dovecot behind it
  (logged in to with the master user for tokens, with the user's own
  password for the password sessions) and a local issuer; sessions of
  login and QUIT on the plaintext listener (TLS costs the same for both),
  one at a time; the proxy process's CPU (user + system) per session,
  median over the rounds, the kinds taken in turn.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300, help="sessions per round and kind")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checks", type=int, default=2000, help="in-process checks per algorithm")
    args = parser.parse_args(argv)

    from harness.certs import make_certs
    from harness.dovecot import Dovecot
    from harness.issuer import Issuer, mint_key
    from harness.proxy import ProxyProcess
    from harness.redis import RedisServer
    from procstat import cpu_seconds

    from pop3proxy.directory import RedisStore
    from pop3proxy.oauth import TokenChecker
    from pop3proxy.tenants import OAuth, parse_tenant

    print("in process, keys cached: CPU per token check")
    for algorithm in ("RS256", "PS256", "ES256", "EdDSA"):
        issuer = Issuer(keys=[mint_key(algorithm)]).start()
        checker = TokenChecker.from_settings(300, 30, 5)
        oauth = OAuth(issuer.url, "pop3", scopes=("pop3",), algorithms=(algorithm,))
        token = issuer.token("alice@bench.example").encode()
        checker.user(oauth, token)  # fetches discovery and keys once
        started = time.process_time()
        for _ in range(args.checks):
            checker.user(oauth, token)
        per_check = (time.process_time() - started) / args.checks
        print(f"  {algorithm:6} {per_check * 1e6:8.0f} us")
        issuer.stop()

    workdir = Path(tempfile.mkdtemp(prefix="pop3proxy-oauth-cost-"))
    os.chdir(workdir)
    certs = make_certs(workdir / "certs")
    master_env = "BENCH_OAUTH_MASTER"
    os.environ[master_env] = "master-secret"
    with contextlib.ExitStack() as stack:
        dovecot = stack.enter_context(
            Dovecot(
                {"alice": "alice-secret"},
                certs=certs,
                master_users={"proxymaster": "master-secret"},
            )
        )
        issuers = {name: Issuer(keys=[mint_key(name)]).start() for name in ("RS256", "ES256")}
        for issuer in issuers.values():
            stack.callback(issuer.stop)
        redis_server = stack.enter_context(RedisServer())
        store = RedisStore(redis_server.client(), "bench")
        backend = {"host": dovecot.host, "port": dovecot.port}
        master = {"master_user": "proxymaster", "master_password_env": master_env}
        for name, issuer in issuers.items():
            oauth = {"issuer": issuer.url, "audience": "pop3", "scopes": ["pop3"]}
            store.put(
                parse_tenant(
                    {
                        "name": f"{name.lower()}.example",
                        "backends": [backend],
                        **master,
                        "oauth": oauth,
                    }
                )
            )
        store.put(parse_tenant({"name": "password.example", "backends": [backend]}))
        overrides = {
            "directory": {"store": "redis", "redis_url": redis_server.url, "key_prefix": "bench"},
            "logging": {"level": "warning", "format": "json"},
            "auth": {"failure_delay": "0s", "mechanisms": ["PLAIN", "XOAUTH2"]},
        }
        proxy = stack.enter_context(ProxyProcess(workdir / "proxy", certs, overrides))
        port = proxy.ports["plain"]
        kinds: dict[str, list[bytes]] = {
            "password (passthrough)": [b"USER alice@password.example", b"PASS alice-secret"],
        }
        for name, issuer in issuers.items():
            user = f"alice@{name.lower()}.example"
            token = issuer.token(user, lifetime=3600)
            response = base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())
            kinds[f"token {name} (master user)"] = [b"AUTH XOAUTH2 " + response]
        cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind, commands in kinds.items():
                before = cpu_seconds([proxy.proc.pid])
                for _ in range(args.sessions):
                    _session(port, commands)
                cpu[kind].append((cpu_seconds([proxy.proc.pid]) - before) / args.sessions)
        print("end to end, keys cached: proxy CPU per session (login, QUIT)")
        first = statistics.median(next(iter(cpu.values())))
        for kind, values in cpu.items():
            median = statistics.median(values)
            print(f"  {kind:28} {median * 1000:7.3f} ms  x{median / first:.2f}")
    return 0


def _session(port: int, commands: list[bytes]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rb")
        assert stream.readline().startswith(b"+OK")
        for command in commands:
            sock.sendall(command + b"\r\n")
            reply = stream.readline()
            assert reply.startswith(b"+OK"), reply
        sock.sendall(b"QUIT\r\n")
        stream.readline()


if __name__ == "__main__":
    sys.exit(main())
