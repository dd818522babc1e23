"""Fuzz the PROXY protocol v1/v2 parser: any bytes give a header, ``None`` or
``ProxyProtocolError``; a header never claims more bytes than it was given."""

from __future__ import annotations

import sys

from _driver import instrumented, run

try:
    with instrumented():
        from pop3proxy.protocol import proxyproto
except ImportError:  # the parser is not in this version yet
    sys.exit("pop3proxy/protocol/proxyproto.py is not there: nothing to fuzz")

SEEDS = [
    b"PROXY TCP4 192.0.2.1 198.51.100.1 40000 110\r\n",
    b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 995\r\nhello",
    b"PROXY UNKNOWN\r\n",
    proxyproto.V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(12),
    proxyproto.V2_SIGNATURE + b"\x20\x00\x00\x00",
]


def target(data: bytes) -> None:
    try:
        header = proxyproto.parse(data)
    except proxyproto.ProxyProtocolError:
        return
    if header is not None:
        assert 0 < header.length <= len(data)


if __name__ == "__main__":
    run(target, SEEDS)
