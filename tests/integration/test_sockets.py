"""What the proxy's own sockets are set up to do, read back from the kernel.

TCP_NODELAY on both sides (without it, Nagle and a client's delayed ACKs
stall every exchange by 40 ms), taken by accepted connections from the
listening socket; the address a client connected to, asked of its socket
only when a PROXY header to the backend needs it.
"""

from __future__ import annotations

import socket

import gevent
import gevent.event
from harness.dovecot import Dovecot
from harness.ports import LOOPBACK, free_port
from harness.users import USERS

from pop3proxy.backends import BackendPicker
from pop3proxy.config import BackendsConfig, ListenerConfig
from pop3proxy.interfaces import ClientAddress
from pop3proxy.net.backend import Dialer, proxy_header
from pop3proxy.net.endpoint import Endpoint
from pop3proxy.net.listener import Listener
from pop3proxy.protocol import proxyproto
from pop3proxy.tenants import Backend, Tenant


def nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def accept_one(host: str) -> tuple[socket.socket, socket.socket]:
    """A client connection and the proxy's side of it, through a real Listener."""
    accepted = gevent.event.AsyncResult()
    listener = Listener(
        ListenerConfig("plain", host, free_port()),
        lambda sock, peer, config: accepted.set(sock),
    )
    listener.start()
    try:
        client = socket.create_connection(listener.address, timeout=5)
        return client, accepted.get(timeout=5)
    finally:
        listener.close()


def test_accepted_connections_have_nodelay() -> None:
    for host in (LOOPBACK, "::1"):
        client, ours = accept_one(host)
        try:
            assert nodelay(ours)
            assert ours.gettimeout() == 0.0  # non-blocking, for the session's watchers
        finally:
            client.close()
            ours.close()


def test_the_backend_connection_has_nodelay(dovecot: Dovecot) -> None:
    tenant = Tenant("sockets.example", (Backend(dovecot.host, dovecot.port),))
    picker = BackendPicker(BackendsConfig(max_attempts=1), 5.0, Dialer())
    connection = picker.open(tenant, "alice", USERS["alice"].encode(), user="alice")
    try:
        assert nodelay(connection.sock)  # type: ignore[attr-defined]
    finally:
        connection.close()


def test_a_proxy_header_names_the_address_the_client_connected_to() -> None:
    client, ours = accept_one(LOOPBACK)
    try:
        address = ClientAddress(("192.0.2.7", 40000), None, ours)
        backend = Backend(LOOPBACK, 110, forward_client="proxy_v1")
        header = proxy_header(backend, address, ("127.0.0.9", 110))
        parsed = proxyproto.HeaderReader().feed(header)
        assert parsed is not None
        assert parsed.source == ("192.0.2.7", 40000)
        assert parsed.destination == ours.getsockname()[:2]
    finally:
        client.close()
        ours.close()
    # A connection closed meanwhile: the backend's own address stands in.
    header = proxy_header(backend, address, ("127.0.0.9", 110))
    parsed = proxyproto.HeaderReader().feed(header)
    assert parsed is not None
    assert parsed.destination == ("127.0.0.9", 110)


def test_a_destination_from_an_inbound_header_is_kept() -> None:
    address = ClientAddress(("192.0.2.7", 40000), ("198.51.100.1", 995), None)
    assert address.connected_to() == ("198.51.100.1", 995)


def test_a_write_watcher_is_made_only_for_a_write_that_waits() -> None:
    """An idle session holds one watcher per socket; the writer comes when a
    peer stops taking bytes, and goes with the reader."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    try:
        endpoint = Endpoint(ours)
        assert endpoint.send(b"+OK\r\n")
        assert endpoint._writer is None
        while endpoint.send(b"x" * 65536):
            pass  # until the peer's buffer is full
        writer = endpoint.writer
        assert endpoint.writer is writer
        waited = gevent.event.Event()
        writer.start(waited.set)
        peer.recv(1 << 20)  # the peer reads: the socket is writable again
        assert waited.wait(timeout=5)
        endpoint.close_watchers()
        assert not writer.active
    finally:
        ours.close()
        peer.close()
