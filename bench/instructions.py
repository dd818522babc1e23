#!/usr/bin/env python
"""Instructions pop3proxy executes per client session, counted by valgrind's callgrind.

    .venv/bin/python bench/instructions.py                         # this checkout
    .venv/bin/python bench/instructions.py before=/tmp/old after=.  # A/B of two trees
    .venv/bin/python bench/instructions.py --sessions 100 --phases login full

CPU time per session on this shared machine wanders by 5-15 % between runs;
instruction counts repeat to about 0.5 %, so a change of a few per cent shows
here when ``bench/compare.py`` cannot see it. Each ``NAME=PATH`` tree runs as
one proxy under ``valgrind --tool=callgrind``, instrumentation off until asked
(start-up and warm-up are not counted), against the Dovecot of ``bench/run.py``,
on the interpreter ``bench/interpreter.py`` picks (counts differ between builds).
Each phase, a kind of session, is warmed up, then driven one session at a time
(counts do not depend on load) in a collection window of its own: ``greeting``
(connect, QUIT), ``login`` (USER/PASS, QUIT), ``full`` (``load.full_session``:
login, STAT, LIST, UIDL, RETR 1, QUIT) on the plaintext port, and ``tls-full``
on the pop3s port, OpenSSL's handshake and record work included. The proxy's
periodic timers (file and certificate polls, ~0.08 M instructions a second)
over a window's settling time are measured in an idle window and taken off.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from ssl import SSLContext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

import interpreter  # noqa: E402
import load  # noqa: E402
import procstat  # noqa: E402
import run  # noqa: E402
from harness.ports import LOOPBACK, port_is_open, wait_until  # noqa: E402

WARM_UP = 8
FLUSH_INTERVAL = 5.0  # pop3proxy's default metrics.flush_interval
START_TIMEOUT = 300.0  # Python under valgrind starts in 20-40 s here; leave room for a busy host


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


def control(pid: int, *args: str) -> None:
    """One ``callgrind_control`` request (through vgdb; it returns once carried out)."""
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def settle(pid: int) -> None:
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


def drive(bench: run.Bench, ports: dict[str, int], context: SSLContext, phase: str, n: int) -> None:
    """``n`` sessions of one phase, one at a time, the users taken in turn."""
    session, tls = PHASES[phase]
    port = ports["pop3s" if tls else "plain"]
    for index in range(n):
        user, password = bench.users[index % len(bench.users)]
        session(port, context if tls else None, user, password)


def started(proxy: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    """True once the proxy listens; fails fast, with valgrind's log, when it has exited."""
    if proxy.poll() is not None:
        raise RuntimeError(f"proxy under valgrind exited:\n{log.read_text()[-2000:]}")
    return port_is_open(LOOPBACK, port)


def total(dump: Path) -> int:
    """The instruction count of one callgrind dump (its ``totals:`` line)."""
    for line in dump.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise ValueError(f"no totals in {dump}")


def collect(pid: int, dump: Path, label: str, action: Callable[[], None]) -> int:
    """Instructions of one window: zero, ``action``, settle, dump (to ``dump``: the
    output file name with the dump's ordinal appended, as callgrind names it)."""
    control(pid, "--zero")
    control(pid, "--instr=on")
    action()
    settle(pid)
    control(pid, "--instr=off")
    control(pid, f"--dump={label}")
    wait_until(dump.exists, 60, message=f"callgrind dump {dump}")
    return total(dump)


def measure(
    bench: run.Bench, work: Path, phases: list[str], sessions: int, python: str
) -> dict[str, float]:
    """Start one proxy under callgrind and count each phase; millions per session."""
    template = bench.new_proxy()  # its config and ports; also shows the tree starts at all
    template.stop()
    ports, out = template.ports, work / f"callgrind-{template.workdir.name}"
    command = [
        *("valgrind", "--tool=callgrind", "--instr-atstart=no"),
        f"--callgrind-out-file={out}",
        *(python, "-m", "pop3proxy", "serve", "--config", str(template.config_path)),
    ]
    log = out.with_suffix(".log")
    with log.open("wb") as sink:
        proxy = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    context = load.client_context(str(bench.certs.ca_file))
    results = {}
    try:
        wait_until(lambda: started(proxy, ports["plain"], log), START_TIMEOUT, message=str(log))
        for phase in phases:
            drive(bench, ports, context, phase, WARM_UP)
        settle(proxy.pid)
        # The timers' share of a window's settling time, measured once and taken off.
        idle = collect(proxy.pid, Path(f"{out}.1"), "idle", lambda: None)
        for number, phase in enumerate(phases, 2):
            action = partial(drive, bench, ports, context, phase, sessions)
            count = collect(proxy.pid, Path(f"{out}.{number}"), phase, action)
            results[phase] = (count - idle) / sessions / 1e6
    finally:
        proxy.terminate()
        try:
            proxy.wait(120)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="*", help="NAME=PATH of a tree holding pop3proxy/")
    parser.add_argument("--sessions", type=int, default=200, help="per phase and tree")
    parser.add_argument("--phases", nargs="+", choices=list(PHASES), default=list(PHASES))
    interpreter.add_argument(parser)
    args = parser.parse_args(argv)
    python = interpreter.proxy_python(args.python)
    trees = dict(tree.split("=", 1) for tree in args.trees) or {"pop3proxy": str(HERE.parent)}
    # ``python -m pop3proxy`` looks in its working directory first: run from elsewhere.
    os.chdir(tempfile.gettempdir())
    ensure_valgrind()
    work = Path(tempfile.mkdtemp(prefix="pop3proxy-instructions-"))
    work.chmod(0o755)
    bench = run.Bench({**run.PROFILES["quick"], "idle": 10, "workers": 1}, work)
    counts: dict[str, dict[str, float]] = {}
    try:
        bench.start_backends()
        for name, path in trees.items():
            os.environ["PYTHONPATH"] = str(Path(path).resolve())
            counts[name] = measure(bench, work, args.phases, args.sessions, python)
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ninstructions per session (callgrind, {args.sessions} sessions each, millions):")
    first = next(iter(trees))
    print(f"  {'phase':10} {first:>10}" + "".join(f" {name:>10}{'':9}" for name in list(trees)[1:]))
    for phase in args.phases:
        row = f"  {phase:10} {counts[first][phase]:10.3f}"
        for name in list(trees)[1:]:
            ratio = counts[name][phase] / counts[first][phase]
            row += f" {counts[name][phase]:10.3f}  (x{ratio:.2f})"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
