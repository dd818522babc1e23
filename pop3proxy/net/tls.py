"""TLS contexts and handshakes with a deadline.

Contexts are built once and shared by every session (building one per
connection costs a certificate parse each time). gevent's own handshake has
no deadline of its own, so every handshake here runs under one.

The listeners' certificates can change while the proxy runs (certificate
rotation, see :mod:`pop3proxy.reload`): :func:`server_context` builds a whole
new context (the default certificate plus one per SNI name), and the caller
swaps the reference sessions read at handshake time. Sessions already past
their handshake keep the context they started with.

A TLS session never moves from one certificate to another (the hole of
nginx's CVE-2025-23419). OpenSSL keeps sessions and ticket keys in the
context a connection was *made* with, whatever context the SNI callback
switches to later, so with one context for every connection a session
resumed under tenant A's certificate would resume under tenant B's name too,
without B's certificate ever being shown. :class:`ServerTLS` therefore peeks
at the ClientHello and makes the connection with the certificate's own
context: each certificate has its own session cache and ticket keys, and a
session of another simply does not resume (a full handshake follows). When
the ClientHello cannot be read that way (longer than two full records, or
malformed), the SNI callback still switches certificates, but refuses the
handshake if it is a resumption.
"""

from __future__ import annotations

import _ssl
import ctypes
import functools
import os
import socket
import ssl
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from pop3proxy.config import ListenerConfig, SNIEntry, TLSConfig
from pop3proxy.names import match_name, usable_server_name
from pop3proxy.net.sockets import READ, WRITE, RawSocket
from pop3proxy.tlspolicy import TLSPolicy

_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}


class HandshakeFailed(Exception):
    """The TLS handshake did not complete; ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class CertificateError(OSError):
    """A certificate or key could not be loaded; says which file and why.

    An ``OSError``, so that ``pop3proxy serve`` reports it as "cannot start"."""


class _OpenSSL:
    """The one OpenSSL call Python's ``ssl`` lacks: the list of key exchange groups.

    ``SSLContext.set_ecdh_curve`` sets a single curve; Mozilla's profiles name
    three (X25519, P-256, P-384), and OpenSSL's default list adds P-521, X448
    and the FFDHE groups, which scanners report as non-compliant. So this
    calls ``SSL_CTX_set1_groups_list`` (a macro over ``SSL_CTX_ctrl``) in the
    OpenSSL that ``_ssl`` itself is linked with, on the ``SSL_CTX`` pointer
    that follows the object header of CPython's ``PySSLContext``. Before the
    call, the pointer is checked: OpenSSL's options on it must be the
    context's own, else this raises rather than write through a wrong pointer.
    """

    SET_GROUPS_LIST = 92  # SSL_CTRL_SET_GROUPS_LIST in ssl.h

    def __init__(self) -> None:
        library = ctypes.CDLL(_ssl.__file__)
        self.ctrl = library.SSL_CTX_ctrl
        self.ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
        self.ctrl.restype = ctypes.c_long
        self.get_options = library.SSL_CTX_get_options
        self.get_options.argtypes = [ctypes.c_void_p]
        self.get_options.restype = ctypes.c_uint64

    def set_groups(self, context: ssl.SSLContext, groups: tuple[str, ...]) -> None:
        pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
        if not pointer or self.get_options(pointer) != context.options:
            raise RuntimeError("cannot reach OpenSSL's context to set tls.groups")
        if self.ctrl(pointer, self.SET_GROUPS_LIST, 0, ":".join(groups).encode()) != 1:
            raise ValueError(f"OpenSSL refused tls.groups {list(groups)}")


@functools.cache
def _openssl() -> _OpenSSL:
    return _OpenSSL()


def _apply_policy(context: ssl.SSLContext, policy: TLSPolicy) -> None:
    with warnings.catch_warnings():
        # The ssl module deprecates TLS 1.0 and 1.1; the "old" profile exists for
        # the clients that still need them, and says so in its documentation.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = _VERSIONS[policy.min_version]
    context.set_ciphers(policy.ciphers)
    if policy.server_preference:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _openssl().set_groups(context, policy.groups)


def _context(policy: TLSPolicy, cert: str | None, key: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    _apply_policy(context, policy)
    # Resumption, deliberately: mail clients poll, reconnecting every few
    # minutes, and a resumed handshake skips the key exchange and signature.
    # One TLS 1.3 ticket per handshake is enough for a client that connects
    # serially (OpenSSL's default sends two). Ticket keys live in the context:
    # they rotate whenever the certificate reloads, and a worker process
    # cannot resume another's tickets (that client does a full handshake).
    context.num_tickets = 1
    if cert and key:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as error:
            reason = getattr(error, "reason", None) or error.strerror or str(error)
            if reason == "KEY_VALUES_MISMATCH":
                reason = "the key does not belong to the certificate"
            raise CertificateError(f"{cert} / {key}: {reason}") from None
    return context


def sni_entries(config: TLSConfig) -> list[SNIEntry]:
    """``tls.sni`` plus ``<hostname>.crt``/``<hostname>.key`` pairs in ``tls.sni_dir``.

    The map wins over the directory for the same name. Hidden files (the
    ``..data`` machinery of a Kubernetes Secret volume) are skipped.
    """
    entries = {entry.name: entry for entry in config.sni}
    if config.sni_dir:
        try:
            names = sorted(os.listdir(config.sni_dir))
        except OSError as error:
            raise CertificateError(f"{config.sni_dir}: {error.strerror}") from None
        for name in names:
            if name.startswith(".") or not name.endswith(".crt"):
                continue
            host = name[: -len(".crt")].lower()
            key = os.path.join(config.sni_dir, host + ".key")
            if host not in entries and os.path.exists(key):
                entries[host] = SNIEntry(host, os.path.join(config.sni_dir, name), key)
    return list(entries.values())


_CERTIFICATES: weakref.WeakKeyDictionary[ssl.SSLContext, dict[str, ssl.SSLContext]] = (
    weakref.WeakKeyDictionary()
)
"""The SNI contexts of each listeners' context, by server name."""


def certificate_context(context: ssl.SSLContext, server_name: str | None) -> ssl.SSLContext:
    """The context holding the certificate ``server_name`` gets: its SNI
    entry's, else the default one (``context`` itself)."""
    name = usable_server_name(server_name)
    by_name = _CERTIFICATES.get(context)
    found = match_name(by_name, name) if by_name and name else None
    return by_name[found] if by_name and found is not None else context


def server_contexts(
    config: TLSConfig, listeners: tuple[ListenerConfig, ...]
) -> dict[str, ssl.SSLContext]:
    """A context for each TLS listener, by listener name; listeners with the same
    effective policy share one."""
    by_policy: dict[TLSPolicy, ssl.SSLContext] = {}
    contexts = {}
    for listener in listeners:
        if listener.tls == "none":
            continue
        policy = config.policy(listener.tls_profile)
        if policy not in by_policy:
            by_policy[policy] = server_context(config, policy)
        contexts[listener.name] = by_policy[policy]
    return contexts


def server_context(config: TLSConfig, policy: TLSPolicy | None = None) -> ssl.SSLContext:
    """A listener's context: ``policy`` (default: ``tls.profile`` and its overrides),
    no compression, no renegotiation.

    With ``tls.sni``/``tls.sni_dir``, a client's server name picks its own
    certificate; other names (or none) get ``tls.cert``. Raises
    :class:`CertificateError` when any file does not load, so a reload never
    half-applies.
    """
    policy = policy or config.policy()
    context = _context(policy, config.cert, config.key)
    by_name: dict[str, ssl.SSLContext] = {}
    loaded: dict[tuple[str, str], ssl.SSLContext] = {}
    for entry in sni_entries(config):
        pair = (entry.cert, entry.key)
        if pair not in loaded:
            loaded[pair] = _context(policy, entry.cert, entry.key)
        by_name[entry.name] = loaded[pair]
    _CERTIFICATES[context] = by_name

    def choose(sslsock: Any, server_name: str | None, current: ssl.SSLContext) -> int | None:
        """OpenSSL's word on the server name: noted for the tenant, and the
        certificate switched if the ClientHello was not read beforehand."""
        name = usable_server_name(server_name)
        if name is None:
            return None
        sslsock.pop3proxy_server_name = name
        wanted = certificate_context(context, name)
        if wanted is current:
            return None
        if sslsock.sslobj.session_reused:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE  # a session made under another
        sslsock.context = wanted
        return None

    for each in (context, *loaded.values()):
        each.sni_callback = choose
    return context


DEFAULT_CERTIFICATE = "default"
"""The name of ``tls.cert`` in the expiry metric when its subject has no common name."""


def certificate_expiries(config: TLSConfig) -> dict[str, float]:
    """When each served certificate expires (Unix time), by name: ``tls.cert`` by
    its subject's common name, SNI certificates by their server name. Where two
    share a name the earlier expiry wins; a file that does not read is left out
    (loading the contexts has already said why)."""
    expiries: dict[str, float] = {}

    def note(name: str, expires: float) -> None:
        expiries[name] = min(expires, expiries.get(name, expires))

    if config.cert:
        leaf = _leaf(config.cert)
        if leaf is not None:
            names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            name = str(names[0].value).lower() if names else DEFAULT_CERTIFICATE
            note(name, leaf.not_valid_after_utc.timestamp())
    for entry in sni_entries(config):
        leaf = _leaf(entry.cert)
        if leaf is not None:
            note(entry.name, leaf.not_valid_after_utc.timestamp())
    return expiries


def _leaf(path: str) -> x509.Certificate | None:
    """The first certificate of a PEM chain file."""
    try:
        with open(path, "rb") as file:
            return x509.load_pem_x509_certificates(file.read())[0]
    except (OSError, ValueError):
        return None


def server_name(tls: object) -> str | None:
    """The SNI name the client sent in the handshake of ``tls`` (a :class:`ServerTLS`,
    or ``None`` before any), lowercased."""
    return getattr(tls, "pop3proxy_server_name", None)


def watched_files(config: TLSConfig) -> Iterator[str]:
    """Every file (and the SNI directory) whose change means a new certificate."""
    for path in (config.cert, config.key, config.sni_dir):
        if path:
            yield path
    for entry in config.sni:
        yield entry.cert
        yield entry.key
    if config.sni_dir:
        try:
            names = sorted(os.listdir(config.sni_dir))
        except OSError:
            return
        for name in names:
            if not name.startswith(".") and name.endswith((".crt", ".key")):
                yield os.path.join(config.sni_dir, name)


def fingerprint(config: TLSConfig) -> tuple:
    """What the certificate files look like now, through any symlinks.

    Kubernetes updates a Secret volume by pointing its ``..data`` symlink at a
    new directory: the path stays, the file behind it changes. ``os.stat``
    follows the links, so the inode, size and mtime here change with it.
    """
    seen: list[tuple[object, ...]] = []
    for path in watched_files(config):
        try:
            st = os.stat(path)
        except OSError as error:
            seen.append((path, error.errno))
            continue
        seen.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(seen)


@functools.lru_cache(maxsize=64)
def client_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """A context for connecting to backends, shared per (verify, CA) pair."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def handshake_failure(error: OSError) -> HandshakeFailed:
    """A failed handshake's error as a bounded reason."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return HandshakeFailed("certificate", error.verify_message or "")
    if isinstance(error, ssl.SSLError):
        return HandshakeFailed("protocol", error.reason or "")
    return HandshakeFailed("connection", error.strerror or "")


RECORD_LIMIT = 5 + 2**14
"""A TLS record header and the largest plaintext record (RFC 8446 section 5.1)."""
HELLO_PEEK_LIMIT = 2 * RECORD_LIMIT
"""ClientHellos are a few hundred bytes to a few KiB (post-quantum key shares
included); one that needs more than two full records is left to OpenSSL."""

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_SERVER_NAME = 0x0000
_HOST_NAME = 0x00


def hello_server_name(data: bytes) -> str | int | None:
    """The SNI host name of the ClientHello at the start of ``data``.

    Returns the name (``str``); ``None`` when there is none to be had (no
    SNI, not a ClientHello, or one longer than :data:`HELLO_PEEK_LIMIT`:
    OpenSSL decides what to make of those); or, when ``data`` is too short
    to tell, the number of bytes needed (``int``). The ClientHello may be
    spread over several handshake records (RFC 8446 section 5.1).
    """
    message = bytearray()
    position = 0
    while True:
        if position + 5 > HELLO_PEEK_LIMIT:
            return None
        if len(data) < position + 5:
            return position + 5
        if data[position] != _HANDSHAKE or data[position + 1] != 3:
            return None
        end = position + 5 + int.from_bytes(data[position + 3 : position + 5], "big")
        if end > HELLO_PEEK_LIMIT:
            return None
        if len(data) < end:
            return end
        message += data[position + 5 : end]
        position = end
        if len(message) >= 4:
            if message[0] != _CLIENT_HELLO:
                return None
            hello_end = 4 + int.from_bytes(message[1:4], "big")
            if len(message) >= hello_end:
                return _server_name(memoryview(message)[4:hello_end])


def _server_name(hello: memoryview) -> str | None:
    """RFC 8446 section 4.1.2 and RFC 6066 section 3, bounds checked."""
    position = 2 + 32  # legacy_version, random
    for width in (1, 2, 1):  # session id, cipher suites, compression methods
        if position + width > len(hello):
            return None
        position += width + int.from_bytes(hello[position : position + width], "big")
    if position + 2 > len(hello):
        return None
    extensions_end = position + 2 + int.from_bytes(hello[position : position + 2], "big")
    position += 2
    while position + 4 <= min(extensions_end, len(hello)):
        kind = int.from_bytes(hello[position : position + 2], "big")
        size = int.from_bytes(hello[position + 2 : position + 4], "big")
        body = hello[position + 4 : position + 4 + size]
        position += 4 + size
        if kind != _SERVER_NAME:
            continue
        if len(body) < 5 or body[2] != _HOST_NAME:
            return None
        length = int.from_bytes(body[3:5], "big")
        if 5 + length > len(body):
            return None
        try:
            return bytes(body[5 : 5 + length]).decode("ascii")
        except UnicodeDecodeError:
            return None
    return None


class ServerTLS:
    """Server-side TLS on a client's non-blocking socket, driven by the event loop.

    ``sslobj`` is OpenSSL's connection itself, read and written without any
    wrapper (see :class:`pop3proxy.net.relay.Endpoint`), made once the
    ClientHello has arrived, with the context of the certificate its server
    name picks (see the module's docstring). This object is its owner, which
    is what the SNI callback of :func:`server_context` gets: it notes the
    client's server name here.
    """

    __slots__ = ("__weakref__", "_awaited", "_context", "_sock", "pop3proxy_server_name", "sslobj")

    def __init__(self, sock: RawSocket, context: ssl.SSLContext) -> None:
        self.pop3proxy_server_name: str | None = None
        self.sslobj: Any = None
        self._sock = sock
        self._context = context
        self._awaited = 0
        """Bytes of ClientHello waited for (the socket's low-water mark)."""

    def _connect(self) -> int:
        """Make ``sslobj`` once the ClientHello is readable; else the event to wait for.

        The ClientHello is peeked at, not read: OpenSSL reads it after. While
        it is incomplete, the socket's receive low-water mark holds the
        wake-up until all of it is there (peeking again at every segment
        would spin, the bytes staying readable).
        """
        try:
            data = self._sock.recv(HELLO_PEEK_LIMIT, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return READ
        except OSError:
            data = b""  # OpenSSL meets the same error and reports it
        found = hello_server_name(data) if data else None
        if isinstance(found, int):
            if found != self._awaited:
                self._awaited = found
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, found)
                return READ
            found = None  # woken without it: the client closed, OpenSSL will say so
        if self._awaited:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        context = certificate_context(self._context, found)
        self.sslobj = context._wrap_socket(self._sock, server_side=True, owner=self)  # type: ignore[attr-defined]
        return 0

    def _sslsock(self) -> ServerTLS:
        """gevent's ``SSLContext`` runs the SNI callback on ``owner._sslsock()``."""
        return self

    @property
    def context(self) -> ssl.SSLContext:
        return self.sslobj.context

    @context.setter
    def context(self, context: ssl.SSLContext) -> None:
        self.sslobj.context = context

    def handshake(self) -> int:
        """One step: 0 when done, else the event to wait for; raises :class:`HandshakeFailed`."""
        if self.sslobj is None:
            wait = self._connect()
            if wait:
                return wait
        try:
            self.sslobj.do_handshake()
        except ssl.SSLWantReadError:
            return READ
        except ssl.SSLWantWriteError:
            return WRITE
        except OSError as error:
            raise handshake_failure(error) from None
        return 0
