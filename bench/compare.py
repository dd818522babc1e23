#!/usr/bin/env python
"""CPU per session of pop3proxy source trees side by side, beside nginx and the floor relay.

    .venv/bin/python bench/compare.py                       # this checkout
    .venv/bin/python bench/compare.py before=/tmp/old after=.  # A/B of two trees
    .venv/bin/python bench/compare.py venv=.@venv opt=.         # two interpreters, one tree
    .venv/bin/python bench/compare.py user=.#user_pass plain=.   # two backend login commands
    .venv/bin/python bench/compare.py --concurrency 16 --rate 100  # the same offered load for all

Each ``NAME=PATH`` names a directory holding a ``pop3proxy`` package; every
tree runs as its own proxy process in the same run, so a change is measured
against its baseline under the same background noise (a few per cent here,
against ±15 % between separate runs). Also measured: nginx's mail proxy and
``bench/floor_relay.py``, a bare splice on gevent's loop that shows what any
Python relay costs, as callbacks and the usual greenlet way. Full sessions
(``bench/run.py`` scenario a) at one concurrency, plaintext and TLS,
several rounds taken in turn; prints the median CPU per session, the
ratio to nginx, and the medians of user and system CPU (Python's share and
the kernel's). For the whole picture (latency, bulk, idle memory, the
chart) use ``bench/run.py``. Trees run on the interpreter that
``bench/interpreter.py`` picks (an optimized build, like the image's), or on
the one named after an ``@`` (``venv``: this venv's); so do the floor relays.
A ``#`` names how a tree logs in to Dovecot (``auth_plain``, the default,
or ``user_pass``). With ``--rate`` the clients are paced, so every target
serves the same sessions per second (below what the slowest can take)
rather than as many as it can: the CPU per session of proxies run equally
hard.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
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
from harness.ports import free_port, port_is_open, wait_until  # noqa: E402

FLOORS = [("floor relay", []), ("floor greenlets", ["--greenlets"])]
CALIBRATION = [
    (f"floor +{kind}", ["--work", f"{kind}:{count}"])
    for kind, count in (
        ("tight", 40),
        ("diverse", 40),
        ("alloc", 20),
        ("watchers", 4),
        ("greenlet", 1),
    )
]
"""What each kind of work adds to the bare relay: about 9,000 bytecodes per
session of one small method (tight) or of 400 small functions (diverse),
1,000 small objects, 8 watchers, a greenlet that waits once."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", help="NAME=PATH of a tree holding pop3proxy/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument(
        "--rate",
        type=float,
        help="sessions per second for every target (paced clients) instead of flat out",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="proxies on the second CPU, Dovecot and the load on the first: less noise for A/B",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="also the floor relay with each kind of work added (see bench/floor_relay.py)",
    )
    interpreter.add_argument(parser)
    args = parser.parse_args(argv)
    trees = dict(tree.split("=", 1) for tree in args.trees) or {"pop3proxy": str(HERE.parent)}
    python = interpreter.proxy_python(args.python)
    # ``python -m pop3proxy`` looks in its working directory first: run from elsewhere.
    os.chdir(tempfile.gettempdir())
    peers.ensure_debian_packages()
    if args.pin:
        os.sched_setaffinity(0, {0})  # every process started from here inherits it
    work = Path(tempfile.mkdtemp(prefix="pop3proxy-compare-"))
    work.chmod(0o755)
    bench = run.Bench({**run.PROFILES["quick"], "idle": 10, "workers": 1}, work)
    proxies = []
    floors: list[subprocess.Popen[bytes]] = []
    try:
        bench.start_backends()
        assert bench.dovecot is not None
        bench.nginx = bench.new_nginx()
        targets = {
            "nginx": (bench.nginx.ports["plain"], bench.nginx.ports["pop3s"], bench.nginx.pids())
        }
        for label, flags in FLOORS + (CALIBRATION if args.calibrate else []):
            port = free_port()
            relay = [python, str(HERE / "floor_relay.py"), str(port)]
            floor = subprocess.Popen([*relay, str(bench.dovecot.port), *flags])
            floors.append(floor)
            wait_until(lambda p=port: port_is_open(peers.LOOPBACK, p), 10, message=label)
            targets[label] = (port, None, [floor.pid])
        for name, spec in trees.items():
            spec, _, login_command = spec.partition("#")
            path, _, chosen = spec.partition("@")
            os.environ["PYTHONPATH"] = str(Path(path).resolve())
            bench.python = interpreter.proxy_python(chosen) if chosen else python
            bench.login_command = login_command or "auth_plain"
            print(f"{name}: {path} on Python {interpreter.describe(bench.python)}")
            proxy = bench.new_proxy()
            proxies.append(proxy)
            ports = proxy.ports
            targets[name] = (ports["plain"], ports["pop3s"], peers.proxy_pids(proxy))
        if args.pin:
            for _, _, pids in targets.values():
                for pid in pids:
                    os.sched_setaffinity(pid, {1})
        measure(bench, targets, args)
    finally:
        for proxy in proxies:
            proxy.stop()
        for floor in floors:
            floor.kill()
            floor.wait()
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


def measure(bench: run.Bench, targets: dict, args: argparse.Namespace) -> None:
    context = load.client_context(str(bench.certs.ca_file))
    for plain, pop3s, _ in targets.values():  # warm up every target
        for user, password in bench.users[:8]:
            load.full_session(plain, None, user, password)
            if pop3s:
                load.full_session(pop3s, context, user, password)
    cpu: dict[tuple[str, str], list[float]] = {}
    split: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for mode in ("plain", "tls"):
            for name, (plain, pop3s, pids) in targets.items():
                port = pop3s if mode == "tls" else plain
                if not port:
                    continue
                before = procstat.cpu_split(pids)
                result = load.run_sessions(
                    port,
                    mode == "tls",
                    bench.certs.ca_file,
                    bench.users,
                    args.concurrency,
                    args.seconds,
                    5000,
                    rate=args.rate,
                )
                after = procstat.cpu_split(pids)
                if result.errors:
                    print(f"{name} {mode}: {result.errors} errors, first: {result.first_error}")
                sessions = max(1, result.sessions)
                user = (after[0] - before[0]) * 1000 / sessions
                system = (after[1] - before[1]) * 1000 / sessions
                cpu.setdefault((mode, name), []).append(user + system)
                split.setdefault((mode, name), []).append((user, system))
    pace = f", {args.rate:g} sessions/s offered" if args.rate else ""
    print(f"\nCPU per session, c={args.concurrency}{pace}, median of {args.rounds} (ms):")
    for mode in ("plain", "tls"):
        nginx = statistics.median(cpu[(mode, "nginx")])
        for name in targets:
            figures = cpu.get((mode, name))
            if figures:
                median = statistics.median(figures)
                rounds = " ".join(f"{x:.2f}" for x in figures)
                user = statistics.median(u for u, _ in split[(mode, name)])
                system = statistics.median(s for _, s in split[(mode, name)])
                print(
                    f"  {mode:5} {name:12} {median:6.3f}  x{median / nginx:.2f} nginx"
                    f"  user {user:.3f} system {system:.3f}  ({rounds})"
                )
    paired(cpu, list(targets))


def paired(cpu: dict[tuple[str, str], list[float]], names: list[str]) -> None:
    """Each tree against the first, round by round: the rounds of one tree
    wander together with the machine's load, their ratios much less."""
    peers_ = {"nginx"} | {label for label, _ in FLOORS + CALIBRATION}
    trees = [name for name in names if name not in peers_]
    if len(trees) < 2:
        return
    print(f"\nPaired, median of the per-round ratios to {trees[0]}:")
    for mode in ("plain", "tls"):
        first = cpu.get((mode, trees[0]))
        for name in trees[1:]:
            figures = cpu.get((mode, name))
            if first and figures:
                ratios = sorted(b / a for a, b in zip(first, figures, strict=True))
                spread = f"{ratios[0]:.3f}-{ratios[-1]:.3f}"
                print(f"  {mode:5} {name:12} x{statistics.median(ratios):.3f}  (range {spread})")


if __name__ == "__main__":
    sys.exit(main())
