#!/usr/bin/env python
"""pop3proxy beside nginx's mail proxy and direct Dovecot: one run, same machine, same load.

    .venv/bin/python bench/run.py --quick            # about 2 minutes
    .venv/bin/python bench/run.py --write-doc        # full run, updates docs/performance.md
    .venv/bin/python bench/run.py --quick --profile  # plus a py-spy profile of pop3proxy

Starts a private Dovecot (generated mail store), a private nginx mail proxy
(1 worker, auth_http answered by nginx itself), a stub backend for idle
sessions and pop3proxy (logging at ``warning``), all on 127.0.0.1, and runs:

(a) full sessions (connect, TLS, USER/PASS, STAT, LIST, UIDL, RETR ~20 KB,
    QUIT) at concurrency 1, 16, 128, plaintext and implicit TLS: proxy CPU
    (schedstat of every thread, nginx master+worker) per session;
(b) ordinary-client latency: poplib (Nagle left on), sequential sessions;
(c) bulk: one 10 MB RETR, MB/s, plaintext and TLS;
(d) N idle authenticated sessions on a fresh proxy: PSS per session.

Results go to bench/results/ (JSON, gitignored) and the table to stdout.
Needs root only to install nginx when missing and to raise the fd limit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import interpreter  # noqa: E402
import load  # noqa: E402
import peers  # noqa: E402
import procstat  # noqa: E402
import report  # noqa: E402
from harness.certs import make_certs  # noqa: E402
from harness.mailbox import big_message  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "performance.md"
CHART = ROOT / "docs" / "performance.png"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

MESSAGES_PER_USER = 10
MESSAGE_SIZE = 20_000
BULK_SIZE = 10 * 1024 * 1024
BULK_USER = ("bulk@" + peers.TENANT, "bulk-secret")

PROFILES = {
    "quick": {
        "users": 32,
        "duration": 2.0,
        "rounds": 2,
        "max_sessions": 3000,
        "ordinary": 30,
        "bulk_reps": 8,
        "idle": 1000,
        "idle_procs": 4,
        "profile_seconds": 10,
    },
    "full": {
        "users": 128,
        "duration": 6.0,
        "rounds": 3,
        "max_sessions": 20000,
        "ordinary": 150,
        "bulk_reps": 15,
        "idle": 10000,
        "idle_procs": 8,
        "profile_seconds": 20,
    },
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def raise_fd_limit(want: int) -> int:
    """Raise RLIMIT_NOFILE for us and every server we start (they inherit it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want and os.geteuid() == 0:
        limit = min(want, int(Path("/proc/sys/fs/nr_open").read_text()))
        try:  # needs CAP_SYS_RESOURCE, which a container may not grant even to root
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return limit
        except (ValueError, OSError):
            log(f"cannot raise the hard fd limit above {hard} (no CAP_SYS_RESOURCE)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import gevent

    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    dovecot = subprocess.run(["dovecot", "--version"], capture_output=True, text=True).stdout
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "pop3proxy_commit": commit,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "gevent": gevent.__version__,
        "openssl": ssl.OPENSSL_VERSION,
        "nginx": nginx.removeprefix("nginx version: "),
        "dovecot": dovecot.split()[0] if dovecot.split() else "unknown",
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
    }


def cpu_busy(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat): is someone else running?"""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


class Bench:
    def __init__(self, settings: dict[str, Any], work: Path) -> None:
        self.s = settings
        self.work = work
        self.certs = make_certs(work / "certs")
        self.users = [(f"user{i}@{peers.TENANT}", f"secret-{i}") for i in range(settings["users"])]
        self.idle_users = [
            (f"idle{i}@{peers.IDLE_TENANT}", "idle") for i in range(settings["idle"])
        ]
        self.results: dict[str, Any] = {"targets": {t: {} for t in report.TARGETS}}
        self.dovecot: peers.BenchDovecot | None = None
        self.idle_backend: peers.IdleBackend | None = None
        self.nginx: peers.Nginx | None = None
        self.proxy = None
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        self.workers = settings.get("workers", 1)
        self.python = settings.get("python", sys.executable)
        """The interpreter that runs pop3proxy (``bench/interpreter.py``)."""
        self.login_command = settings.get("login_command", "auth_plain")
        """How pop3proxy logs in to Dovecot (``peers.start_pop3proxy``)."""
        self._serial = 0

    # -- servers ---------------------------------------------------------------

    def start_backends(self) -> None:
        users = dict(self.users)
        users[BULK_USER[0]] = BULK_USER[1]
        self.dovecot = peers.BenchDovecot(users, certs=self.certs)
        self.dovecot.start()
        for index, (user, _) in enumerate(self.users):
            self.dovecot.deliver(
                user,
                (
                    big_message(MESSAGE_SIZE, seed=f"{index}-{n}".encode())
                    for n in range(MESSAGES_PER_USER)
                ),
            )
        self.dovecot.deliver(BULK_USER[0], [big_message(BULK_SIZE)])
        self.idle_backend = peers.IdleBackend().start()

    def new_nginx(self) -> peers.Nginx:
        assert self.dovecot and self.idle_backend
        return peers.Nginx(
            self.certs, self.dovecot.port, self.idle_backend.port, self.nofile, self.workers
        ).start()

    def new_proxy(self):
        assert self.dovecot and self.idle_backend
        self._serial += 1
        return peers.start_pop3proxy(
            self.work / f"pop3proxy-{self._serial}",
            self.certs,
            self.dovecot.port,
            self.idle_backend.port,
            max_connections=2 * self.s["idle"] + 1000,
            workers=self.workers,
            python=self.python,
            login_command=self.login_command,
        )

    def start_proxies(self) -> None:
        self.nginx = self.new_nginx()
        self.proxy = self.new_proxy()

    def stop_proxies(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.nginx is not None:
            self.nginx.stop()
            self.nginx = None

    def stop(self) -> None:
        self.stop_proxies()
        if self.idle_backend is not None:
            self.idle_backend.stop()
        if self.dovecot is not None:
            self.dovecot.close()

    def targets(self) -> dict[str, tuple[load.Target, list[int] | None]]:
        assert self.dovecot and self.nginx and self.proxy
        return {
            "direct": (
                load.Target("direct", self.dovecot.port, self.dovecot.pop3s_port or 0),
                None,
            ),
            "nginx": (
                load.Target("nginx", self.nginx.ports["plain"], self.nginx.ports["pop3s"]),
                self.nginx.pids(),
            ),
            "pop3proxy": (
                load.Target("pop3proxy", self.proxy.ports["plain"], self.proxy.ports["pop3s"]),
                peers.proxy_pids(self.proxy),
            ),
        }

    # -- scenarios -------------------------------------------------------------

    def warm_up(self) -> None:
        """Every user's mailbox indexed by Dovecot; every target has served TLS and plain."""
        context = load.client_context(str(self.certs.ca_file))
        for target, _ in self.targets().values():
            for user, password in self.users:
                load.full_session(target.plain, None, user, password)
            for user, password in self.users[:4]:
                load.full_session(target.pop3s, context, user, password)

    def sessions(self) -> None:
        """Scenario (a): each cell in ``rounds`` windows, the targets taken in turn.

        A target's CPU per session is the median of its windows. On this
        shared machine a burst of someone else's work lands in one window: it
        moves one sample of one target, not that target's whole figure, as it
        did with one long window each (a cell's ratio wandered by up to a
        quarter between runs).
        """
        rounds = self.s["rounds"]
        for mode in report.MODES:
            for concurrency in report.CONCURRENCY:
                windows: dict[str, list[dict[str, Any]]] = {}
                # c=1 is slow through a proxy that stalls on Nagle: give it longer.
                duration = self.s["duration"] * (2 if concurrency == 1 else 1) / rounds
                for _ in range(rounds):
                    for name, (target, pids) in self.targets().items():
                        window = self._session_window(target, pids, mode, concurrency, duration)
                        windows.setdefault(name, []).append(window)
                for name, measured in windows.items():
                    figure = _combine_windows(measured)
                    node = self.results["targets"][name].setdefault("sessions", {})
                    node.setdefault(mode, {})[str(concurrency)] = figure
                    self._log_sessions(name, mode, concurrency, figure)

    def _session_window(
        self,
        target: load.Target,
        pids: list[int] | None,
        mode: str,
        concurrency: int,
        duration: float,
    ) -> dict[str, Any]:
        before = procstat.cpu_seconds(pids) if pids else None
        before_ns = procstat.run_seconds(pids) if pids else None
        started = time.perf_counter()
        result = load.run_sessions(
            target.port(mode == "tls"),
            mode == "tls",
            self.certs.ca_file,
            self.users,
            concurrency,
            duration,
            max(1, self.s["max_sessions"] // self.s["rounds"]),
        )
        elapsed = time.perf_counter() - started
        done = result.sessions
        return {
            "result": result,
            "seconds": elapsed,
            "cpu_ms": (procstat.run_seconds(pids) - before_ns) * 1000 / done
            if pids and done
            else None,
            "cpu_ms_stat": (procstat.cpu_seconds(pids) - before) * 1000 / done
            if pids and done
            else None,
        }

    def _log_sessions(self, name: str, mode: str, concurrency: int, figure: dict[str, Any]) -> None:
        cpu_text = (
            f"{figure['cpu_ms']:.2f} ms CPU/session (windows {figure['cpu_ms_windows']},"
            f" /proc/PID/stat {figure['cpu_ms_stat']:.2f})"
            if figure["cpu_ms"]
            else ""
        )
        log(
            f"sessions {mode:5} c={concurrency:<3} {name:9}: {figure['sessions']} ok, "
            f"{figure['errors']} errors, {figure['per_s']:.0f}/s {cpu_text}"
            + (f" first error: {figure['first_error']}" if figure["errors"] else "")
        )

    def ordinary(self) -> None:
        """Sequential poplib sessions, targets taken in turn so background noise hits all alike."""
        targets = self.targets()
        for mode in report.MODES:
            results = {name: load.LoadResult() for name in targets}
            deadline = time.monotonic() + 90
            for _ in range(self.s["ordinary"]):
                if time.monotonic() > deadline:
                    break
                for name, (target, _) in targets.items():
                    part = load.run_ordinary(
                        target.port(mode == "tls"),
                        mode == "tls",
                        self.certs.ca_file,
                        self.users[0],
                        1,
                        max_time=30,
                    )
                    results[name].merge(part)
            for name, result in results.items():
                figure = {
                    "sessions": result.sessions,
                    "errors": result.errors,
                    "p50_ms": _ms(load.percentile(result.latencies, 50)),
                    "p90_ms": _ms(load.percentile(result.latencies, 90)),
                    "first_error": result.first_error,
                }
                self.results["targets"][name].setdefault("ordinary", {})[mode] = figure
                log(
                    f"ordinary {mode:5} {name:9}: p50 {figure['p50_ms']} ms"
                    f" ({result.sessions} sessions)"
                )

    def bulk(self) -> None:
        """10 MB RETRs, two per session, targets taken in turn; the median counts."""
        context = load.client_context(str(self.certs.ca_file))
        targets = self.targets()
        megabytes = BULK_SIZE / 1e6
        for mode in report.MODES:
            ctx = context if mode == "tls" else None
            times: dict[str, list[float]] = {name: [] for name in targets}
            cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
            for target, _ in targets.values():  # warm: page cache, buffers
                load.bulk_retr(target.port(mode == "tls"), ctx, BULK_USER, BULK_SIZE, 1)
            for _ in range(max(1, self.s["bulk_reps"] // 2)):
                for name, (target, pids) in targets.items():
                    before = procstat.cpu_seconds(pids) if pids else 0.0
                    times[name] += load.bulk_retr(
                        target.port(mode == "tls"), ctx, BULK_USER, BULK_SIZE, 2
                    )
                    cpu[name] += procstat.cpu_seconds(pids) - before if pids else 0.0
            for name, (_, pids) in targets.items():
                figure = {
                    "mb_s": megabytes / statistics.median(times[name]),
                    "best_mb_s": megabytes / min(times[name]),
                    "reps": len(times[name]),
                    "cpu_ms_per_mb": cpu[name] * 1000 / (megabytes * len(times[name]))
                    if pids
                    else None,
                }
                self.results["targets"][name].setdefault("bulk", {})[mode] = figure
                log(
                    f"bulk {mode:5} {name:9}: {figure['mb_s']:.0f} MB/s median, "
                    f"{figure['best_mb_s']:.0f} best of {len(times[name])}"
                )

    def idle(self) -> None:
        """Each proxy fresh, warmed by a few sessions, then N idle sessions: PSS delta / N."""
        count = self.s["idle"]
        for mode in report.MODES:
            for name in ("nginx", "pop3proxy"):
                if name == "nginx":
                    server = self.new_nginx()
                    ports, pids_of = server.ports, server.pids
                else:
                    server = self.new_proxy()
                    ports, pids_of = server.ports, lambda s=server: peers.proxy_pids(s)
                try:
                    port = ports["pop3s" if mode == "tls" else "plain"]
                    context = (
                        load.client_context(str(self.certs.ca_file)) if mode == "tls" else None
                    )
                    for user, password in self.users[:20]:
                        load.full_session(port, context, user, password)
                    time.sleep(1.0)
                    baseline = procstat.pss_kb(pids_of())
                    started = time.perf_counter()
                    held = load.IdleSessions(
                        port,
                        mode == "tls",
                        self.certs.ca_file,
                        self.idle_users,
                        self.s["idle_procs"],
                        max_time=300,
                    )
                    try:
                        opened = time.perf_counter() - started
                        time.sleep(2.0)
                        loaded = procstat.pss_kb(pids_of())
                    finally:
                        held.close()
                finally:
                    server.stop()
                figure = {
                    "sessions": held.open,
                    "baseline_kb": baseline,
                    "loaded_kb": loaded,
                    "kb_per_session": (loaded - baseline) / held.open if held.open else None,
                    "open_seconds": round(opened, 1),
                    "errors": held.errors[:3],
                }
                self.results["targets"][name].setdefault("idle", {})[mode] = figure
                log(
                    f"idle {mode:5} {name:9}: {held.open}/{count} open, PSS {baseline} -> "
                    f"{loaded} KB, {figure['kb_per_session'] or 0:.1f} KB/session"
                    + (f" errors: {held.errors[:2]}" if held.errors else "")
                )

    def profile(self, seconds: int) -> dict[str, Any]:
        """py-spy on pop3proxy during sessions at c=16, plaintext and TLS.

        Writes bench/results/profile-{mode}.svg (flame graph), profile-{mode}.txt
        (collapsed stacks) and profile-top-{mode}.txt (shares per function).
        """
        py_spy = Path(sys.executable).with_name("py-spy")
        if not py_spy.exists():
            log("py-spy not installed in the venv: pip install py-spy; profile skipped")
            return {}
        target, pids = self.targets()["pop3proxy"]  # with workers: the last worker
        summaries = {}
        for mode in report.MODES:
            outputs = {
                "flamegraph": RESULTS / f"profile-{mode}.svg",
                "raw": RESULTS / f"profile-{mode}.txt",
            }
            for fmt, path in outputs.items():
                argv = [str(py_spy), "record", "--pid", str(pids[-1]), "--duration", str(seconds)]
                argv += ["--rate", "200", "--format", fmt, "-o", str(path), "--nonblocking"]
                spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1.0)
                load.run_sessions(
                    target.port(mode == "tls"),
                    mode == "tls",
                    self.certs.ca_file,
                    self.users,
                    16,
                    seconds - 1,
                    10**6,
                )
                _, err = spy.communicate(timeout=seconds + 60)
                if spy.returncode != 0:
                    log(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
                    return summaries
            summary = summarize_profile(outputs["raw"])
            top = RESULTS / f"profile-top-{mode}.txt"
            top.write_text(format_profile(summary))
            log(f"profile {mode}: {outputs['flamegraph']}, {top}")
            print(format_profile(summary))
            summaries[mode] = summary
        return summaries


def _combine_windows(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """One cell's figure from a target's windows: counts and latencies pooled,
    CPU per session the median of the windows (each window's is kept too).

    The median is of the schedstat figures (nanoseconds of run time): a
    window of a few seconds holds only a few 10 ms clock ticks of a
    process's CPU in ``/proc/PID/stat``, whose figure, kept as the
    cross-check ``cpu_ms_stat``, would move by a tick's worth between windows.
    """
    results = [window["result"] for window in windows]
    sessions = sum(result.sessions for result in results)
    latencies = [latency for result in results for latency in result.latencies]
    seconds = sum(window["seconds"] for window in windows)
    cpu = [window["cpu_ms"] for window in windows if window["cpu_ms"] is not None]
    ticks = [window["cpu_ms_stat"] for window in windows if window["cpu_ms_stat"] is not None]
    return {
        "sessions": sessions,
        "errors": sum(result.errors for result in results),
        "seconds": round(seconds, 3),
        "per_s": sessions / seconds if seconds else 0.0,
        "p50_ms": _ms(load.percentile(latencies, 50)),
        "p99_ms": _ms(load.percentile(latencies, 99)),
        "cpu_ms": statistics.median(cpu) if cpu else None,
        "cpu_ms_windows": [round(value, 3) for value in cpu],
        "cpu_ms_stat": statistics.median(ticks) if ticks else None,
        "first_error": next((r.first_error for r in results if r.first_error), None),
    }


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None


# -- profile summary -----------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "lib/python3", f"{ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match['func']} ({path})"


AREAS = (
    ("gevent/threadpool", "gevent thread pool (DNS resolver)"),
    ("gevent/_threading", "gevent thread pool (DNS resolver)"),
    ("gevent/resolver", "gevent thread pool (DNS resolver)"),
    ("gevent/ssl", "TLS (gevent ssl + OpenSSL)"),
    ("gevent/_socket", "socket I/O (gevent wrappers + syscalls)"),
    ("gevent/socket", "socket I/O (gevent wrappers + syscalls)"),
    ("gevent/hub", "gevent hub / event loop"),
    ("gevent/", "gevent other (timeouts, greenlets, pool)"),
    ("prometheus_client", "prometheus_client (metrics)"),
    ("logging", "logging"),
    ("pop3proxy/", "pop3proxy code"),
)


def _area(frame: str) -> str:
    for marker, area in AREAS:
        if marker in frame:
            return area
    return "other (stdlib, dataclasses, ...)"


def summarize_profile(raw: Path) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_counts: Counter[str] = Counter()
    total_counts: Counter[str] = Counter()
    area_counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        total += count
        if frames:
            self_counts[frames[-1]] += count
            area_counts[_area(frames[-1])] += count
        for frame in set(frames):
            total_counts[frame] += count
    return {
        "samples": total,
        "areas": [(a, c / total) for a, c in area_counts.most_common()] if total else [],
        "self": [(f, c / total) for f, c in self_counts.most_common(25)] if total else [],
        "inclusive": [(f, c / total) for f, c in total_counts.most_common(40)] if total else [],
    }


def format_profile(summary: dict[str, Any]) -> str:
    lines = [f"py-spy samples (non-idle): {summary.get('samples', 0)}", "", "by area (leaf):"]
    lines += [f"  {share * 100:5.1f}%  {area}" for area, share in summary.get("areas", [])]
    lines += ["", "self (leaf) share:"]
    lines += [f"  {share * 100:5.1f}%  {frame}" for frame, share in summary.get("self", [])]
    lines += ["", "inclusive share:"]
    lines += [f"  {share * 100:5.1f}%  {frame}" for frame, share in summary.get("inclusive", [])]
    return "\n".join(lines) + "\n"


# -- output ----------------------------------------------------------------------------


def write_doc(results: dict[str, Any], command: str, workers: int) -> None:
    suffix = f"-workers{workers}" if workers > 1 else ""
    begin, end = (
        BEGIN.replace("bench:", f"bench{suffix}:"),
        END.replace("bench:", f"bench{suffix}:"),
    )
    chart_path = CHART.with_name(f"performance{suffix}.png")
    message = report.chart(results, chart_path)
    if message:
        log(message)
    meta = results["machine"]
    block = [
        begin,
        "",
        f"Run: {results['started']} ({results['mode']} mode, {results['seconds']:.0f} s), "
        f"command `{command}`.",
        "",
        f"Machine: {meta['nproc']} CPUs ({meta['cpu']}), Linux {meta['kernel']}, "
        f"pop3proxy on Python {meta.get('proxy_python', meta['python'])}"
        f" (load generator: {meta['python']}), gevent {meta['gevent']}, {meta['openssl']}, "
        f"{meta['nginx']}, Dovecot {meta['dovecot']}, fd limit {meta['fd_limit']}.",
        "",
        report.markdown_table(results),
        "",
        "Floors and goals:",
        "",
        *report.floor_lines(results, markdown=True),
        "",
    ]
    if not message:
        block += [f"![pop3proxy beside nginx and direct Dovecot]({chart_path.name})", ""]
    block.append(end)
    generated = "\n".join(block)
    text = DOC.read_text() if DOC.exists() else f"# Performance\n\n{begin}\n{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + generated + tail
    else:
        text += "\n" + generated + "\n"
    DOC.write_text(text)
    log(f"wrote {DOC}" + ("" if message else f" and {chart_path}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few minutes instead of ~10")
    parser.add_argument("--write-doc", action="store_true", help="update docs/performance.md")
    parser.add_argument("--profile", action="store_true", help="py-spy pop3proxy (TLS, c=16)")
    parser.add_argument("--skip-idle", action="store_true", help="leave out scenario (d)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="pop3proxy workers and nginx worker_processes (default 1, for a fair single core)",
    )
    parser.add_argument(
        "--login-command",
        choices=("auth_plain", "user_pass"),
        default="auth_plain",
        help="how pop3proxy logs in to Dovecot (default auth_plain; nginx can only USER/PASS)",
    )
    interpreter.add_argument(parser)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    python = interpreter.proxy_python(args.python, log)
    settings = {
        **PROFILES[mode],
        "workers": args.workers,
        "python": python,
        "login_command": args.login_command,
    }
    command = "python bench/run.py" + "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}")
        for k, v in vars(args).items()
        if v
        and not (k == "workers" and v == 1)
        and not (k == "login_command" and v == "auth_plain")
    )

    peers.ensure_debian_packages()
    nofile = raise_fd_limit(4 * settings["idle"] + 10000)
    if nofile < 2 * settings["idle"] + 1000:
        # A proxy holds two descriptors per session (client and backend).
        capped = (nofile - 1000) // 2 // 250 * 250
        log(
            f"fd limit {nofile} is too low for {settings['idle']} idle sessions"
            f" through a proxy: measuring {capped}"
        )
        settings = {**settings, "idle": capped, "idle_capped_by_fd_limit": nofile}
    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pop3proxy-bench-"))
    work.chmod(0o755)
    busy = cpu_busy()
    load_before = os.getloadavg()
    if busy > 0.15:
        log(
            f"warning: the machine is {busy:.0%} busy before the run (load {load_before[0]:.1f});"
            " throughput and latency figures will be noisy, CPU per session less so"
        )
    started = time.time()
    results: dict[str, Any] = {}
    bench = Bench(settings, work)
    try:
        log(f"{mode} run; work directory {work}")
        bench.start_backends()
        bench.start_proxies()
        log("servers up; warming up")
        bench.warm_up()
        bench.sessions()
        bench.ordinary()
        bench.bulk()
        if args.profile:
            bench.results["profile"] = bench.profile(settings["profile_seconds"])
        bench.stop_proxies()
        if not args.skip_idle:
            bench.idle()
    finally:
        bench.stop()
        shutil.rmtree(work, ignore_errors=True)
    results = bench.results
    results.update(
        {
            "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
            "seconds": time.time() - started,
            "mode": mode,
            "command": command,
            "settings": settings,
            "machine": {**machine(), "proxy_python": interpreter.describe(python)},
            "background": {
                "cpu_busy_before": round(busy, 3),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            },
            "notes": [
                "pop3proxy runs with logging.level=warning (no per-session log line)",
                "CPU is the run time of the proxy's threads (schedstat; nginx: master + workers)",
                "idle sessions go to a stub backend (bench/idle_backend.py)",
            ],
        }
    )
    stamp = datetime.datetime.fromtimestamp(started).strftime("%Y%m%d-%H%M%S")
    suffix = f"-workers{args.workers}" if args.workers > 1 else ""
    out = RESULTS / f"bench-{mode}{suffix}-{stamp}.json"
    text = json.dumps(results, indent=2)
    out.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    print()
    print(report.text_table(results))
    print()
    print("Floors and goals:")
    print("\n".join(report.floor_lines(results)))
    print(f"\n{mode} run took {results['seconds']:.0f} s; results in {out}")
    if args.write_doc:
        write_doc(results, command, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
