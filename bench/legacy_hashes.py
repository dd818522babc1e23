#!/usr/bin/env python
"""What an imported (legacy) password hash costs a login, per scheme.

    .venv/bin/python bench/legacy_hashes.py [--checks 40]

For each scheme ``pop3proxy user import`` accepts, a hash made by Dovecot
(``doveadm pw``) is checked the way a login checks it: on gevent's thread
pool, from a greenlet. Prints per scheme the CPU per check (user + system
of this process, its threads included) and how late a 1 ms timer greenlet on the event loop ran
meanwhile (the worst and the 99th percentile lateness): what the other
sessions of the process feel while a check runs. The proxy's own argon2id
check (``auth.argon2_*`` defaults) is the reference row.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from harness.doveadm import dovecot_hash  # noqa: E402

from pop3proxy.auth import Passwords  # noqa: E402
from pop3proxy.legacyhashes import ACCEPTED_SCHEMES, parse_imported_hash  # noqa: E402

PASSWORD = "correct horse battery staple"
TICK = 0.001


def measure(passwords: Passwords, stored: str, checks: int) -> tuple[float, float, float]:
    """CPU per check (ms), and the timer's worst and p99 lateness (ms)."""
    lateness: list[float] = []
    running = True

    def timer() -> None:
        while running:
            due = time.perf_counter() + TICK
            gevent.sleep(TICK)
            lateness.append(max(time.perf_counter() - due, 0.0))

    ticker = gevent.spawn(timer)
    gevent.sleep(0.05)
    lateness.clear()
    threadpool = gevent.get_hub().threadpool
    started = time.process_time()
    for _ in range(checks):
        assert threadpool.apply(passwords.verify, (stored, PASSWORD))
    used = time.process_time() - started
    running = False
    ticker.join()
    lateness.sort()
    p99 = lateness[int(len(lateness) * 0.99)] if lateness else 0.0
    return used / checks * 1000, max(lateness, default=0.0) * 1000, p99 * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=40, help="checks per scheme")
    args = parser.parse_args(argv)
    passwords = Passwords()
    rows = [("argon2id (proxy default)", passwords.hash(PASSWORD))]
    for scheme in ACCEPTED_SCHEMES:
        rows.append((scheme, parse_imported_hash(dovecot_hash(scheme, PASSWORD))[1]))
    print(f"{'scheme':<26} {'CPU/check ms':>12} {'loop late max ms':>17} {'p99 ms':>7}")
    for name, stored in rows:
        results = [measure(passwords, stored, args.checks) for _ in range(3)]
        per_check = statistics.median(r[0] for r in results)
        worst = statistics.median(r[1] for r in results)
        p99 = statistics.median(r[2] for r in results)
        print(f"{name:<26} {per_check:>12.3f} {worst:>17.2f} {p99:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
