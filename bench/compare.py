#!/usr/bin/env python
"""pop3proxy source trees side by side in one run: CPU per session, or instructions per session.

    .venv/bin/python bench/compare.py                              # this checkout beside nginx
    .venv/bin/python bench/compare.py before=/tmp/old after=.      # A/B of two trees
    .venv/bin/python bench/compare.py --instructions before=/tmp/old after=.  # callgrind counts
    .venv/bin/python bench/compare.py venv=.@venv opt=.            # two interpreters, one tree
    .venv/bin/python bench/compare.py user=.#user_pass plain=.     # two backend login commands
    .venv/bin/python bench/compare.py --concurrency 16 --rate 100  # the same offered load for all
    .venv/bin/python bench/compare.py --floor                      # and a bare Python relay

Each ``NAME=PATH`` names a directory holding a ``pop3proxy`` package. An
``@`` after the path names the interpreter that runs it (``venv``: this
venv's; by default the optimized build ``bench/interpreter.py`` picks, like
the image's), a ``#`` how it logs in to Dovecot (``auth_plain``, the
default, or ``user_pass``).

CPU (the default): every tree runs as its own proxy process in the same run,
beside nginx's mail proxy, so a change is measured against its baseline under
the same background noise (a few per cent here, against ±15 % between
separate runs). Full sessions (``bench/run.py`` scenario a) at one
concurrency, plaintext and TLS, several rounds with the targets taken in
turn; prints the median CPU per session, the ratio to nginx, the medians of
user and system CPU (Python's share and the kernel's), and each tree's
ratio to the first, paired round by round. With ``--rate`` the clients are
paced, so every target serves the same sessions per second rather than as
many as it can. ``--floor`` adds ``bench/floor_relay.py``, a bare splice on
gevent's loop: what any Python relay costs here.

Instructions (``--instructions``): each tree runs as one proxy under
``valgrind --tool=callgrind`` (installed when missing), instrumentation off
until asked (start-up and warm-up are not counted), and the instructions it
executes are counted per session, one session at a time, each kind of
session in a window of its own: ``greeting`` (connect, QUIT), ``login``
(USER/PASS, QUIT), ``full`` (login, STAT, LIST, UIDL, RETR 1, QUIT) on the
plaintext port, and ``tls-full`` on the pop3s port, OpenSSL's work included.
The proxy's periodic timers over a window's settling time are measured in an
idle window and taken off. Counts do not depend on the machine's load and
repeat to about 0.5 %, so a change of a few per cent shows here when CPU
time cannot see it; about a minute per tree.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from ssl import SSLContext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import interpreter  # noqa: E402
import load  # noqa: E402
import peers  # noqa: E402
import procstat  # noqa: E402
import run  # noqa: E402
from harness.ports import LOOPBACK, free_port, port_is_open, wait_until  # noqa: E402

FLOOR = "floor relay"
WARM_UP = 8
FLUSH_INTERVAL = 5.0  # pop3proxy's default metrics.flush_interval
START_TIMEOUT = 300.0  # Python under valgrind starts in 20-40 s here; leave room for a busy host


@dataclass(frozen=True)
class Tree:
    """One ``NAME=PATH[@PYTHON][#LOGIN_COMMAND]`` argument."""

    name: str
    path: Path
    python: str | None
    login_command: str

    @classmethod
    def parse(cls, argument: str) -> Tree:
        name, separator, spec = argument.partition("=")
        if not separator:
            raise argparse.ArgumentTypeError(f"{argument!r}: expected NAME=PATH")
        spec, _, login_command = spec.partition("#")
        path, _, python = spec.partition("@")
        return cls(name, Path(path).resolve(), python or None, login_command or "auth_plain")

    def use(self, bench: run.Bench, default_python: str) -> None:
        """Make ``bench``'s next proxy this tree's."""
        os.environ["PYTHONPATH"] = str(self.path)
        bench.python = interpreter.proxy_python(self.python) if self.python else default_python
        bench.login_command = self.login_command
        print(f"{self.name}: {self.path} on Python {interpreter.describe(bench.python)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "trees", nargs="*", type=Tree.parse, help="NAME=PATH of a tree holding pop3proxy/"
    )
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per session (callgrind)"
    )
    cpu = parser.add_argument_group("CPU per session")
    cpu.add_argument("--rounds", type=int, default=3)
    cpu.add_argument("--concurrency", type=int, default=8)
    cpu.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    cpu.add_argument(
        "--rate",
        type=float,
        help="sessions per second for every target (paced clients) instead of flat out",
    )
    cpu.add_argument(
        "--pin",
        action="store_true",
        help="proxies on the second CPU, Dovecot and the load on the first",
    )
    cpu.add_argument("--floor", action="store_true", help="also a bare relay on gevent's loop")
    counts = parser.add_argument_group("instructions per session")
    counts.add_argument("--sessions", type=int, default=200, help="per kind and tree")
    counts.add_argument("--phases", nargs="+", choices=list(PHASES), default=list(PHASES))
    interpreter.add_argument(parser)
    args = parser.parse_args(argv)
    trees = args.trees or [Tree.parse(f"pop3proxy={HERE.parent}")]
    python = interpreter.proxy_python(args.python)
    # ``python -m pop3proxy`` looks in its working directory first: run from elsewhere.
    os.chdir(tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="pop3proxy-compare-"))
    work.chmod(0o755)
    bench = run.Bench({**run.PROFILES["quick"], "idle": 10, "workers": 1}, work)
    try:
        if args.instructions:
            ensure_valgrind()
            bench.start_backends()
            count_instructions(bench, work, trees, python, args)
        else:
            peers.ensure_debian_packages()
            bench.start_backends()
            compare_cpu(bench, trees, python, args)
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


# -- CPU per session ---------------------------------------------------------------


def compare_cpu(bench: run.Bench, trees: list[Tree], python: str, args: argparse.Namespace) -> None:
    assert bench.dovecot is not None
    if args.pin:
        os.sched_setaffinity(0, {0})  # every process started from here inherits it
    bench.nginx = bench.new_nginx()
    targets = {
        "nginx": (bench.nginx.ports["plain"], bench.nginx.ports["pop3s"], bench.nginx.pids())
    }
    proxies = []
    floor: subprocess.Popen[bytes] | None = None
    try:
        if args.floor:
            port = free_port()
            command = [python, str(HERE / "floor_relay.py"), str(port), str(bench.dovecot.port)]
            floor = subprocess.Popen(command)
            wait_until(lambda: port_is_open(LOOPBACK, port), 10, message=FLOOR)
            targets[FLOOR] = (port, None, [floor.pid])
        for tree in trees:
            tree.use(bench, python)
            proxy = bench.new_proxy()
            proxies.append(proxy)
            targets[tree.name] = (
                proxy.ports["plain"],
                proxy.ports["pop3s"],
                peers.proxy_pids(proxy),
            )
        if args.pin:
            for _, _, pids in targets.values():
                for pid in pids:
                    os.sched_setaffinity(pid, {1})
        cpu = measure_cpu(bench, targets, args)
        paired(cpu, [tree.name for tree in trees])
    finally:
        for proxy in proxies:
            proxy.stop()
        if floor is not None:
            floor.kill()
            floor.wait()


def measure_cpu(
    bench: run.Bench, targets: dict, args: argparse.Namespace
) -> dict[tuple[str, str], list[float]]:
    """CPU per session of every target, by (mode, target), one figure per round."""
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
    return cpu


def paired(cpu: dict[tuple[str, str], list[float]], trees: list[str]) -> None:
    """Each tree against the first, round by round: the rounds of one tree
    wander together with the machine's load, their ratios much less."""
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


# -- instructions per session -------------------------------------------------------


def greeting(port: int, context: object, user: str, password: str) -> None:
    """Connect, read the greeting, QUIT: the accept and close path alone."""
    conn = load.Conn(port, None)
    conn.status(b"QUIT")
    conn.close()


def login(port: int, context: object, user: str, password: str) -> None:
    """USER/PASS then QUIT: adds the directory lookup and the backend dial and login."""
    conn = load.Conn(port, None)
    conn.login(user, password)
    conn.status(b"QUIT")
    conn.close()


PHASES: dict[str, tuple[Callable[..., None], bool]] = {  # name: (session, over TLS)
    "greeting": (greeting, False),
    "login": (login, False),
    "full": (load.full_session, False),
    "tls-full": (load.full_session, True),
}


def ensure_valgrind() -> None:
    """Install valgrind when missing, as ``peers.ensure_debian_packages`` does nginx."""
    if shutil.which("valgrind") and shutil.which("callgrind_control"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit("valgrind missing; install it (apt-get install valgrind)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, timeout=300)
    command = ["apt-get", "install", "-y", "--no-install-recommends", "valgrind"]
    subprocess.run(command, check=True, env=env, timeout=600)


def count_instructions(
    bench: run.Bench, work: Path, trees: list[Tree], python: str, args: argparse.Namespace
) -> None:
    counts: dict[str, dict[str, float]] = {}
    for tree in trees:
        tree.use(bench, python)
        counts[tree.name] = callgrind_counts(bench, work, args.phases, args.sessions)
    names = [tree.name for tree in trees]
    first = names[0]
    print(f"\ninstructions per session (callgrind, {args.sessions} sessions each, millions):")
    print(f"  {'phase':10} {first:>10}" + "".join(f" {name:>10}{'':9}" for name in names[1:]))
    for phase in args.phases:
        row = f"  {phase:10} {counts[first][phase]:10.3f}"
        for name in names[1:]:
            ratio = counts[name][phase] / counts[first][phase]
            row += f" {counts[name][phase]:10.3f}  (x{ratio:.2f})"
        print(row)


def callgrind_counts(
    bench: run.Bench, work: Path, phases: list[str], sessions: int
) -> dict[str, float]:
    """Start one proxy under callgrind and count each phase; millions per session."""
    template = bench.new_proxy()  # its config and ports; also shows the tree starts at all
    template.stop()
    ports, out = template.ports, work / f"callgrind-{template.workdir.name}"
    command = [
        *("valgrind", "--tool=callgrind", "--instr-atstart=no"),
        f"--callgrind-out-file={out}",
        *(bench.python, "-m", "pop3proxy", "serve", "--config", str(template.config_path)),
    ]
    log = out.with_suffix(".log")
    with log.open("wb") as sink:
        proxy = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    context = load.client_context(str(bench.certs.ca_file))
    results = {}
    try:
        wait_until(lambda: _started(proxy, ports["plain"], log), START_TIMEOUT, message=str(log))
        for phase in phases:
            _drive(bench, ports, context, phase, WARM_UP)
        _settle(proxy.pid)
        # The timers' share of a window's settling time, measured once and taken off.
        idle = _collect(proxy.pid, Path(f"{out}.1"), "idle", lambda: None)
        for number, phase in enumerate(phases, 2):
            action = partial(_drive, bench, ports, context, phase, sessions)
            count = _collect(proxy.pid, Path(f"{out}.{number}"), phase, action)
            results[phase] = (count - idle) / sessions / 1e6
    finally:
        proxy.terminate()
        try:
            proxy.wait(120)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
    return results


def _started(proxy: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    """True once the proxy listens; fails fast, with valgrind's log, when it has exited."""
    if proxy.poll() is not None:
        raise RuntimeError(f"proxy under valgrind exited:\n{log.read_text()[-2000:]}")
    return port_is_open(LOOPBACK, port)


def _drive(
    bench: run.Bench, ports: dict[str, int], context: SSLContext, phase: str, n: int
) -> None:
    """``n`` sessions of one phase, one at a time, the users taken in turn."""
    session, tls = PHASES[phase]
    port = ports["pop3s" if tls else "plain"]
    for index in range(n):
        user, password = bench.users[index % len(bench.users)]
        session(port, context if tls else None, user, password)


def _control(pid: int, *args: str) -> None:
    """One ``callgrind_control`` request (through vgdb; it returns once carried out)."""
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def _settle(pid: int) -> None:
    """Wait until the proxy has done all it owes for the sessions so far, then is idle.

    Metrics gathered at a session's end reach the histograms only at the next
    ``metrics.flush_interval`` tick (a sizeable share of a short session), and
    the last session's close callbacks run after the client has its QUIT reply.
    Nothing outside shows a flush, so wait past one interval, then until the
    process has used no CPU for a quarter of a second.
    """
    due = time.monotonic() + FLUSH_INTERVAL + 1.0
    last = [-1.0]

    def idle() -> bool:
        now = procstat.run_seconds([pid])
        done, last[0] = now == last[0], now
        return done

    wait_until(lambda: time.monotonic() > due and idle(), 120, interval=0.25, message="idle")


def _collect(pid: int, dump: Path, label: str, action: Callable[[], None]) -> int:
    """Instructions of one window: zero, ``action``, settle, dump (to ``dump``: the
    output file name with the dump's ordinal appended, as callgrind names it)."""
    _control(pid, "--zero")
    _control(pid, "--instr=on")
    action()
    _settle(pid)
    _control(pid, "--instr=off")
    _control(pid, f"--dump={label}")
    wait_until(dump.exists, 60, message=f"callgrind dump {dump}")
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"no totals in {dump}")


if __name__ == "__main__":
    sys.exit(main())
