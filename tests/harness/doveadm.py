"""Password hashes made by Dovecot itself (``doveadm pw``), as a server the
users move off would hold them. ``doveadm pw`` needs no running Dovecot."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

EMPTY_CONFIG = "/dev/null"
"""``doveadm -c``: the system's dovecot.conf plays no part in the hashes."""


def dovecot_hash(scheme: str, password: str) -> str:
    """``{SCHEME}hash`` of ``password``, as ``doveadm pw -s SCHEME`` writes it."""
    if shutil.which("doveadm") is None:
        pytest.skip("'doveadm' is not installed (Debian: dovecot-core)")
    result = subprocess.run(
        ["doveadm", "-c", EMPTY_CONFIG, "pw", "-s", scheme, "-p", password],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return result.stdout.strip()


def write_passwd_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path
