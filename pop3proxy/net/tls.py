"""TLS contexts and handshakes with a deadline.

Contexts are built once and shared by every session (building one per
connection costs a certificate parse each time). gevent's own handshake has
no deadline of its own, so every handshake here runs under one.
"""

from __future__ import annotations

import functools
import socket
import ssl

from gevent import Timeout

from pop3proxy.config import TLSConfig

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class HandshakeFailed(Exception):
    """The TLS handshake did not complete; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def server_context(config: TLSConfig) -> ssl.SSLContext:
    """The listeners' context: TLS 1.2 at least, no compression, no renegotiation."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if config.cert and config.key:
        context.load_cert_chain(config.cert, config.key)
    return context


@functools.lru_cache(maxsize=64)
def client_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """A context for connecting to backends, shared per (verify, CA) pair."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _handshake(wrapped: ssl.SSLSocket, timeout: float) -> ssl.SSLSocket:
    try:
        with Timeout(timeout, HandshakeFailed("timeout")):
            wrapped.do_handshake()
    except ssl.SSLCertVerificationError as error:
        raise HandshakeFailed("certificate", error.verify_message or "") from None
    except ssl.SSLError as error:
        raise HandshakeFailed("protocol", error.reason or "") from None
    except OSError as error:
        raise HandshakeFailed("connection", error.strerror or "") from None
    return wrapped


def accept_tls(sock: socket.socket, context: ssl.SSLContext, timeout: float) -> ssl.SSLSocket:
    """Server-side handshake on an accepted socket."""
    wrapped = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    return _handshake(wrapped, timeout)


def connect_tls(
    sock: socket.socket, context: ssl.SSLContext, server_name: str, timeout: float
) -> ssl.SSLSocket:
    """Client-side handshake to a backend; verifies ``server_name`` when the context does."""
    wrapped = context.wrap_socket(sock, server_hostname=server_name, do_handshake_on_connect=False)
    return _handshake(wrapped, timeout)
