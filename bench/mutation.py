#!/usr/bin/env python
"""Mutation testing of the sans-IO core: how much of it the unit tests pin.

    .venv/bin/python bench/mutation.py                  # score per file and overall (a few minutes)
    .venv/bin/python bench/mutation.py --survivors      # and the diff of every survivor

mutmut (3.8) rewrites ``pop3proxy/protocol/`` one small change at a time
(a ``<`` for a ``<=``, a string for another, a ``None`` for a value) and
runs the unit tests that reach the changed function against each change;
a change no test notices "survives". The configuration is in
pyproject.toml's ``[tool.mutmut]``: only the protocol core is mutated and
only ``tests/unit`` judges it, so a run needs no server and takes minutes.
Not part of ``scripts/test``: run it before and after touching the core.

mutmut is installed into the running interpreter's environment if missing.
It works in a copy of the tree under ``mutants/`` (git-ignored), which this
script clears first unless ``--keep`` is given: a result cached from other
tests could hide a change in what they pin.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTMUT = "mutmut>=3.8,<3.9"
MUTATED = Path("pop3proxy/protocol")
DETECTED = ("killed", "timeout", "caught by type check")
"""A mutant the tests notice: a failing test, or a test that no longer ends."""


def ensure_mutmut() -> None:
    try:
        version = importlib.metadata.version("mutmut")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    if not version.startswith("3.8."):
        print(f"installing {MUTMUT} into {sys.prefix}", file=sys.stderr)
        pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, MUTMUT], check=True)
        importlib.invalidate_caches()


def run_mutmut(max_children: int) -> None:
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    print("running", " ".join(command[1:]), "(a few minutes)", file=sys.stderr)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    log = ROOT / "mutants" / "run.log"
    if log.parent.is_dir():
        log.write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        sys.exit(f"mutmut run failed ({done.returncode}):\n{tail}")


def results() -> dict[str, Counter[str]]:
    """Mutant outcomes by source file, from mutmut's records in ``mutants/``."""
    from mutmut.stats import status_by_exit_code

    by_file: dict[str, Counter[str]] = {}
    for meta in sorted((ROOT / "mutants" / MUTATED).glob("*.py.meta")):
        exit_codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        if exit_codes:
            by_file[meta.name.removesuffix(".meta")] = Counter(
                status_by_exit_code[code] for code in exit_codes.values()
            )
    return by_file


def score(outcomes: Counter[str]) -> float:
    total = sum(outcomes.values())
    return 100.0 * sum(outcomes[status] for status in DETECTED) / total if total else 100.0


def report(by_file: dict[str, Counter[str]]) -> None:
    print(f"{'file':<16}{'mutants':>9}{'killed':>8}{'survived':>10}{'no tests':>10}{'score':>9}")
    overall: Counter[str] = Counter()
    for name, outcomes in by_file.items():
        overall += outcomes
        print(row(name, outcomes))
    print(row("overall", overall))


def row(name: str, outcomes: Counter[str]) -> str:
    return (
        f"{name:<16}{sum(outcomes.values()):>9}{sum(outcomes[s] for s in DETECTED):>8}"
        f"{outcomes['survived']:>10}{outcomes['no tests']:>10}{score(outcomes):>8.1f}%"
    )


def show_survivors() -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "mutmut", "results"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in listing.splitlines():
        name = line.strip().rpartition(": ")[0]
        if name:
            shown = subprocess.run(
                [sys.executable, "-m", "mutmut", "show", name],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
            )
            print(shown.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-children",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="mutants tested in parallel (default: %(default)s)",
    )
    parser.add_argument("--survivors", action="store_true", help="print each survivor's diff")
    parser.add_argument(
        "--keep", action="store_true", help="reuse mutants/ and mutmut's cached results"
    )
    args = parser.parse_args()
    ensure_mutmut()
    if not args.keep:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    run_mutmut(args.max_children)
    if args.survivors:
        show_survivors()
    report(results())


if __name__ == "__main__":
    main()
