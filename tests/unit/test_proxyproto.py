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


# -- the bounds of the specification ----------------------------------------


def test_the_longest_v1_line_is_107_octets() -> None:
    """Section 2.1: a v1 header never passes 107 octets, CRLF included, so the
    receiver stops looking for its end there. UNKNOWN may carry anything up to
    the CRLF, which the receiver ignores: the padding reaches the limit."""
    at_limit = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(at_limit) == 107
    assert parse(at_limit + b"+OK") == ProxyHeader(1, 107)
    one_over = at_limit[:-2] + b"x\r\n"
    with pytest.raises(ProxyProtocolError) as error:
        parse(one_over)
    assert error.value.reason == "v1_too_long"


def test_v1_without_its_end_is_refused_once_107_octets_are_in() -> None:
    """Octet 107 without a CRLF before it: no ending can make the line valid."""
    start = b"PROXY UNKNOWN " + b"x" * (106 - 14)
    assert parse(start[:106]) is None  # a CRLF may still end it at 107
    with pytest.raises(ProxyProtocolError) as error:
        parse(start + b"x")
    assert error.value.reason == "v1_too_long"


def test_the_end_of_v1_is_its_first_crlf() -> None:
    """The client's own first line follows the header in the same read."""
    header = build_v1(*V4)
    assert parse(header + b"CAPA\r\n") == ProxyHeader(1, len(header), *V4)
    assert parse(b"PROXY UNKNOWN\r\nUSER alice\r\n") == ProxyHeader(1, 15)


def test_a_v1_line_followed_by_a_tls_client_hello() -> None:
    """On an implicit-TLS listener the handshake follows the header at once."""
    header = build_v1(*V6)
    hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32))
    assert parse(header + hello) == ProxyHeader(1, len(header), *V6)
    parsed, rest = read_all(header + hello)
    assert parsed.length == len(header)
    assert rest == hello


@pytest.mark.parametrize(
    ("source_port", "destination_port", "reason"),
    [
        ("65535", "0", None),
        ("65536", "110", "v1_bad_port"),
        ("110", "65536", "v1_bad_port"),
        ("99999", "110", "v1_bad_port"),
        ("123456", "110", "v1_bad_port"),
        ("+80", "110", "v1_bad_port"),
        ("-1", "110", "v1_bad_port"),
        ("80", "", "v1_bad_port"),
        ("0x50", "110", "v1_bad_port"),
        ("00", "110", "v1_bad_port"),
    ],
)
def test_v1_ports_are_decimal_without_sign_or_leading_zero(
    source_port: str, destination_port: str, reason: str | None
) -> None:
    line = f"PROXY TCP4 192.0.2.10 198.51.100.1 {source_port} {destination_port}\r\n".encode()
    if reason is None:
        header = parse(line)
        assert header is not None and header.source == ("192.0.2.10", int(source_port))
        return
    with pytest.raises(ProxyProtocolError) as error:
        parse(line)
    assert error.value.reason == reason


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4  192.0.2.10 198.51.100.1 1 2\r\n",  # two spaces
        b"PROXY TCP4 192.0.2.10\t198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2 \r\n",  # a trailing space
        b"PROXY tcp4 192.0.2.10 198.51.100.1 1 2\r\n",
        b"PROXY TCP4 192.0.2.\xff 198.51.100.1 1 2\r\n",  # not ASCII
    ],
)
def test_v1_fields_are_separated_by_exactly_one_space(line: bytes) -> None:
    with pytest.raises(ProxyProtocolError) as error:
        parse(line)
    assert error.value.reason == "v1_malformed"
    assert str(error.value) == "v1_malformed"


@pytest.mark.parametrize("partial", [b"PROXY TCP4 \x00", b"PROXY TCP4 1.2.3.4\n"])
def test_v1_that_cannot_become_a_line_is_refused_before_its_end(partial: bytes) -> None:
    with pytest.raises(ProxyProtocolError) as error:
        parse(partial)
    assert error.value.reason == "v1_malformed"


def test_v2_header_of_4096_octets_is_the_largest_accepted() -> None:
    header = build_v2(*V4)
    padding = 4096 - len(header) - 3  # one NOOP TLV: type, two length octets, value
    tlv = b"\x04" + struct.pack("!H", padding) + b"\x00" * padding
    length = struct.unpack("!H", header[14:16])[0] + len(tlv)
    largest = header[:14] + struct.pack("!H", length) + header[16:] + tlv
    assert len(largest) == 4096
    parsed = parse(largest)
    assert parsed is not None and parsed.length == 4096 and parsed.source == V4[0]
    one_over = largest[:14] + struct.pack("!H", length + 1) + largest[16:] + b"\x00"
    with pytest.raises(ProxyProtocolError) as error:
        parse(one_over[:16])  # refused on its fixed part, before it is buffered
    assert error.value.reason == "v2_too_long"


@pytest.mark.parametrize(
    ("family", "length"),
    [(0x00, 0), (0x12, 12), (0x22, 36), (0x31, 216), (0x32, 216)],
    ids=["unspec", "udp4", "udp6", "unix-stream", "unix-dgram"],
)
def test_v2_families_without_a_tcp_address_give_no_source(family: int, length: int) -> None:
    """Section 2.2: addresses of a family the receiver cannot use are skipped,
    and the connection's own peer stands."""
    header = V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", length) + b"\x01" * length
    assert parse(header + b"rest") == ProxyHeader(2, 16 + length)


def test_v2_local_is_the_command_without_a_family() -> None:
    assert build_v2(None, None) == V2_SIGNATURE + b"\x20\x00\x00\x00"


@pytest.mark.parametrize("build", [build_v1, build_v2])
def test_a_header_needs_both_addresses(build) -> None:
    """TCP4 and TCP6 headers carry both ends; with one missing, UNKNOWN or LOCAL."""
    assert build(V4[0], None) == build(None, None)
    assert build(None, V4[1]) == build(None, None)


def test_a_destination_of_the_other_family_becomes_unspecified() -> None:
    assert build_v1(V6[0], V4[1]) == b"PROXY TCP6 2001:db8::10 :: 50123 995\r\n"
    assert build_v1(V4[0], V6[1]) == b"PROXY TCP4 192.0.2.10 0.0.0.0 50123 110\r\n"


# -- reading a header in short reads ------------------------------------------


def test_short_reads_inside_the_first_15_octets() -> None:
    reader = HeaderReader()
    assert reader.wanted() == 15
    assert reader.feed(b"PROXY") is None
    assert reader.wanted() == 10
    assert reader.feed(b" UNKNOWN\r") is None
    assert reader.wanted() == 1
    assert reader.feed(b"\n") == ProxyHeader(1, 15)


def test_short_reads_inside_a_v2_header() -> None:
    header = build_v2(*V4)  # 16 fixed octets and 12 of addresses
    reader = HeaderReader()
    assert reader.feed(header[:15]) is None
    assert reader.wanted() == 1  # the rest of the fixed part, where the length is
    assert reader.feed(header[15:16]) is None
    assert reader.wanted() == 12
    assert reader.feed(header[16:20]) is None
    assert reader.wanted() == 8
    assert reader.feed(header[20:27]) is None
    assert reader.wanted() == 1
    assert reader.feed(header[27:]) == ProxyHeader(2, 28, *V4)


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
