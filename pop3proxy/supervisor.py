"""``workers: N``: one supervisor process, N worker processes, shared listeners.

:func:`serve` (``pop3proxy serve``) picks the process model: one
:class:`~pop3proxy.app.App`, a worker's App on inherited sockets, or a
:class:`Supervisor` of N workers.

Pre-forked sockets, not SO_REUSEPORT. The supervisor binds every listener
once and hands the listening sockets to each worker (``pass_fds``); all
workers accept from the same kernel queue. Why:

* a worker that dies loses no queued connection: with SO_REUSEPORT the
  kernel hashes each connection to one worker's own queue, and whatever
  waited there when the worker died is reset;
* bind errors (port in use, bad address) show once, before any worker runs;
* while the supervisor holds the sockets, a restarted worker finds them
  ready, and on drain closing every copy refuses new connections at once.

Workers are fresh interpreters (``python -m pop3proxy serve`` with the
sockets' descriptors in :data:`~pop3proxy.app.LISTEN_FDS_ENV`), not bare
forks of a gevent process with a running hub and metrics server. Each one
writes its metrics to files in a private ``PROMETHEUS_MULTIPROC_DIR``; the
supervisor serves the merged ``/metrics`` (see :mod:`pop3proxy.metrics`),
``/healthz`` and ``/readyz``.

Signals to the supervisor reach every worker: SIGTERM/SIGINT drain (each
worker drains its own sessions; a second signal ends them sooner), SIGHUP
reloads, SIGUSR1/SIGUSR2 change the log level. A worker that exits while
the supervisor is not stopping is started again, after a back-off if it
keeps dying young.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess  # nosec B404
import sys
import tempfile
import time

import gevent
from gevent.event import Event
from gevent.pywsgi import WSGIServer
from prometheus_client import multiprocess

from pop3proxy import __version__, logs, metrics
from pop3proxy.app import (
    LISTEN_FDS_ENV,
    WORKER_ENV,
    App,
    apply_logging,
    change_log_level,
    inherited_sockets,
    log_reload,
    read_config,
)
from pop3proxy.config import Config, ListenerConfig
from pop3proxy.directory import open_directory
from pop3proxy.net import tls
from pop3proxy.reload import changes, live_config

log = logging.getLogger("pop3proxy.supervisor")

BACKLOG = 1024
YOUNG = 5.0
"""A worker that dies sooner than this after its start is restarted after a back-off."""
MAX_BACKOFF = 30.0
KILL_GRACE = 10.0
"""After ``timeouts.drain``, how long workers get to finish before SIGKILL."""


def bind(listener: ListenerConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.create_server((listener.host, listener.port), family=family, backlog=BACKLOG)
    sock.set_inheritable(True)
    return sock


class Worker:
    """One slot: the process running in it now, restarted when it dies."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


class Supervisor:
    def __init__(self, config: Config) -> None:
        assert config.source is not None, "workers read the configuration file"
        self.config = config
        if any(item.tls != "none" for item in config.listeners):
            # A bad certificate stops us here, not each worker.
            tls.server_contexts(config.tls, config.listeners)
        self.sockets = {item.name: bind(item) for item in config.listeners}
        self.metrics_dir = tempfile.mkdtemp(prefix="pop3proxy-metrics-")
        self.directory = open_directory(config.directory)
        self.workers = [Worker(slot) for slot in range(1, config.workers + 1)]
        self.metrics_server: WSGIServer | None = None
        if config.metrics.host is not None:
            registry = metrics.merged_registry(self.metrics_dir)
            address = (config.metrics.host, config.metrics.port)
            self.metrics_server = WSGIServer(
                address, metrics.wsgi_app(self.ready, registry), log=None
            )
        self.draining = False
        self.stopping = Event()

    def ready(self) -> bool:
        """Not draining, a worker is running, and the directory can answer."""
        return (
            not self.draining
            and any(worker.alive for worker in self.workers)
            and self.directory.ready()
        )

    def _spawn(self, worker: Worker) -> subprocess.Popen:
        env = dict(os.environ)
        env[WORKER_ENV] = str(worker.slot)
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        env[LISTEN_FDS_ENV] = ",".join(
            f"{name}={sock.fileno()}" for name, sock in self.sockets.items()
        )
        argv = [sys.executable, "-m", "pop3proxy", "serve", "--config", str(self.config.source)]
        fds = [sock.fileno() for sock in self.sockets.values()]
        return subprocess.Popen(argv, env=env, pass_fds=fds, stdin=subprocess.DEVNULL)  # nosec B603

    def _run_worker(self, worker: Worker) -> None:
        """Keep ``worker``'s slot filled until the supervisor stops."""
        backoff = 0.5
        while not self.stopping.is_set():
            started = time.monotonic()
            worker.proc = self._spawn(worker)
            log.info("worker started", extra={"worker": worker.slot, "pid": worker.proc.pid})
            code = worker.proc.wait()
            multiprocess.mark_process_dead(worker.proc.pid, self.metrics_dir)
            if self.stopping.is_set():
                log.info("worker stopped", extra={"worker": worker.slot, "exit_code": code})
                return
            worker.restarts += 1
            lived = time.monotonic() - started
            backoff = min(backoff * 2, MAX_BACKOFF) if lived < YOUNG else 0.5
            log.error(
                "worker exited: restarting",
                extra={
                    "worker": worker.slot,
                    "pid": worker.proc.pid,
                    "exit_code": code,
                    "lived": round(lived, 3),
                    "delay": backoff if lived < YOUNG else 0,
                },
            )
            if lived < YOUNG:
                self.stopping.wait(backoff)

    def serve_forever(self) -> None:
        self.directory.start()  # keeps the directory's health current for /readyz
        runners = [gevent.spawn(self._run_worker, worker) for worker in self.workers]
        if self.metrics_server is not None:
            self.metrics_server.start()
        for name, sock in self.sockets.items():
            host, port = sock.getsockname()[:2]
            log.info("listening", extra={"listener": name, "address": f"{host}:{port}"})
        log.info(
            "started",
            extra={"version": __version__, "pid": os.getpid(), "workers": len(self.workers)},
        )
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._on_stop_signal, signum)
        gevent.signal_handler(signal.SIGHUP, lambda: gevent.spawn(self.reload))
        gevent.signal_handler(signal.SIGUSR1, self._log_level, signal.SIGUSR1, -1)
        gevent.signal_handler(signal.SIGUSR2, self._log_level, signal.SIGUSR2, +1)
        self.stopping.wait()
        deadline = self.config.timeouts.drain + KILL_GRACE
        if not gevent.joinall(runners, timeout=deadline) or any(w.alive for w in self.workers):
            for worker in self.workers:
                if worker.alive:
                    log.error("worker did not stop: killing", extra={"worker": worker.slot})
                    worker.signal(signal.SIGKILL)
            gevent.joinall(runners, timeout=5)
        if self.metrics_server is not None:
            self.metrics_server.stop(timeout=1)
        self.directory.stop()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("stopped")

    def _on_stop_signal(self, signum: int) -> None:
        """First signal: drain everywhere. Second: workers end their sessions now."""
        name = signal.Signals(signum).name
        if not self.stopping.is_set():
            log.info("signal received: draining workers", extra={"signal": name})
            self.draining = True
            for sock in self.sockets.values():
                sock.close()
            self.stopping.set()
        else:
            log.warning("second signal: workers stop now", extra={"signal": name})
        for worker in self.workers:
            worker.signal(signal.SIGTERM)

    def _log_level(self, signum: int, steps: int) -> None:
        change_log_level(steps)
        for worker in self.workers:
            worker.signal(signum)

    def reload(self) -> None:
        """SIGHUP: the supervisor's own settings, then every worker reloads its own."""
        log.info("reload requested", extra={"signal": "SIGHUP"})
        new = read_config(self.config)
        if new is not None:
            live, restart = changes(self.config, new)
            self.config = live_config(self.config, new)
            apply_logging(self.config)
            log_reload(live, restart)
        for worker in self.workers:
            worker.signal(signal.SIGHUP)


def serve(config: Config) -> None:
    """``pop3proxy serve``: one process, a worker, or the supervisor of N workers."""
    slot = os.environ.get(WORKER_ENV)
    if slot is not None:
        logs.setup_logging(config.logging.level, config.logging.format, {"worker": int(slot)})
        sockets = inherited_sockets(os.environ.get(LISTEN_FDS_ENV, ""))
        App(config, sockets=sockets, worker=int(slot)).serve_forever()
    elif config.workers > 1:
        Supervisor(config).serve_forever()
    else:
        App(config).serve_forever()
