"""Non-blocking reads and writes on one socket, plain or TLS, for event-loop callbacks.

Every part of a session that moves bytes (the client side, the backend
login, the relay) goes through an :class:`Endpoint`: the kernel socket, or
OpenSSL's connection on it, read and written directly, with what the peer
could not take yet kept in order.
"""

from __future__ import annotations

import ssl
from collections import deque
from typing import Any

from gevent.hub import get_hub

from pop3proxy.net.sockets import READ, WRITE, RawSocket

CHUNK = 262144
CLIENT_RECV = 16384
SHARED_BUFFER = memoryview(bytearray(CHUNK))
"""Every read lands in this one buffer, shared by every session: the loop
runs one callback at a time, and a callback is done with what it read (sent
on, or copied by the protocol core) before it returns. A bulk download
allocates nothing per chunk; only bytes a slow client cannot take yet are
copied."""


class Endpoint:
    """Non-blocking reads and writes on a socket, plain or TLS, for loop callbacks.

    ``raw`` is a kernel socket in non-blocking mode and ``tls`` OpenSSL's
    connection on it, if any; this talks to them directly. ``None`` means
    "would block".

    ``reader`` and ``writer`` are the socket's I/O watchers for its whole
    life: the session, the backend login and the relay each start and stop
    them in turn, and whoever owns the socket calls :meth:`close_watchers`.
    One pair per socket rather than one per stage: fewer objects per
    session, and no descriptor check (``fcntl``) or refused ``epoll_ctl``
    for each new watcher on a descriptor libev already knows. The writer is
    made the first time it is asked for: most sockets never have to wait for
    a peer to take a write.
    """

    __slots__ = ("_offset", "_raw", "_tls", "_writer", "fd", "outbox", "reader")

    def __init__(self, raw: RawSocket, tls: Any = None) -> None:
        self._raw = raw
        self._tls = tls
        self.fd = raw.fileno()
        self.reader = get_hub().loop.io(self.fd, READ)
        self._writer: Any = None
        self.outbox: deque[bytes] | None = None
        """Bytes the peer could not take yet, in order; made when needed and
        dropped when empty (an empty deque is 760 bytes, an idle session's
        largest object)."""
        self._offset = 0

    @property
    def writer(self) -> Any:  # gevent's io watcher (no public type)
        writer = self._writer
        if writer is None:
            writer = self._writer = get_hub().loop.io(self.fd, WRITE)
        return writer

    def stop_watchers(self) -> None:
        self.reader.stop()
        if self._writer is not None:
            self._writer.stop()

    def close_watchers(self) -> None:
        """Before the socket closes (libev must not watch a closed descriptor)."""
        for watcher in (self.reader, self._writer):
            if watcher is not None:
                watcher.stop()
                watcher.close()

    @property
    def plain(self) -> bool:
        return self._tls is None

    def use_tls(self, tls: Any) -> None:
        """After a handshake on this socket: from now on, through OpenSSL."""
        self._tls = tls

    def recv_into(self, buffer: memoryview) -> int | None:
        if self._tls is None:
            try:
                return self._raw.recv_into(buffer)
            except BlockingIOError:
                return None
        try:
            return self._tls.read(len(buffer), buffer)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return 0

    def buffered(self) -> bool:
        """Decrypted bytes wait inside OpenSSL, where the socket's watcher cannot see them."""
        return self._tls is not None and self._tls.pending() > 0

    def send(self, data: bytes | memoryview) -> bool:
        """Write what the kernel takes and keep a copy of the rest; True when nothing is left.

        ``data`` may be a view of a buffer that is reused as soon as this returns.
        """
        if self.outbox:
            self.outbox.append(bytes(data))
            return self.flush()
        if self._tls is not None:
            try:
                self._tls.write(data)
                return True
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0  # OpenSSL keeps its place: the retry passes the same bytes again
        else:
            try:
                sent = self._raw.send(data)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return True
            data = data[sent:]
        self.outbox = deque((bytes(data),))
        return False

    def flush(self) -> bool:
        outbox = self.outbox
        if outbox is None:
            return True
        while outbox:
            head = outbox[0]
            if self._tls is not None:
                try:  # OpenSSL resumes a retried write itself; same bytes again
                    self._tls.write(head)
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    return False
            else:
                try:
                    sent = self._raw.send(memoryview(head)[self._offset :])
                except BlockingIOError:
                    return False
                self._offset += sent
                if self._offset < len(head):
                    return False
                self._offset = 0
            outbox.popleft()
        self.outbox = None
        return True
