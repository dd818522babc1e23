"""CPU time and memory of server processes, read from /proc."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """User and system CPU of ``pids`` (fields 14 and 15 of /proc/PID/stat), in seconds.

    The split tells Python's share from the kernel's: a proxy's system time
    is mostly the same sends and receives whatever it is written in.
    """
    user = system = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / TICK, system / TICK


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU of ``pids``, in seconds."""
    return sum(cpu_split(pids))


def pss_kb(pids: list[int]) -> int:
    """Proportional set size of ``pids`` (from /proc/PID/smaps_rollup), in KiB."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
                break
    return total


def run_seconds(pids: list[int]) -> float:
    """Time on CPU from /proc/PID/task/*/schedstat (nanoseconds): a finer cross-check."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue
    return total / 1e9
