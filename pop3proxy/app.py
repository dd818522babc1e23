"""The composition root: config -> directory -> logins -> listeners -> metrics.

Also the process lifecycle: start, serve, and drain on SIGTERM (stop
accepting, let sessions finish within ``timeouts.drain``, then cut the rest
without QUIT to their backends, so nothing is deleted).
"""

from __future__ import annotations

import logging
import signal
import socket

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from pop3proxy import __version__, metrics
from pop3proxy.config import Config, ListenerConfig
from pop3proxy.directory import Directory, open_directory
from pop3proxy.login import LoginService
from pop3proxy.net import tls
from pop3proxy.net.listener import Listener
from pop3proxy.net.session import ClientSession, Services, SessionEnded

log = logging.getLogger("pop3proxy")


class App:
    def __init__(self, config: Config, directory: Directory | None = None) -> None:
        self.config = config
        self.directory = directory or open_directory(config.directory)
        needs_tls = any(listener.tls != "none" for listener in config.listeners)
        self.services = Services(
            config=config,
            logins=LoginService(config, self.directory),
            server_tls=tls.server_context(config.tls) if needs_tls else None,
        )
        self.pool = Pool(config.limits.max_connections)
        self.listeners = [Listener(item, self._handle, self.pool) for item in config.listeners]
        metrics.init_listener_labels(item.name for item in config.listeners)
        self.metrics_server: WSGIServer | None = None
        if config.metrics.host is not None:
            address = (config.metrics.host, config.metrics.port)
            self.metrics_server = WSGIServer(address, metrics.wsgi_app(self.ready), log=None)
        self.sessions: dict[ClientSession, gevent.Greenlet] = {}
        self.draining = False
        self.stopping = Event()

    def _handle(self, sock: socket.socket, peer: tuple, listener: ListenerConfig) -> None:
        session = ClientSession(sock, peer, listener, self.services)
        self.sessions[session] = gevent.getcurrent()
        try:
            session.run()
        finally:
            del self.sessions[session]

    def ready(self) -> bool:
        return not self.draining and self.directory.ready()

    def start(self) -> None:
        self.directory.start()  # change subscription (Redis) or file watcher
        if self.metrics_server is not None:
            self.metrics_server.start()
        for listener in self.listeners:
            listener.start()
            host, port = listener.address
            log.info(
                "listening",
                extra={
                    "listener": listener.config.name,
                    "address": f"{host}:{port}",
                    "tls": listener.config.tls,
                },
            )
        log.info("started", extra={"version": __version__})

    def drain(self) -> None:
        """Stop accepting, wait for sessions up to ``timeouts.drain``, cut the rest."""
        self.draining = True
        for listener in self.listeners:
            listener.close()
        log.info(
            "draining", extra={"sessions": len(self.pool), "timeout": self.config.timeouts.drain}
        )
        for session, greenlet in list(self.sessions.items()):
            if not session.logged_in:
                greenlet.kill(SessionEnded("draining"), block=False)
        if not self.pool.join(timeout=self.config.timeouts.drain):
            log.warning(
                "drain timeout: closing remaining sessions", extra={"sessions": len(self.pool)}
            )
            self.pool.kill(timeout=5)

    def serve_forever(self) -> None:
        self.start()
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._on_signal, signum)
        gevent.signal_handler(signal.SIGHUP, self.directory.reload)
        self.stopping.wait()
        self.drain()
        self.directory.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop(timeout=1)
        log.info("stopped")

    def _on_signal(self, signum: int) -> None:
        if self.stopping.is_set():
            log.warning("second signal: stopping now")
            self.pool.kill(block=False)
            raise SystemExit(0)
        log.info("signal received", extra={"signal": signal.Signals(signum).name})
        self.stopping.set()
