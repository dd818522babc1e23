"""PROXY protocol v1/v2: round trips, malformed headers, and fuzzing.

Whatever bytes arrive, the parser answers with a header, "need more", or
ProxyProtocolError: a load balancer's garbage must never become a crash.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3proxy.protocol.proxyproto import (
    V2_SIGNATURE,
    HeaderReader,
    ProxyHeader,
    ProxyProtocolError,
    build_v1,
    build_v2,
    parse,
)

V4 = (("192.0.2.10", 50123), ("198.51.100.1", 995))
V6 = (("2001:db8::10", 50123), ("2001:db8::1", 110))


@pytest.mark.parametrize("build", [build_v1, build_v2])
@pytest.mark.parametrize("addresses", [V4, V6], ids=["ipv4", "ipv6"])
def test_round_trip(build, addresses) -> None:
    header = build(*addresses)
    parsed = parse(header + b"+OK after")
    assert parsed is not None
    assert (parsed.source, parsed.destination) == addresses
    assert parsed.length == len(header)
    assert parsed.version == (1 if build is build_v1 else 2)


def test_v1_known_line() -> None:
    line = b"PROXY TCP4 192.0.2.10 198.51.100.1 50123 995\r\n"
    assert build_v1(*V4) == line
    assert parse(line) == ProxyHeader(1, len(line), *V4)


def test_v2_known_bytes() -> None:
    expected = (
        V2_SIGNATURE
        + bytes([0x21, 0x11, 0x00, 0x0C])
        + bytes([192, 0, 2, 10, 198, 51, 100, 1])
        + struct.pack("!HH", 50123, 995)
    )
    assert build_v2(*V4) == expected


def test_local_and_unknown_carry_no_address() -> None:
    assert parse(build_v1(None, None)) == ProxyHeader(1, 15)
    assert parse(build_v2(None, None)) == ProxyHeader(2, 16)


def test_v2_tlvs_are_skipped() -> None:
    header = build_v2(*V4)
    tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP
    length = struct.unpack("!H", header[14:16])[0] + len(tlv)
    with_tlv = header[:14] + struct.pack("!H", length) + header[16:] + tlv
    parsed = parse(with_tlv + b"rest")
    assert parsed is not None and parsed.length == len(with_tlv)
    assert parsed.source == V4[0]


def test_mapped_ipv6_becomes_ipv4_and_mixed_families_agree() -> None:
    line = build_v1(("::ffff:192.0.2.10", 1), ("2001:db8::1", 110))
    assert line == b"PROXY TCP4 192.0.2.10 0.0.0.0 1 110\r\n"


@pytest.mark.parametrize(
    "prefix",
    [b"", b"PRO", b"PROXY TCP4 192.0.2.10", V2_SIGNATURE[:5], build_v2(*V4)[:20]],
    ids=["empty", "v1-word", "v1-partial", "v2-signature", "v2-partial"],
)
def test_incomplete_header_needs_more(prefix) -> None:
    assert parse(prefix) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"USER alice\r\n", "no_signature"),
        (b"\x16\x03\x01\x02\x00", "no_signature"),  # a TLS ClientHello
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "v1_malformed"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 70000\r\n", "v1_bad_port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "v1_bad_port"),
        (b"PROXY TCP4 ::1 ::1 1 2\r\n", "v1_bad_address"),
        (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "v1_bad_address"),
        (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "v1_malformed"),
        (b"PROXY TCP4 1.2.3.4\n", "v1_malformed"),
        (b"PROXY " + b"A" * 200, "v1_too_long"),
        (V2_SIGNATURE + b"\x11\x11\x00\x0c", "v2_bad_version"),
        (V2_SIGNATURE + b"\x2f\x11\x00\x0c", "v2_bad_command"),
        (V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4, "v2_short_address"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "v2_too_long"),
    ],
)
def test_malformed_headers_are_refused(data, reason) -> None:
    with pytest.raises(ProxyProtocolError) as error:
        parse(data)
    assert error.value.reason == reason


def read_all(stream: bytes) -> tuple[ProxyHeader, bytes]:
    """Drive HeaderReader like the shell does, with a stream as the socket."""
    reader = HeaderReader()
    position = 0
    while True:
        want = reader.wanted()
        assert want > 0
        chunk = stream[position : position + want]
        assert chunk, "the reader asked for bytes beyond the stream"
        position += len(chunk)
        header = reader.feed(chunk)
        if header is not None:
            return header, stream[position:]


@pytest.mark.parametrize(
    "header",
    [build_v1(*V4), build_v1(*V6), build_v1(None, None), build_v2(*V4), build_v2(None, None)],
)
def test_reader_never_reads_past_the_header(header) -> None:
    after = b"\x16\x03\x01 client hello"
    parsed, rest = read_all(header + after)
    assert parsed.length == len(header)
    assert rest == after


addresses = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.integers(0, 65535), st.ip_addresses(v=4)),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 65535), st.ip_addresses(v=6)),
)


@given(addresses, st.integers(0, 65535), st.sampled_from([build_v1, build_v2]))
def test_any_address_round_trips(address, destination_port, build) -> None:
    source_ip, source_port, destination_ip = address
    source, destination = (str(source_ip), source_port), (str(destination_ip), destination_port)
    if source_ip.version == 6 and source_ip.ipv4_mapped is not None:
        return  # sent as IPv4 on purpose; covered above
    parsed = parse(build(source, destination))
    assert parsed is not None and parsed.source == source


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_fuzz_any_bytes(data: bytes) -> None:
    try:
        result = parse(data)
    except ProxyProtocolError:
        return
    assert result is None or 0 < result.length <= len(data)


prefixes = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", b"PROXY TCP6 ", V2_SIGNATURE])


@settings(max_examples=500)
@given(prefixes, st.binary(max_size=200), st.lists(st.integers(1, 40), max_size=20))
def test_fuzz_near_valid_input_in_chunks(prefix: bytes, tail: bytes, sizes: list[int]) -> None:
    """Header-looking input fed in arbitrary chunks: same three outcomes."""
    data = prefix + tail
    reader = HeaderReader()
    position = 0
    for size in [*sizes, len(data)]:
        chunk = data[position : position + min(size, reader.wanted())]
        position += len(chunk)
        try:
            header = reader.feed(chunk)
        except ProxyProtocolError:
            return
        if header is not None:
            assert header.length == position
            return


# -- nothing but an address comes out, nothing but an address goes in -------------

PLAIN_ADDRESS_CHARACTERS = set("0123456789abcdef:.")


def assert_plain(header: ProxyHeader) -> None:
    for address in (header.source, header.destination):
        assert address is not None
        assert set(address[0]) <= PLAIN_ADDRESS_CHARACTERS, address


@pytest.mark.parametrize(
    "source",
    [
        b"fe80::1%a\nXCLIENT",  # a second line for XCLIENT or a v1 header to a backend
        b"fe80::1%a\nQUIT",
        b"fe80::1%eth0",  # even a plausible zone id: it names the balancer's interface
        b"fe80::1%25",
        b"fe80::1%\x00",
        b"fe80::1%\xff",
        b"::ffff:192.0.2.1%1",
    ],
)
def test_v1_address_with_a_zone_id_is_refused(source: bytes) -> None:
    line = b"PROXY TCP6 " + source + b" 2001:db8::1 50123 110\r\n"
    with pytest.raises(ProxyProtocolError) as error:
        parse(line)
    assert error.value.reason in ("v1_bad_address", "v1_malformed")


@settings(max_examples=300)
@given(st.text(st.characters(blacklist_characters="\r\n "), min_size=1, max_size=30))
def test_v1_never_yields_a_zone_whatever_it_holds(zone: str) -> None:
    line = f"PROXY TCP6 fe80::1%{zone} 2001:db8::1 1 2\r\n".encode("utf-8", "surrogatepass")
    try:
        header = parse(line)
    except ProxyProtocolError:
        return
    assert header is not None
    assert_plain(header)


@pytest.mark.parametrize("build", [build_v1, build_v2])
def test_a_zone_id_never_reaches_a_header_sent_to_a_backend(build) -> None:
    """A socket's peer may carry one (a link-local client); the header sent on
    carries the address alone, one line for v1."""
    header = build(("fe80::1%a\nQUIT", 50123), ("fe80::2%eth0", 110))
    parsed = parse(header)
    assert parsed is not None and parsed.length == len(header)
    assert parsed.source == ("fe80::1", 50123)
    assert_plain(parsed)
    if build is build_v1:
        assert header.count(b"\n") == 1 and header.endswith(b"\r\n")


@pytest.mark.parametrize("build", [build_v1, build_v2])
def test_text_that_is_not_an_address_is_never_sent(build) -> None:
    with pytest.raises(ValueError):
        build(("192.0.2.1 PROXY", 1), ("192.0.2.2", 2))


@settings(max_examples=300)
@given(st.binary(min_size=36, max_size=36))
def test_v2_addresses_are_plain(block: bytes) -> None:
    header = V2_SIGNATURE + bytes([0x21, 0x21, 0x00, 36]) + block
    parsed = parse(header)
    assert parsed is not None
    assert_plain(parsed)
