"""Start and stop server processes so that none outlives the test run.

Each server runs in its own session (``start_new_session=True``), so its whole
process group (Dovecot's master and its children) can be signalled at once
without touching anything else on the machine, such as the system redis.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Self

from .ports import wait_until

STOP_TIMEOUT = 10.0


def spawn(argv: list[str], output: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, stdout and stderr appended to ``output``.

    The output file keeps start-up errors (bad configuration, port in use) that
    happen before the server's own log is open.
    """
    with output.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def group_alive(pgid: int) -> bool:
    """True while a process of the group is running (zombies do not count).

    A child orphaned by its exiting leader is reparented to pid 1, which in a
    container may reap it late; a zombie holds no port or file, so it is gone.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return True
    for stat in proc_root.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited while we looked
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            return True
    return False


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group, wait for all of it; SIGKILL what is left.

    The whole group gets the signal: Dovecot's master alone takes over a
    second to shut its children down, all of them together take milliseconds.
    Waiting for the group, not only the leader, matters too: a login or pop3
    child left behind would keep a port or a mailbox busy.
    """
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    _reap_group(proc.pid, timeout)


def kill(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGKILL the whole group at once, as a crash would."""
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait(timeout)
    _reap_group(proc.pid, timeout)


def _reap_group(pgid: int, timeout: float) -> None:
    """Wait until no process of the group is left, killing stragglers."""
    try:
        wait_until(
            lambda: not group_alive(pgid),
            timeout / 2,
            message=f"process group {pgid} to exit",
        )
    except TimeoutError:
        _signal_group(pgid, signal.SIGKILL)
        wait_until(
            lambda: not group_alive(pgid),
            timeout / 2,
            message=f"process group {pgid} to exit after SIGKILL",
        )


class ServerProcess:
    """What every test server shares: one child process, its log, its directory.

    A subclass sets ``_proc`` in ``start()``, ``log_path``, and
    ``_remove_files`` (a ``weakref.finalize`` that deletes its directory).
    """

    _proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    def start(self) -> None:
        raise NotImplementedError

    def _remove_files(self) -> None:
        """Nothing to delete unless the subclass made a directory."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The leader's pid, which is also the process group of all its children."""
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """SIGTERM the whole process group and wait: a clean shutdown."""
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the group: the server vanishes mid-flight, as in a crash."""
        if self._proc is not None:
            kill(self._proc)
            self._proc = None

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        """Stop and delete the instance directory."""
        self.stop()
        self._remove_files()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
