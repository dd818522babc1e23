"""The load generator: plain sockets and ssl in worker processes, bounded in count and time.

Every loop here ends: sessions stop at a deadline or a count, every socket has
a timeout, and every worker process is joined (then terminated) by the runner.
Only 127.0.0.1 is ever connected to.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import poplib
import socket
import ssl
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
SERVER_NAME = "localhost"
TIMEOUT = 30.0
MULTI_END = b"\r\n.\r\n"


@dataclass(frozen=True)
class Target:
    """Where one target listens: ``plain`` (POP3, no TLS) and ``pop3s`` (implicit TLS)."""

    name: str
    plain: int
    pop3s: int

    def port(self, tls: bool) -> int:
        return self.pop3s if tls else self.plain


@dataclass
class LoadResult:
    sessions: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    def merge(self, other: LoadResult) -> None:
        self.sessions += other.sessions
        self.errors += other.errors
        self.latencies += other.latencies
        self.first_error = self.first_error or other.first_error


def client_context(ca_file: str) -> ssl.SSLContext:
    """A verifying client context (the bench never turns certificate checks off)."""
    return ssl.create_default_context(cafile=ca_file)


class Conn:
    """A minimal POP3 client reading in large chunks, so the client stays cheap."""

    def __init__(
        self, port: int, context: ssl.SSLContext | None, nodelay: bool = True, timeout=TIMEOUT
    ) -> None:
        sock = socket.create_connection((HOST, port), timeout=timeout)
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=SERVER_NAME)
        self.sock = sock
        self.buf = bytearray()
        self.status(b"")  # greeting

    def _read_until(self, end: bytes) -> int:
        """Read until ``end`` is in the buffer; return the length up to and including it."""
        start = 0
        while True:
            index = self.buf.find(end, start)
            if index >= 0:
                return index + len(end)
            start = max(0, len(self.buf) - len(end))
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buf += chunk  # bytearray: amortised O(1), a 10 MB reply is not copied over

    def status(self, command: bytes) -> bytes:
        if command:
            self.sock.sendall(command + b"\r\n")
        cut = self._read_until(b"\r\n")
        line = bytes(self.buf[:cut])
        del self.buf[:cut]
        if not line.startswith(b"+OK"):
            raise ConnectionError(f"{command.split(b' ')[0]!r} refused: {line[:80]!r}")
        return line

    def multi(self, command: bytes) -> int:
        """Send a command with a multi-line reply; return the reply's size in bytes."""
        self.status(command)
        if self.buf.startswith(b".\r\n"):
            del self.buf[:3]
            return 3
        cut = self._read_until(MULTI_END)
        del self.buf[:cut]
        return cut

    def login(self, user: str, password: str) -> None:
        self.status(b"USER " + user.encode())
        self.status(b"PASS " + password.encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def full_session(port: int, context: ssl.SSLContext | None, user: str, password: str) -> None:
    """Connect, TLS, USER/PASS, STAT, LIST, UIDL, RETR 1 (~20 KB), QUIT."""
    conn = Conn(port, context)
    try:
        conn.login(user, password)
        conn.status(b"STAT")
        conn.multi(b"LIST")
        conn.multi(b"UIDL")
        conn.multi(b"RETR 1")
        conn.status(b"QUIT")
    finally:
        conn.close()


def ordinary_session(port: int, context: ssl.SSLContext | None, user: str, password: str) -> None:
    """The same session through poplib, which leaves Nagle on like most mail clients."""
    if context is not None:
        client: poplib.POP3 = poplib.POP3_SSL(HOST, port, context=context, timeout=TIMEOUT)
    else:
        client = poplib.POP3(HOST, port, timeout=TIMEOUT)
    try:
        client.user(user)
        client.pass_(password)
        client.stat()
        client.list()
        client.uidl()
        client.retr(1)
        client.quit()
    finally:
        client.close()


# -- concurrent sessions -------------------------------------------------------


def _session_worker(
    port: int,
    tls: bool,
    ca_file: str,
    users: list[tuple[str, str]],
    threads: int,
    deadline: float,
    max_sessions: int,
    results: multiprocessing.Queue,
    period: float = 0.0,
    first: tuple[int, int] = (0, 1),
) -> None:
    """``period``: seconds between one client's session starts (0: back to back);
    ``first``: this process's first client and the clients in all, to spread
    the starts evenly over the period."""
    context = client_context(ca_file) if tls else None
    total = LoadResult()
    lock = threading.Lock()

    def loop(index: int) -> None:
        count = 0
        local = LoadResult()
        start_at = time.monotonic() + period * (first[0] + index) / first[1]
        while count < max_sessions:
            if period:
                time.sleep(max(0.0, start_at + count * period - time.monotonic()))
            if time.monotonic() >= deadline:
                break
            user, password = users[(index + count * threads) % len(users)]
            started = time.perf_counter()
            try:
                full_session(port, context, user, password)
            except (OSError, ConnectionError) as error:
                local.errors += 1
                local.first_error = local.first_error or repr(error)
            else:
                local.sessions += 1
                local.latencies.append(time.perf_counter() - started)
            count += 1
        with lock:
            total.sessions += local.sessions
            total.errors += local.errors
            total.latencies += local.latencies
            total.first_error = total.first_error or local.first_error

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(total)


def run_sessions(
    port: int,
    tls: bool,
    ca_file: Path,
    users: list[tuple[str, str]],
    concurrency: int,
    duration: float,
    max_sessions: int,
    rate: float | None = None,
) -> LoadResult:
    """``concurrency`` clients in a loop of full sessions until ``duration`` or the count.

    Clients are threads spread over up to 4 processes (the GIL would serialise
    the TLS work of one process). Every session that starts is finished, so
    CPU read before and after covers complete sessions only.

    With ``rate``, the clients start ``rate`` sessions per second between
    them (each on its own schedule, a session every ``concurrency / rate``
    seconds) instead of one after another as fast as they can: every target
    then serves the same offered load, as long as it keeps up.
    """
    processes = min(concurrency, 4)
    per_process = [
        concurrency // processes + (i < concurrency % processes) for i in range(processes)
    ]
    results: multiprocessing.Queue = multiprocessing.Queue()
    deadline = time.monotonic() + duration
    budget = max(1, max_sessions // concurrency)
    period = concurrency / rate if rate else 0.0
    procs = []
    offset = 0
    for threads in per_process:
        mine = users[offset:] + users[:offset]
        spread = (offset, concurrency)
        offset += threads
        args = (port, tls, str(ca_file), mine, threads, deadline, budget, results)
        proc = multiprocessing.Process(
            target=_session_worker, args=(*args, period, spread), daemon=True
        )
        proc.start()
        procs.append(proc)
    total = LoadResult()
    for _ in procs:
        part = results.get(timeout=duration + 120)
        total.sessions += part.sessions
        total.errors += part.errors
        total.latencies += part.latencies
        total.first_error = total.first_error or part.first_error
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
    return total


def run_ordinary(
    port: int, tls: bool, ca_file: Path, user: tuple[str, str], count: int, max_time: float
) -> LoadResult:
    """One client, sequential poplib sessions: latency as a mail client sees it."""
    context = client_context(str(ca_file)) if tls else None
    result = LoadResult()
    deadline = time.monotonic() + max_time
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        started = time.perf_counter()
        try:
            ordinary_session(port, context, *user)
        except (OSError, poplib.error_proto) as error:
            result.errors += 1
            result.first_error = result.first_error or repr(error)
            continue
        result.latencies.append(time.perf_counter() - started)
        result.sessions += 1
    return result


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


# -- bulk ----------------------------------------------------------------------


def bulk_retr(
    port: int, context: ssl.SSLContext | None, user: tuple[str, str], size: int, reps: int
) -> list[float]:
    """Seconds from sending ``RETR 1`` to the end of its reply, ``reps`` times in one session."""
    conn = Conn(port, context)
    times = []
    try:
        conn.login(*user)
        for _ in range(reps):
            started = time.perf_counter()
            received = conn.multi(b"RETR 1")
            times.append(time.perf_counter() - started)
            if received < size:
                raise ConnectionError(f"short RETR: {received} of {size} bytes")
        conn.status(b"QUIT")
        return times
    finally:
        conn.close()


# -- idle sessions -------------------------------------------------------------


def _idle_worker(
    port: int,
    tls: bool,
    ca_file: str,
    users: list[tuple[str, str]],
    deadline: float,
    ready: multiprocessing.Queue,
    release: multiprocessing.Event,
) -> None:
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    context = client_context(ca_file) if tls else None
    conns = []
    error = ""
    for user, password in users:
        if time.monotonic() > deadline:
            error = error or "deadline"
            break
        try:
            conn = Conn(port, context)
            conn.login(user, password)
            conns.append(conn)
        except (OSError, ConnectionError) as exc:
            error = error or repr(exc)
    ready.put((len(conns), error))
    release.wait(timeout=max(1.0, deadline - time.monotonic() + 60))
    for conn in conns:  # vanish without QUIT: the backend is the idle stub
        conn.close()


class IdleSessions:
    """``count`` authenticated sessions held open by several processes until ``close()``."""

    def __init__(
        self,
        port: int,
        tls: bool,
        ca_file: Path,
        users: list[tuple[str, str]],
        processes: int,
        max_time: float,
    ) -> None:
        self.ready: multiprocessing.Queue = multiprocessing.Queue()
        self.release = multiprocessing.Event()
        deadline = time.monotonic() + max_time
        self.procs = [
            multiprocessing.Process(
                target=_idle_worker,
                args=(
                    port,
                    tls,
                    str(ca_file),
                    users[i::processes],
                    deadline,
                    self.ready,
                    self.release,
                ),
                daemon=True,
            )
            for i in range(processes)
        ]
        for proc in self.procs:
            proc.start()
        self.open = 0
        self.errors: list[str] = []
        for _ in self.procs:
            count, error = self.ready.get(timeout=max_time + 60)
            self.open += count
            if error:
                self.errors.append(error)

    def close(self) -> None:
        self.release.set()
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
