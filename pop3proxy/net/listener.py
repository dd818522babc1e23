"""Listening sockets: one accept watcher per configured listener.

Each connection is accepted in the event loop's callback and handed to the
handler as a kernel socket, non-blocking, with TCP_NODELAY (inherited from
the listening socket), and with no greenlet and no gevent socket object
around it (the session runs on callbacks). While the proxy is
at ``limits.max_connections`` the app pauses accepting, and new connections
wait in the kernel's accept queue instead of being taken without bound.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

from gevent.hub import get_hub

from pop3proxy import metrics
from pop3proxy.config import ListenerConfig
from pop3proxy.net.sockets import READ, KernelSocket, RawSocket, set_nodelay

log = logging.getLogger("pop3proxy.listener")

Handler = Callable[[RawSocket, tuple, ListenerConfig], None]

OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
BACKOFF = 0.1
"""Seconds to stop accepting when the process is out of descriptors."""


class Listener:
    """Accepts connections for one listener and hands each to ``handler``."""

    backlog = 1024

    def __init__(
        self, config: ListenerConfig, handler: Handler, sock: socket.socket | None = None
    ) -> None:
        """``sock``: a listening socket to accept on (a worker's, inherited from the
        supervisor) instead of binding ``config``'s address."""
        self.config = config
        self._handler = handler
        if sock is None:
            sock = socket.create_server(
                (config.host, config.port),
                family=socket.AF_INET6 if ":" in config.host else socket.AF_INET,
                backlog=self.backlog,
                reuse_port=False,
            )
        self._sock = sock
        self._raw: RawSocket = getattr(sock, "_sock", sock)
        """The kernel socket under gevent's wrapper: accepted sockets stay bare."""
        self._raw.setblocking(False)
        set_nodelay(self._raw)  # accepted sockets inherit it: a system call per session saved
        self._kind = (int(self._raw.family), int(self._raw.type), self._raw.proto)
        """What accepted sockets are, read once (the stdlib's socket makes enums of it)."""
        self._loop = get_hub().loop
        self._watcher = self._loop.io(self._raw.fileno(), READ)
        self._backoff: Any = None
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        return self._raw.getsockname()[:2]

    def start(self) -> None:
        self.resume()

    def pause(self) -> None:
        """Leave new connections in the kernel's queue (the proxy is full)."""
        self._watcher.stop()

    def resume(self) -> None:
        if not self._closed and self._backoff is None:
            self._watcher.start(self._accept)

    def close(self) -> None:
        """Stop accepting; sessions already running go on."""
        self._closed = True
        self._watcher.stop()
        if self._backoff is not None:
            self._backoff.stop()
        self._sock.close()

    def _accept(self) -> None:
        """One connection per wake-up, as nginx does by default: the watcher is
        level-triggered, so the loop comes back at once while more wait, and
        no accept is spent finding the queue empty (a system call and an
        exception per connection when they come one at a time)."""
        try:
            fd, peer = self._raw._accept()  # type: ignore[attr-defined]
        except BlockingIOError:
            return
        except OSError as error:
            self._accept_failed(error)
            return
        sock = KernelSocket(*self._kind, fd)
        sock.setblocking(False)
        try:
            self._handler(sock, peer, self.config)
        except Exception:
            log.exception("connection failed", extra={"listener": self.config.name})
            sock.close()

    def _accept_failed(self, error: OSError) -> None:
        if error.errno in OUT_OF_DESCRIPTORS:
            log.warning(
                "accept failed: pausing",
                extra={"listener": self.config.name, "error": error.strerror},
            )
            self._watcher.stop()
            self._backoff = self._loop.timer(BACKOFF)
            self._backoff.start(self._end_backoff)
        # Anything else (a connection reset before it was taken): the next one.

    def _end_backoff(self) -> None:
        self._backoff = None
        self.resume()


class ProxyHeaderRefused(Exception):
    """The connection did not start with a usable PROXY header from a trusted peer.

    ``reason`` (``untrusted``, ``timeout``, ``malformed``) labels
    ``pop3proxy_proxy_protocol_errors_total``; ``detail`` goes to the log.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or reason


def trusted(peer: tuple, networks: tuple) -> bool:
    try:
        address = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except (ValueError, IndexError, AttributeError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address.version == net.version and address in net for net in networks)


def refuse_proxy_header(refused: ProxyHeaderRefused, peer: tuple, config: ListenerConfig) -> None:
    """Count and log a connection closed for its PROXY header; the caller closes it."""
    metrics.add(metrics.PROXY_PROTOCOL_ERRORS, config.name, refused.reason)
    log.warning(
        "PROXY header refused",
        extra={"listener": config.name, "peer": peer[0] if peer else None, "error": refused.detail},
    )
