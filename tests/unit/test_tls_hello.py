"""The server name of a ClientHello, read before OpenSSL reads it.

The proxy picks the certificate's own context from it (so that sessions
never resume across certificates). Real ClientHellos come from Python's own
TLS client through memory BIOs: no socket, no peer.
"""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3proxy.net.tls import HELLO_PEEK_LIMIT, hello_server_name, usable_server_name


def client_hello(server_name: str | None, version: ssl.TLSVersion | None = None) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    if version is not None:
        context.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_name_of_a_real_client_hello(version: ssl.TLSVersion) -> None:
    assert hello_server_name(client_hello("pop.acme.example", version)) == "pop.acme.example"


def test_no_server_name_is_none() -> None:
    assert hello_server_name(client_hello(None)) is None


def test_every_prefix_asks_for_more_and_says_how_much() -> None:
    """Byte by byte (h11's ``tr`` style): never a wrong answer from part of it."""
    hello = client_hello("b.example")
    for size in range(len(hello)):
        needed = hello_server_name(hello[:size])
        assert isinstance(needed, int) and size < needed <= len(hello), size
    assert hello_server_name(hello[:5]) == len(hello)


def test_bytes_after_the_hello_do_not_matter() -> None:
    assert hello_server_name(client_hello("b.example") + b"\x17\x03\x03junk") == "b.example"


def in_records(hello: bytes, size: int) -> bytes:
    """The same handshake message, framed in records of ``size`` bytes."""
    payload, header = hello[5:], hello[:3]
    parts = [payload[start : start + size] for start in range(0, len(payload), size)]
    return b"".join(header + len(part).to_bytes(2, "big") + part for part in parts)


@pytest.mark.parametrize("size", [1, 3, 100, 2**14])
def test_a_hello_spread_over_records_is_read_too(size: int) -> None:
    framed = in_records(client_hello("b.example"), size)
    assert hello_server_name(framed) == "b.example"
    for cut in range(0, len(framed), max(1, len(framed) // 50)):
        needed = hello_server_name(framed[:cut])
        assert isinstance(needed, int) and cut < needed <= len(framed)


def test_a_hello_longer_than_the_peek_is_left_to_openssl() -> None:
    record = b"\x16\x03\x01\x40\x00\x01\xff\xff\xff" + b"\x00" * (2**14 - 4)
    assert hello_server_name(record + record) is None


@pytest.mark.parametrize(
    "data",
    [
        b"USER alice\r\n",
        b"\x16\x02\x00\x00\x10" + b"\x00" * 16,  # not TLS 1.x
        b"\x15\x03\x03\x00\x02\x02\x28",  # an alert
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello, again
    ],
)
def test_anything_but_a_client_hello_is_none(data: bytes) -> None:
    assert hello_server_name(data) is None


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_any_bytes_give_a_name_none_or_a_bounded_need(data: bytes) -> None:
    found = hello_server_name(data)
    if isinstance(found, int):
        assert len(data) < found <= HELLO_PEEK_LIMIT
    else:
        assert found is None or isinstance(found, str)


@settings(max_examples=300)
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=8))
def test_mangled_hellos_never_crash(position: int, noise: bytes) -> None:
    hello = bytearray(client_hello("b.example"))
    position %= len(hello)
    hello[position : position + len(noise)] = noise
    found = hello_server_name(bytes(hello))
    assert found is None or isinstance(found, (str, int))


@pytest.mark.parametrize(
    ("name", "usable"),
    [
        ("Pop.ACME.example.", "pop.acme.example"),
        ("a.example", "a.example"),
        ("evil\n.example", None),
        ("evil\r\nQUIT", None),
        ("a b.example", None),
        ("a\x01.example", None),
        ("", None),
        (None, None),
    ],
)
def test_only_host_names_are_used(name: str | None, usable: str | None) -> None:
    assert usable_server_name(name) == usable
