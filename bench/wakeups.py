#!/usr/bin/env python
"""Where a plaintext session's CPU goes, wake-up by wake-up, in the running proxy.

    .venv/bin/python bench/wakeups.py                  # 2,000 sessions at concurrency 1
    .venv/bin/python bench/wakeups.py --concurrency 16 --sessions 4000

Starts the benchmark's Dovecot and a pop3proxy run by ``bench/wakeup_probe.py``,
which charges every nanosecond of the proxy's CPU time (user and kernel) to
the loop callback, the login greenlet or the event loop that spent it; drives
full sessions (``bench/run.py`` scenario a) and prints, per session, what
each kind of wake-up costs and how often it comes.

Then it times the same Python warm, in a loop: building one client session
(``ClientSession.__init__``) and one relayed command through the protocol
core. Set beside the in-place figures, they show why the proxy costs what it
does: its Python runs cold, after Dovecot and the load generator have had
the CPU, and a few microseconds of code cost tens (docs/performance.md).
The probes cost about 2 µs per wake-up; the process's CPU per session is
measured alongside, with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import interpreter  # noqa: E402
import load  # noqa: E402
import peers  # noqa: E402
import procstat  # noqa: E402
import run  # noqa: E402
from harness.ports import wait_until  # noqa: E402

WARM_CODE = """
import socket, time
from pop3proxy.config import parse_config
from pop3proxy.net.session import ClientSession, Services
from pop3proxy.protocol import client as core

config = parse_config({"listeners": [{"name": "plain", "address": "127.0.0.1:1", "tls": "none"}]})
services = Services(config, None, None)
listener = config.listeners[0]
sock, other = socket.socketpair()
rounds = 20000
started = time.thread_time_ns()
for _ in range(rounds):
    ClientSession(sock, ("127.0.0.1", 1), listener, services).client.close_watchers()
session_ns = (time.thread_time_ns() - started) / rounds
conn = core.ClientConnection(services.client_settings(listener))
conn.state = core.State.TRANSACTION
commands = {}
started = time.thread_time_ns()
for _ in range(rounds):
    conn.relay_data(b"LIST\\r\\n", commands)
relay_ns = (time.thread_time_ns() - started) / rounds
print(session_ns, relay_ns)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1)
    interpreter.add_argument(parser)
    args = parser.parse_args(argv)
    python = interpreter.proxy_python(args.python)
    os.chdir(tempfile.gettempdir())  # ``python -m`` looks in its working directory first
    peers.ensure_debian_packages()
    work = Path(tempfile.mkdtemp(prefix="pop3proxy-wakeups-"))
    work.chmod(0o755)
    accounts = work / "wakeups.json"
    os.environ["POP3PROXY_WAKEUPS"] = str(accounts)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent)])
    settings = {**run.PROFILES["quick"], "idle": 10, "python": python, "module": "wakeup_probe"}
    bench = run.Bench(settings, work)
    try:
        bench.start_backends()
        proxy = bench.new_proxy()
        try:
            figures = measure(bench, proxy, accounts, args)
        finally:
            proxy.stop()
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(report(*figures, warm(python), args))
    return 0


def measure(bench: run.Bench, proxy, accounts: Path, args: argparse.Namespace) -> tuple:
    """Accounts and the process's CPU over ``args.sessions`` sessions, after a warm-up."""
    port = proxy.ports["plain"]
    pids = peers.proxy_pids(proxy)
    load.run_sessions(port, False, bench.certs.ca_file, bench.users, args.concurrency, 60, 300)
    before = snapshot(proxy, accounts), procstat.cpu_split(pids), procstat.run_seconds(pids)
    result = load.run_sessions(
        port, False, bench.certs.ca_file, bench.users, args.concurrency, 600, args.sessions
    )
    after = snapshot(proxy, accounts), procstat.cpu_split(pids), procstat.run_seconds(pids)
    if result.errors:
        print(f"{result.errors} sessions failed, first: {result.first_error}")
    spent = {key: _difference(before[0][key], after[0][key]) for key in ("accounts", "details")}
    user = after[1][0] - before[1][0]
    system = after[1][1] - before[1][1]
    return spent, result.sessions, user, system, after[2] - before[2]


def _difference(before: dict, after: dict) -> dict[str, tuple[int, int]]:
    return {
        name: (count - before.get(name, (0, 0))[0], ns - before.get(name, (0, 0))[1])
        for name, (count, ns) in after.items()
    }


def snapshot(proxy, accounts: Path) -> dict[str, dict[str, list[int]]]:
    """Ask the proxy for its accounts (SIGWINCH) and read them."""
    accounts.unlink(missing_ok=True)
    os.kill(proxy.proc.pid, signal.SIGWINCH)
    wait_until(accounts.exists, 10, message="accounts")  # renamed into place when whole
    return json.loads(accounts.read_text())


def warm(python: str) -> tuple[float, float]:
    """Nanoseconds of a client session's construction and of one relayed command, warm."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    output = subprocess.run(
        [python, "-c", WARM_CODE], env=env, capture_output=True, text=True, check=True
    ).stdout
    session_ns, relay_ns = (float(value) for value in output.split())
    return session_ns, relay_ns


def report(
    measured: dict[str, dict[str, tuple[int, int]]],
    sessions: int,
    user: float,
    system: float,
    run_seconds: float,
    warm_ns: tuple[float, float],
    args: argparse.Namespace,
) -> str:
    sessions = max(sessions, 1)
    spent, details = measured["accounts"], measured["details"]
    total_ns = sum(ns for _, ns in spent.values())
    lines = [
        f"{sessions} plaintext sessions at concurrency {args.concurrency}, pop3proxy "
        f"on {socket.gethostname()}: {run_seconds * 1e6 / sessions:.0f} µs of CPU per session "
        f"(schedstat; /proc/PID/stat: user {user * 1e6 / sessions:.0f} µs, "
        f"system {system * 1e6 / sessions:.0f} µs)",
        "",
        f"{'account':48} {'per session':>11} {'µs each':>8} {'µs/session':>10} {'share':>6}",
    ]
    for name, (count, ns) in sorted(spent.items(), key=lambda item: -item[1][1]):
        if ns <= 0:
            continue
        each = ns / count / 1000 if count else 0.0
        lines.append(
            f"{name:48} {count / sessions:11.2f} {each:8.1f} {ns / sessions / 1000:10.1f} "
            f"{ns / total_ns:6.1%}"
        )
    lines.append(f"{'all accounts':48} {'':11} {'':8} {total_ns / sessions / 1000:10.1f}")
    session_ns, relay_ns = warm_ns
    in_place = (_each(details.get("ClientSession.__init__", (0, 0))), session_ns / 1000)
    relayed = (_each(details.get("ClientConnection.relay_data", (0, 0))), relay_ns / 1000)
    lines += [
        "",
        "The same Python in place and warm (in a loop, nothing else running in between):",
        f"  ClientSession.__init__:           {in_place[0]:6.2f} µs in place, "
        f"{in_place[1]:5.2f} µs warm (x{_ratio(*in_place):.0f})",
        f"  one command through relay_data:   {relayed[0]:6.2f} µs in place, "
        f"{relayed[1]:5.2f} µs warm (x{_ratio(*relayed):.0f})",
    ]
    return "\n".join(lines)


def _ratio(in_place: float, warm: float) -> float:
    return in_place / warm if warm else 0.0


def _each(entry: tuple[int, int]) -> float:
    count, ns = entry
    return ns / count / 1000 if count else 0.0


if __name__ == "__main__":
    sys.exit(main())
