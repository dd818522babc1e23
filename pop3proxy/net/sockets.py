"""Small socket operations every part of the shell shares."""

from __future__ import annotations

import _socket
import functools
import ipaddress
import socket

READ, WRITE = 1, 2
"""libev event masks: what an I/O watcher waits for."""


RawSocket = _socket.socket
"""A kernel socket of any kind: the stdlib's, gevent's ``_sock`` or a :class:`KernelSocket`.
Annotations say this rather than ``socket.socket``, which under gevent's
monkey-patching is gevent's wrapper class, a type the bare sockets are not."""


class KernelSocket(_socket.socket):
    """The kernel socket with nothing around it (no gevent wrapper); weakly
    referable, as OpenSSL's connection object needs its socket to be."""

    __slots__ = ("__weakref__",)


def set_nodelay(sock: RawSocket) -> None:
    """Disable Nagle: POP3 is request/response, and Nagle plus delayed ACKs
    stalls every exchange by 40 ms or more. Set on a listening socket, it
    holds for every connection accepted from it (Linux copies it)."""
    try:  # noqa: SIM105 (contextlib.suppress: a context manager, once per session)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


@functools.lru_cache(maxsize=1024)
def is_address(host: str) -> bool:
    """An IP address literal (no resolver needed); cached, parsing is not free."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
