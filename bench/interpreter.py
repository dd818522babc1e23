"""Which Python runs pop3proxy in the benchmarks: a build like the production image's.

The image runs on ``python:3.11-slim``, whose CPython is built with
profile-guided optimisation and link-time optimisation. The interpreter a
checkout's ``.venv`` is made from need not be: pyenv builds, for one, are
plain ``-O3 --enable-shared`` builds, and measured here they run the same
Python code about a third slower (docs/performance.md). CPU per session
measured on such a build says more about the build than about pop3proxy.

So the proxy runs under Debian's ``/usr/bin/python3.X`` (same minor version
as this interpreter, built with PGO and LTO) when there is one, in a venv of
its own (``.venv-bench``) holding the project and its dependencies, installed
by this venv's pip; ``--python PATH`` picks another, ``--python venv`` this
one. The load generator and nginx do not depend on it.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_VENV = ROOT / ".venv-bench"
OPTIMIZED = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--python",
        help="interpreter for pop3proxy (default: an optimized build if any; 'venv': this one)",
    )


def proxy_python(requested: str | None, log=print) -> str:
    """The interpreter for pop3proxy: ``requested``, else an optimized build if
    there is one (its venv made or refreshed as needed), else this one."""
    if requested == "venv":
        return sys.executable
    if requested:
        return requested
    if not OPTIMIZED.exists():
        log(f"{OPTIMIZED} not found: pop3proxy runs on {sys.executable}, which may be slower")
        return sys.executable
    return str(_bench_venv(log))


def _bench_venv(log) -> Path:
    """``.venv-bench`` on the optimized interpreter, with the project installed
    (editable, so it runs this checkout); rebuilt when pyproject.toml changes."""
    python = BENCH_VENV / "bin" / "python"
    stamp = BENCH_VENV / "pyproject.sha256"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    log(f"preparing {BENCH_VENV} on {OPTIMIZED} (once)")
    venv = [str(OPTIMIZED), "-m", "venv", "--clear", "--without-pip", str(BENCH_VENV)]
    subprocess.run(venv, check=True)
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    subprocess.run([*pip, "--editable", str(ROOT)], check=True, timeout=900)
    stamp.write_text(wanted)
    return python


def describe(python: str) -> str:
    """``3.11.2 (/usr/bin/python3.11)``: the version and the real executable."""
    code = "import platform, sys; print(platform.python_version(), sys._base_executable)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    version, executable = out.stdout.split()
    return f"{version} ({executable})"
