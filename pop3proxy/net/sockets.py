"""Small socket operations every part of the shell shares."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import socket

READ, WRITE = 1, 2
"""libev event masks: what an I/O watcher waits for."""


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle: POP3 is request/response, and Nagle plus delayed ACKs
    stalls every exchange by 40 ms or more."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def send_all(sock: socket.socket, data: bytes | bytearray) -> None:
    """``sendall`` that costs one ``send`` when the kernel takes it all.

    gevent's ``sendall`` asks the kernel for the send buffer size and loops
    in Python on every call; POP3 replies and commands almost always fit in
    one ``send``. Only a remainder goes the long way.
    """
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def shutdown(sock: socket.socket) -> None:
    """Wake any greenlet blocked on ``sock`` and end the connection, no goodbye."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def connect(host: str, port: int, timeout: float) -> socket.socket:
    """``socket.create_connection`` without a resolver trip for an address literal.

    gevent resolves every name on its thread pool, even ``127.0.0.1``: a lock
    hand-off and two context switches per backend session. Backends are very
    often configured by address, so those connect directly.

    ``timeout`` bounds the connect only. The socket comes back without one:
    under gevent a socket timeout costs a timer object on every read that
    waits, so callers bound a whole exchange with one ``gevent.Timeout``.
    """
    if _is_address(host):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
    else:
        sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    return sock


@functools.lru_cache(maxsize=1024)
def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
