"""A real POP3 backend made slow to answer its login: a forwarder in front of it.

Everything goes through unchanged, except that once the proxy has sent the
password (``PASS`` or ``AUTH``), the backend's reply waits until the test
calls :meth:`SlowLogin.release`. The test can so act (kick, change a
record) at the moment the proxy's login is accepted by the backend but not
finished, which a real Dovecot answers too fast to hit. Each connection is
released on its own, in the order they were held.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from harness.ports import LOOPBACK

CREDENTIALS = (b"PASS ", b"AUTH ")


class SlowLogin:
    def __init__(self, host: str, port: int) -> None:
        self.backend = (host, port)
        self._listener = socket.create_server((LOOPBACK, 0))
        self.host = LOOPBACK
        self.port: int = self._listener.getsockname()[1]
        self.holding = threading.Semaphore(0)
        """Released once per login that waits for :meth:`release`."""
        self._gates: list[threading.Event] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def wait_holding(self, timeout: float) -> bool:
        """A login's password reached the backend and its reply is held."""
        return self.holding.acquire(timeout=timeout)

    def release(self) -> None:
        """The oldest held reply goes on to the proxy."""
        with self._lock:
            gate = next(gate for gate in self._gates if not gate.is_set())
        gate.set()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            backend = socket.create_connection(self.backend)
            self._sockets += [client, backend]
            gate = threading.Event()
            credentials_sent = threading.Event()
            threading.Thread(
                target=self._upstream, args=(client, backend, gate, credentials_sent), daemon=True
            ).start()
            threading.Thread(
                target=self._downstream, args=(backend, client, gate, credentials_sent), daemon=True
            ).start()

    def _upstream(
        self,
        source: socket.socket,
        target: socket.socket,
        gate: threading.Event,
        credentials_sent: threading.Event,
    ) -> None:
        line = b""
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not credentials_sent.is_set():
                    line += data
                    if any(part.startswith(CREDENTIALS) for part in line.split(b"\r\n")):
                        with self._lock:
                            self._gates.append(gate)
                        credentials_sent.set()
                        self.holding.release()
                target.sendall(data)
        _shut(target)

    def _downstream(
        self,
        source: socket.socket,
        target: socket.socket,
        gate: threading.Event,
        credentials_sent: threading.Event,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if credentials_sent.is_set():
                    gate.wait()
                target.sendall(data)
        _shut(target)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for gate in self._gates:
                gate.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
