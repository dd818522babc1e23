"""A private redis-server on a free loopback port, one per test session.

Never the system redis on 6379: each instance gets its own port and directory,
persists nothing, and is stopped by the harness. ``restart()`` keeps the port,
so tests can prove the proxy reconnects to "the same" Redis after an outage.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path

import redis

from . import process
from .ports import LOOPBACK, free_port, wait_until

START_TIMEOUT = 10.0


class RedisServer(process.ServerProcess):
    """One ``redis-server`` child process (not daemonized, so we own its pid)."""

    def __init__(self, port: int | None = None, binary: str = "redis-server") -> None:
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.binary = binary
        self.directory = Path(tempfile.mkdtemp(prefix="pop3proxy-redis-"))
        # Removed by close(), or at the latest when the object is collected or
        # the interpreter exits, so a forgotten close() leaves no directory.
        self._remove_files = weakref.finalize(self, shutil.rmtree, self.directory, True)
        self.log_path = self.directory / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        """A redis-py client for this server (short timeouts: tests must not hang)."""
        options: dict[str, object] = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
        options.update(kwargs)
        return redis.Redis(host=self.host, port=self.port, **options)

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        if self.running:
            return
        argv = [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        self._proc = process.spawn(argv, self.log_path)
        try:
            wait_until(self._ready, START_TIMEOUT, message=f"redis-server on port {self.port}")
        except BaseException:
            self.stop()  # a failed start must not leave a server behind
            raise

    def _ready(self) -> bool:
        proc = self._proc
        assert proc is not None
        if proc.poll() is not None:
            raise RuntimeError(
                f"redis-server exited with {proc.returncode}:\n{self.read_log()[-2000:]}"
            )
        client = self.client(socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            # Our process, not someone else's server that won the port race.
            return client.ping() and client.info("server")["process_id"] == proc.pid
        except redis.exceptions.RedisError:  # not listening yet, still loading, port stolen
            return False
        finally:
            client.close()

    def restart(self) -> None:
        """Stop and start again on the same port (data is not kept)."""
        self.stop()
        self.start()
