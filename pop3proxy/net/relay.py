"""TRANSACTION relay: client commands parsed and counted, backend replies streamed.

The relay runs on the event loop itself, as callbacks of I/O watchers, like
the rest of the session: no greenlet wakes up, no timeout object is made and
no exception is raised for a read that would block, and an idle session
holds no greenlet. This is where a session spends most of its wake-ups, so
it is where a Python proxy pays most per session and per idle connection.

Backend to client is a byte splice in large chunks with no per-line work, so
a big RETR costs a few syscalls per 256 KiB; between plaintext sockets the
bulk of it moves through a kernel pipe without entering the process
(:mod:`pop3proxy.net.splice`). Client to backend goes through the protocol
core, which bounds line length and notes whether the client sent QUIT. Each
direction stops reading while the other side cannot take more
(back-pressure), and one callback moves at most one chunk, so a busy
session never holds the loop.

A session with a download budget or a moved mailbox runs
:class:`TrackedRelay` instead, which knows where each backend reply begins
and ends (:mod:`pop3proxy.protocol.tracking`): it refuses RETR and TOP in
their place among pipelined replies once the budget is spent, and rewrites
UIDL replies. It pays for that in user space; every other session keeps the
plain splice above, untouched.

Rule 1 lives here: the backend only ever sees QUIT if the client sent it.
When the client vanishes, times out or the proxy stops, the backend socket
is closed without a word, and the backend never enters UPDATE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from gevent.hub import get_hub

from pop3proxy import metrics
from pop3proxy.interfaces import DownloadMeter
from pop3proxy.net.boundary import ErrorBoundary
from pop3proxy.net.endpoint import CLIENT_RECV, SHARED_BUFFER, Endpoint
from pop3proxy.net.splice import SplicePipe
from pop3proxy.protocol import replies
from pop3proxy.protocol.client import Action, ClientConnection, Close, Forward, Send
from pop3proxy.protocol.tracking import ReplyTracker, command_of
from pop3proxy.protocol.uidl import UidlRewriter

log = logging.getLogger("pop3proxy.relay")

SPLICE_FROM = 65536
"""A backend read this large means a bulk reply: the rest goes through a kernel pipe."""
SPLICE_UNTIL = 16384
"""A spliced read smaller than this is a reply's tail: the pipe closes again."""


@dataclass(slots=True)
class Traffic:
    """What one session moved; read by the session summary and metrics."""

    to_backend: int = 0
    to_client: int = 0
    commands: dict[str, int] = field(default_factory=dict)


class Relay(ErrorBoundary):
    """Runs one session's TRANSACTION phase until either side is done."""

    __slots__ = (
        "_backend_done",
        "_counted",
        "_loop",
        "_on_end",
        "_pipe",
        "_watchers",
        "backend",
        "client",
        "conn",
        "end_reason",
        "idle_timeout",
        "last_activity",
        "last_command",
        "started",
        "tenant",
        "traffic",
    )

    log = log
    failure = "relay failed"

    def __init__(
        self,
        client: Endpoint,
        backend: Endpoint,
        conn: ClientConnection,
        idle_timeout: float,
        traffic: Traffic,
        tenant: str,
        on_end: Callable[[str], None],
    ) -> None:
        """``tenant``: the metrics' tenant label for what this relay moves."""
        self.client = client
        self.backend = backend
        self.conn = conn
        self.idle_timeout = idle_timeout
        self.traffic = traffic
        self.tenant = tenant
        self._counted = Traffic()
        """What :meth:`flush_metrics` has already added to the counters."""
        self.started = self.last_activity = time.monotonic()
        self.last_command = 0.0
        """When the client's last command went to the backend (``last_activity``'s
        value then): while nothing came back since, its reply is outstanding."""
        self.end_reason: str | None = None
        """Whichever side ended first says why; the other only follows."""
        self._on_end = on_end
        self._backend_done = False
        self._loop = get_hub().loop
        self._watchers: dict[str, object] = {}
        self._pipe: SplicePipe | None = None

    def start(self, pending: list[Action], leftover: bytes) -> None:
        """Relay until the session ends; then ``on_end(reason)``, from the loop, once."""
        client, backend = self.client, self.backend
        client.stop_watchers()
        backend.stop_watchers()
        self._watchers.update(client_read=client.reader, backend_read=backend.reader)
        self.guarded(self._begin, pending, leftover)

    def stop(self, reason: str) -> None:
        """End the relay from outside (the proxy stops); ``on_end`` follows."""
        self._finish(reason)

    def _begin(self, pending: list[Action], leftover: bytes) -> None:
        self._arm_idle_timer(self.idle_timeout)
        self._execute(pending)
        if leftover and self.end_reason is None:
            self._to_client(leftover)
        if self.end_reason is None:
            self._resume_client_reads()
            self._resume_backend_reads()

    @property
    def in_flight(self) -> bool:
        """A command waits for its reply, or reply bytes wait for a client that
        has not read them yet (in the kernel pipe or the outbox). A reply the
        backend pauses in the middle of is not seen here: the quiet time is.
        Read from outside (an evacuation waits for it), never on the relay's path."""
        return self.last_command >= self.last_activity or self._undelivered()

    def _undelivered(self) -> bool:
        """Bytes wait for a side that has not taken them yet."""
        return (
            bool(self._pipe and self._pipe.pending)
            or bool(self.client.outbox)
            or bool(self.backend.outbox)
        )

    def flush_metrics(self) -> None:
        """Add the bytes and commands relayed since the last call to the counters.

        Called at the end of the relay, and every ``metrics.flush_interval``
        by the app (through the session), so a long download shows in
        ``pop3proxy_bytes_total`` while it runs, at no cost per chunk.
        """
        tenant, now, counted = self.tenant, self.traffic, self._counted
        sent, received = now.to_backend - counted.to_backend, now.to_client - counted.to_client
        if sent:
            metrics.add(metrics.BYTES, tenant, "client_to_backend", amount=sent)
            counted.to_backend = now.to_backend
        if received:
            metrics.add(metrics.BYTES, tenant, "backend_to_client", amount=received)
            counted.to_client = now.to_client
        for command, count in list(now.commands.items()):
            new = count - counted.commands.get(command, 0)
            if new:
                metrics.add(metrics.COMMANDS, tenant, command, amount=new)
                counted.commands[command] = count

    # -- the loop's side -----------------------------------------------------

    def end_after_error(self, reason: str) -> None:
        self._finish(reason)

    def _start(self, name: str, callback: Callable[[], None]) -> None:
        watcher = self._watchers.get(name) or self._writer(name)
        if watcher is not None and not watcher.active:  # type: ignore[attr-defined]
            watcher.start(self.guarded, callback)  # type: ignore[attr-defined]

    def _writer(self, name: str) -> object | None:
        """A side's write watcher, taken the first time it cannot take a write
        at once (the endpoint makes it then; most sessions never need it)."""
        endpoint = {"client_write": self.client, "backend_write": self.backend}.get(name)
        if endpoint is None or self.end_reason is not None:
            return None
        watcher = self._watchers[name] = endpoint.writer
        return watcher

    def _active(self, name: str) -> bool:
        watcher = self._watchers.get(name)
        return watcher is not None and watcher.active  # type: ignore[attr-defined]

    def _stop(self, name: str) -> None:
        watcher = self._watchers.get(name)
        if watcher is not None:
            watcher.stop()  # type: ignore[attr-defined]

    def _finish(self, reason: str) -> None:
        """End the relay: stop every watcher and tell the session, once. (The
        endpoints' watchers go with their sockets; only the timer is ours.)"""
        if self.end_reason is not None:
            return
        self.end_reason = reason
        for watcher in self._watchers.values():
            watcher.stop()  # type: ignore[attr-defined]
        timer = self._watchers.get("idle")
        if timer is not None:
            timer.close()  # type: ignore[attr-defined]
        self._watchers.clear()
        self._close_pipe()
        # Deferred, so that no callback of this relay is half-run when the session closes.
        self._loop.run_callback(self._on_end, reason)

    # -- idle timeout ----------------------------------------------------------

    def _arm_idle_timer(self, after: float) -> None:
        timer = self._loop.timer(max(after, 0.001))
        self._watchers["idle"] = timer
        timer.start(self.guarded, self._on_idle_timer)

    def _on_idle_timer(self) -> None:
        self._watchers.pop("idle").close()  # type: ignore[attr-defined]
        if self.end_reason is not None:
            return
        remaining = self.idle_timeout - (time.monotonic() - self.last_activity)
        if remaining <= 0:
            self._finish("idle_timeout")
        else:
            self._arm_idle_timer(remaining)

    # -- client to backend -----------------------------------------------------

    def _resume_client_reads(self) -> None:
        if self._backend_done:  # only the backend's last words are left to deliver
            return
        self._start("client_read", self._on_client_readable)
        if self.client.buffered():
            self._on_client_readable()

    def _on_client_readable(self) -> None:
        while self.end_reason is None:
            size = self.client.recv_into(SHARED_BUFFER[:CLIENT_RECV])
            if size is None:
                return
            if not size:  # after QUIT, the client need not wait for the goodbye
                self._finish("quit" if self.conn.client_sent_quit else "client_closed")
                return
            self.last_activity = time.monotonic()
            forward = self.conn.relay_data(SHARED_BUFFER[:size], self.traffic.commands)
            if forward:
                self.last_command = self.last_activity
                self._to_backend(forward)
            if not self.client.buffered() or self._active("backend_write"):
                return

    def _execute(self, actions: list[Action]) -> None:
        """Forward the commands in one write per batch (pipelining costs one syscall)."""
        batch = bytearray()
        commands = self.traffic.commands
        for action in actions:
            if isinstance(action, Forward):
                batch += action.data
                commands[action.command] = commands.get(action.command, 0) + 1
            elif isinstance(action, Send):
                self._to_client(action.data)
            elif isinstance(action, Close):
                self._finish(action.reason)
                return
        if batch:
            self.last_command = self.last_activity
            self._to_backend(bytes(batch))

    def _to_backend(self, data: bytes) -> None:
        self.traffic.to_backend += len(data)
        if not self.backend.send(data):
            self._stop("client_read")
            self._start("backend_write", self._on_backend_writable)

    def _on_backend_writable(self) -> None:
        if self.backend.flush():
            self._stop("backend_write")
            self._resume_client_reads()

    # -- backend to client -----------------------------------------------------

    def _resume_backend_reads(self) -> None:
        if self._backend_done:
            self._finish("quit" if self.conn.client_sent_quit else "backend_closed")
            return
        self._start("backend_read", self._on_backend_readable)
        if self.backend.buffered():
            self._on_backend_readable()

    def _on_backend_readable(self) -> None:
        if self.end_reason is not None:  # a continuation queued before the end
            return
        if self._pipe is not None:
            self._splice_to_client(self._pipe)
            return
        size = self.backend.recv_into(SHARED_BUFFER)
        if size is None:
            return
        if not size:
            self._backend_closed()
            return
        self.traffic.to_client += size
        self.last_activity = time.monotonic()
        self._to_client(SHARED_BUFFER[:size])
        if self.end_reason is not None:
            return
        if size >= SPLICE_FROM and self.client.plain and self.backend.plain:
            self._open_pipe()  # used from the next read, once the outbox is empty
        elif not self.client.outbox and self.backend.buffered():
            self._loop.run_callback(self.guarded, self._on_backend_readable)

    def _backend_closed(self) -> None:
        self._backend_done = True
        self._stop("backend_read")
        self._stop("client_read")
        if not self.client.outbox:
            self._resume_backend_reads()

    def _open_pipe(self) -> None:
        """A bulk reply: the rest of it moves in the kernel (see :mod:`pop3proxy.net.splice`)."""
        try:
            self._pipe = SplicePipe()
        except OSError:  # out of descriptors: user space will do
            self._pipe = None

    def _close_pipe(self) -> None:
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def _splice_to_client(self, pipe: SplicePipe) -> None:
        moved = pipe.fill(self.backend.fd)
        if moved is None:
            return
        if not moved:
            self._close_pipe()
            self._backend_closed()
            return
        self.traffic.to_client += moved
        self.last_activity = time.monotonic()
        if not pipe.drain(self.client.fd):
            self._wait_for_client()
        elif moved < SPLICE_UNTIL:  # the reply's tail: back to user space
            self._close_pipe()

    def _to_client(self, data: bytes | memoryview) -> None:
        if not self.client.send(data):
            self._wait_for_client()

    def _wait_for_client(self) -> None:
        """The client cannot take more: read the backend again once it has."""
        self._stop("backend_read")
        self._start("client_write", self._on_client_writable)

    def _on_client_writable(self) -> None:
        if self._pipe is not None and self._pipe.pending:
            if self._pipe.drain(self.client.fd):
                self.last_activity = time.monotonic()
                self._stop("client_write")
                self._resume_backend_reads()
            return
        if self.client.flush():
            self.last_activity = time.monotonic()
            self._stop("client_write")
            self._resume_backend_reads()


BUDGET_SPENT = replies.err("Daily download limit reached; try again later", replies.Code.SYS_TEMP)
"""In place of a RETR or TOP once the user's download budget is spent."""

METERED = frozenset({b"RETR", b"TOP"})
"""The commands a spent download budget refuses."""

_READ_BUFFER = cast(bytearray, SHARED_BUFFER.obj)
"""The bytearray under :data:`SHARED_BUFFER`: the tracker searches it in place."""


class TrackedRelay(Relay):
    """A relay that follows each backend reply, for the sessions that need it.

    ``meter`` counts what the client gets and, once exhausted, RETR and TOP
    are answered ``-ERR [SYS/TEMP]`` by the proxy in the command's place: after
    every reply outstanding before it, so a message being sent finishes
    first. The check is made as each command is forwarded, so commands a
    client pipelined before the budget ran out are still answered.
    ``uidl_map`` rewrites the replies to ``UIDL`` and ``UIDL n``, new UIDL to
    old. Replies are read in user space (no kernel pipe): a bulk reply costs
    one ``bytes.find`` per chunk more than the plain relay, a UIDL listing a
    dictionary look-up per line.
    """

    __slots__ = ("_meter", "_tracker", "_translated_counted", "uidl_rewriter")

    def __init__(
        self,
        client: Endpoint,
        backend: Endpoint,
        conn: ClientConnection,
        idle_timeout: float,
        traffic: Traffic,
        tenant: str,
        on_end: Callable[[str], None],
        *,
        meter: DownloadMeter | None = None,
        uidl_map: Mapping[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(client, backend, conn, idle_timeout, traffic, tenant, on_end)
        self._meter = meter
        self._tracker = ReplyTracker()
        self.uidl_rewriter = UidlRewriter(uidl_map) if uidl_map is not None else None
        """Also counts the UIDLs it translated."""
        self._translated_counted = 0

    def flush_metrics(self) -> None:
        """The plain relay's counters, and the UIDLs translated since the last call."""
        super().flush_metrics()
        rewriter = self.uidl_rewriter
        if rewriter is not None and rewriter.translated > self._translated_counted:
            new = rewriter.translated - self._translated_counted
            metrics.add(metrics.UIDL_TRANSLATED, self.tenant, amount=new)
            self._translated_counted = rewriter.translated

    @property
    def in_flight(self) -> bool:
        """Exact here: the tracker knows whether a reply is outstanding or under
        way (a reply the backend pauses in the middle of included), and a
        command the proxy refused itself (budget spent) is not waiting for one."""
        return not self._tracker.idle or self._undelivered()

    def _begin(self, pending: list[Action], leftover: bytes) -> None:
        if leftover:  # spoken before any command: a reply nobody asked for
            leftover = bytes(self._tracker.feed(leftover))
        super()._begin(pending, leftover)

    def _to_backend(self, data: bytes) -> None:
        """Tell the tracker of each command line, in order; a refused one stays here."""
        tracker, meter, rewriter = self._tracker, self._meter, self.uidl_rewriter
        forward = bytearray()
        for line in data.split(b"\r\n")[:-1]:  # the core forwards whole lines only
            name, has_argument = command_of(line)
            if meter is not None and name in METERED and meter.exhausted:
                refusal = tracker.insert(BUDGET_SPENT)
                if refusal:
                    self._to_client(refusal)
                continue
            tracker.expect(name, has_argument, rewriter if name == b"UIDL" else None)
            forward += line + b"\r\n"
        if forward:
            super()._to_backend(bytes(forward))

    def _on_backend_readable(self) -> None:
        if self.end_reason is not None:  # a continuation queued before the end
            return
        size = self.backend.recv_into(SHARED_BUFFER)
        if size is None:
            return
        if not size:
            self._backend_closed()
            return
        out = self._tracker.feed(_READ_BUFFER, size)
        self.traffic.to_client += len(out)
        if self._meter is not None:
            self._meter.add(len(out))
        self.last_activity = time.monotonic()
        self._to_client(out)
        if self.end_reason is None and not self.client.outbox and self.backend.buffered():
            self._loop.run_callback(self.guarded, self._on_backend_readable)
