"""PROXY protocol v1 and v2 (HAProxy), sans-IO: parse and build.

A load balancer in front of the proxy sends one header before the client's
first byte, telling the proxy who the client is; the proxy sends one to a
backend (Dovecot's ``haproxy = yes`` listeners) for the same reason.
Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

:func:`parse` takes the bytes received so far and returns a
:class:`ProxyHeader`, ``None`` (need more data), or raises
:class:`ProxyProtocolError`; never anything else, whatever the bytes (a
hypothesis test feeds it arbitrary input). :class:`HeaderReader` tells the
shell how many bytes it may read without reading past the header, so the
bytes after it (a TLS ClientHello on an implicit-TLS listener) stay in the
socket for whoever reads next.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107
"""Section 2.1: the longest v1 line (TCP6 with the largest addresses), CRLF included."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_LENGTH = 16
V2_MAX_LENGTH = 4096
"""The spec allows 16 + 65535 bytes; TLVs from real load balancers are small.
A bigger header is refused rather than buffered."""
MIN_HEADER_LENGTH = 15
"""``PROXY UNKNOWN\\r\\n``, the shortest header of either version."""

_V2_LOCAL = 0x20
_V2_PROXY = 0x21
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21
_V2_ADDRESS_LENGTHS = {_V2_TCP4: 12, _V2_TCP6: 36}

Address = tuple[str, int]


class ProxyProtocolError(ValueError):
    """The header is malformed; ``reason`` is a short label, safe for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ProxyHeader:
    version: int
    length: int
    """Bytes the header took; what follows belongs to the client's stream."""
    source: Address | None = None
    """The client's address; ``None`` for LOCAL (v2) or UNKNOWN (v1): the
    connection is the load balancer's own (a health check), use the socket's peer."""
    destination: Address | None = None


def parse(data: bytes) -> ProxyHeader | None:
    """One header at the start of ``data``; ``None`` if it is incomplete."""
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data)
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    raise ProxyProtocolError("no_signature")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyProtocolError("v1_too_long")
        if b"\n" in data or b"\x00" in data:
            raise ProxyProtocolError("v1_malformed")
        return None
    try:
        line = data[len(V1_PREFIX) : end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("v1_malformed") from None
    parts = line.split(" ")
    if parts[0] == "UNKNOWN":
        return ProxyHeader(1, end + 2)
    if len(parts) != 5 or parts[0] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError("v1_malformed")
    version = 4 if parts[0] == "TCP4" else 6
    source = _v1_address(parts[1], parts[3], version)
    destination = _v1_address(parts[2], parts[4], version)
    return ProxyHeader(1, end + 2, source, destination)


def _v1_address(host: str, port: str, version: int) -> Address:
    if not port.isdigit() or len(port) > 5 or (len(port) > 1 and port[0] == "0"):
        raise ProxyProtocolError("v1_bad_port")
    number = int(port)
    if number > 65535:
        raise ProxyProtocolError("v1_bad_port")
    try:
        address = plain_address(host)
    except ValueError:
        raise ProxyProtocolError("v1_bad_address") from None
    if address.version != version:
        raise ProxyProtocolError("v1_bad_address")
    return str(address), number


_ADDRESS_CHARACTERS = frozenset("0123456789abcdefABCDEF:.")


def plain_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``text`` as an IP address, refusing anything but the address itself.

    ``ipaddress`` accepts an IPv6 zone id (``fe80::1%eth0``) holding any
    character, a line feed included, and gives it back in ``str()``: a load
    balancer's header could then put a line of its choosing into the
    XCLIENT command or the PROXY header the proxy sends a backend. A zone id
    names an interface of the host that wrote it, meaningless anywhere else,
    so an address with one is refused like any other text that is not an
    address. Raises ``ValueError``.
    """
    if not text or not _ADDRESS_CHARACTERS.issuperset(text):
        raise ValueError("not a plain IP address")
    return ipaddress.ip_address(text)


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_FIXED_LENGTH:
        return None
    version_command, family, length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2:
        raise ProxyProtocolError("v2_bad_version")
    if version_command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyProtocolError("v2_bad_command")
    total = V2_FIXED_LENGTH + length
    if total > V2_MAX_LENGTH:
        raise ProxyProtocolError("v2_too_long")
    if len(data) < total:
        return None
    if version_command == _V2_LOCAL:
        return ProxyHeader(2, total)
    wanted = _V2_ADDRESS_LENGTHS.get(family)
    if wanted is None:
        # UNSPEC, UDP or UNIX: nothing we can use as a client address (spec
        # section 2.2: the receiver must ignore the address then).
        return ProxyHeader(2, total)
    if length < wanted:
        raise ProxyProtocolError("v2_short_address")
    block = data[V2_FIXED_LENGTH : V2_FIXED_LENGTH + wanted]
    size = 4 if family == _V2_TCP4 else 16
    # Packed addresses carry no zone id; checked all the same, so that what
    # the header gives is a plain address whichever version carried it.
    source_ip = _checked(ipaddress.ip_address(block[:size]))
    destination_ip = _checked(ipaddress.ip_address(block[size : 2 * size]))
    source_port, destination_port = struct.unpack("!HH", block[2 * size : 2 * size + 4])
    return ProxyHeader(
        2, total, (str(source_ip), source_port), (str(destination_ip), destination_port)
    )


class HeaderReader:
    """Reads one header from a stream without reading a byte past it.

    The shell asks :meth:`wanted` how many bytes to ``recv`` (at most), feeds
    what arrived, and repeats until :meth:`feed` returns the header. v2 says
    its length in the first 16 bytes; a v1 line is read byte by byte after
    its first 15 (at most 92 small reads, once per connection, from a
    trusted load balancer).
    """

    def __init__(self) -> None:
        self._buffer = b""

    def wanted(self) -> int:
        have = len(self._buffer)
        if have < MIN_HEADER_LENGTH:
            return MIN_HEADER_LENGTH - have
        if self._buffer.startswith(V2_SIGNATURE):
            if have < V2_FIXED_LENGTH:
                return V2_FIXED_LENGTH - have
            (length,) = struct.unpack("!H", self._buffer[14:16])
            return max(1, V2_FIXED_LENGTH + length - have)
        return 1

    def feed(self, data: bytes) -> ProxyHeader | None:
        self._buffer += data
        return parse(self._buffer)


def build_v1(source: Address | None, destination: Address | None) -> bytes:
    """A v1 line; ``UNKNOWN`` without a source (a health check's own connection)."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = _same_family(source, destination)
    family = "TCP4" if src[0].version == 4 else "TCP6"
    line = f"PROXY {family} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n"
    return line.encode("ascii")


def build_v2(source: Address | None, destination: Address | None) -> bytes:
    """A v2 header without TLVs; LOCAL without a source."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0, 0)
    src, dst = _same_family(source, destination)
    family = _V2_TCP4 if src[0].version == 4 else _V2_TCP6
    block = src[0].packed + dst[0].packed + struct.pack("!HH", src[1], dst[1])
    return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(block)) + block


_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _same_family(source: Address, destination: Address) -> tuple[tuple[_IP, int], tuple[_IP, int]]:
    """Both addresses in one family, as the header requires.

    IPv4-mapped IPv6 addresses (a dual-stack socket) become IPv4; a
    destination of the other family becomes the unspecified address.
    """
    src_ip = _unmapped(address_to_forward(source[0]))
    dst_ip = _unmapped(address_to_forward(destination[0]))
    if dst_ip.version != src_ip.version:
        dst_ip = ipaddress.ip_address("0.0.0.0" if src_ip.version == 4 else "::")
    return (src_ip, source[1]), (dst_ip, destination[1])


def _checked(address: _IP) -> _IP:
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ProxyProtocolError("v2_bad_address")
    return address


def address_to_forward(text: str) -> _IP:
    """The address a PROXY header or XCLIENT may tell a backend.

    A socket's peer can hold a zone id (a link-local client,
    ``fe80::1%eth0``): it means nothing to the backend, and a v2 header
    cannot carry one, so v1 and XCLIENT drop it too. Whatever else the text
    holds, what goes out is ``ipaddress``'s own rendering of the address,
    never the text; anything else raises ``ValueError``.
    """
    return plain_address(text.partition("%")[0])


def _unmapped(address: _IP) -> _IP:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
