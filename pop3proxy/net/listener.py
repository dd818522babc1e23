"""Listening sockets: one gevent StreamServer per configured listener.

All listeners share one Pool sized by ``limits.max_connections``: when it is
full, gevent stops accepting until a session ends (backpressure in the
kernel's accept queue) instead of spawning without bound.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from gevent.pool import Pool
from gevent.server import StreamServer

from pop3proxy import metrics
from pop3proxy.config import ListenerConfig

Handler = Callable[[socket.socket, tuple, ListenerConfig], None]


class Listener:
    """Accepts connections for one listener and hands each to ``handler``."""

    backlog = 1024

    def __init__(
        self,
        config: ListenerConfig,
        handler: Handler,
        pool: Pool,
        sock: socket.socket | None = None,
    ) -> None:
        """``sock``: a listening socket to accept on (a worker's, inherited from the
        supervisor) instead of binding ``config``'s address."""
        self.config = config
        self._handler = handler
        self.server = StreamServer(
            sock if sock is not None else (config.host, config.port),
            self._handle,
            spawn=pool,
            backlog=None if sock is not None else self.backlog,
        )

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address[:2]

    def start(self) -> None:
        self.server.start()

    def close(self) -> None:
        """Stop accepting; sessions already running go on."""
        self.server.close()

    def _handle(self, sock: socket.socket, peer: tuple) -> None:
        name = self.config.name
        metrics.CONNECTIONS.labels(name).inc()
        metrics.CONNECTIONS_ACTIVE.labels(name).inc()
        try:
            self._handler(sock, peer, self.config)
        finally:
            metrics.CONNECTIONS_ACTIVE.labels(name).dec()
