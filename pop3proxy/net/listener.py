"""Listening sockets: one gevent StreamServer per configured listener.

With ``proxy_protocol: true`` every connection must start with a PROXY
v1/v2 header from a peer in ``proxy_protocol_trusted``;
:func:`read_proxy_header` reads it (the session calls it first, before TLS).

All listeners share one Pool sized by ``limits.max_connections``: when it is
full, gevent stops accepting until a session ends (backpressure in the
kernel's accept queue) instead of spawning without bound.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable

from gevent import Timeout
from gevent.pool import Pool
from gevent.server import StreamServer

from pop3proxy import metrics
from pop3proxy.config import ListenerConfig
from pop3proxy.protocol import proxyproto

log = logging.getLogger("pop3proxy.listener")

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
        metrics.add(metrics.CONNECTIONS, name)
        metrics.add(metrics.CONNECTIONS_ACTIVE, name)
        try:
            self._handler(sock, peer, self.config)
        finally:
            metrics.add(metrics.CONNECTIONS_ACTIVE, name, amount=-1)


class ProxyHeaderRefused(Exception):
    """The connection did not start with a usable PROXY header from a trusted peer.

    ``reason`` (``untrusted``, ``timeout``, ``malformed``) labels
    ``pop3proxy_proxy_protocol_errors_total``; ``detail`` goes to the log.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


class _HeaderTimeout(Exception):
    pass


def trusted(peer: tuple, networks: tuple) -> bool:
    try:
        address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except (ValueError, IndexError, AttributeError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in networks)


def read_proxy_header(
    sock: socket.socket, peer: tuple, config: ListenerConfig
) -> proxyproto.ProxyHeader | None:
    """Read the PROXY header a trusted load balancer sends first.

    Returns the header, or ``None`` when the peer closed before sending a byte
    (a load balancer's TCP health check: not an error). Reads never go past
    the header, so a TLS ClientHello behind it stays in the socket. Raises
    :class:`ProxyHeaderRefused`, counted and logged here; the caller closes
    the connection without a word.
    """
    try:
        if not trusted(peer, config.proxy_protocol_trusted):
            raise ProxyHeaderRefused("untrusted")
        reader = proxyproto.HeaderReader()
        received = 0
        try:
            with Timeout(config.proxy_protocol_timeout, _HeaderTimeout()):
                while True:
                    data = sock.recv(reader.wanted())
                    if not data:
                        if received == 0:
                            return None
                        raise ProxyHeaderRefused("malformed", "truncated")
                    received += len(data)
                    header = reader.feed(data)
                    if header is not None:
                        return header
        except _HeaderTimeout:
            raise ProxyHeaderRefused("timeout") from None
        except proxyproto.ProxyProtocolError as error:
            raise ProxyHeaderRefused("malformed", error.reason) from None
    except ProxyHeaderRefused as refused:
        metrics.add(metrics.PROXY_PROTOCOL_ERRORS, config.name, refused.reason)
        log.warning(
            "PROXY header refused",
            extra={"listener": config.name, "peer": peer[0], "error": refused.detail},
        )
        raise
