"""A kernel pipe between two plaintext sockets, for bulk backend replies.

A big RETR through user space costs a copy in and a copy out per chunk, and
on a shared machine that CPU is taken from the client and the backend: the
plaintext relay lost a tenth of a direct stream's throughput that way.
``splice(2)`` moves the bytes from the backend's
socket into a pipe and from the pipe into the client's socket by reference,
without them entering the process.

The pipe is opened only when a read shows a bulk reply is under way and is
closed again when the reply's tail has gone, so an idle session holds no
pipe and no extra descriptors. While bytes wait in it, the pipe is the
client's outbox: the relay stops reading the backend until it drains.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

PIPE_SIZE = 262144
"""Bytes a pipe holds (and one splice moves): the relay's chunk size."""

_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class SplicePipe:
    """One pipe; :meth:`fill` from a socket, :meth:`drain` into another."""

    __slots__ = ("_read_fd", "_write_fd", "pending")

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # Above /proc/sys/fs/pipe-max-size the default 64 KiB works too.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._write_fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.pending = 0
        """Bytes in the pipe, not yet taken by the client's socket."""

    def fill(self, source: int) -> int | None:
        """Move what ``source`` has (up to a pipe's worth); ``0`` at its end,
        ``None`` when it has nothing now. Call only when the pipe is empty."""
        try:
            moved = os.splice(source, self._write_fd, PIPE_SIZE, flags=_FLAGS)
        except BlockingIOError:
            return None
        self.pending += moved
        return moved

    def drain(self, sink: int) -> bool:
        """Move the pipe's bytes into ``sink``; ``True`` once the pipe is empty."""
        while self.pending:
            try:
                moved = os.splice(self._read_fd, sink, self.pending, flags=_FLAGS)
            except BlockingIOError:
                return False
            self.pending -= moved
        return True

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)
