"""The token mechanisms, OAUTHBEARER (RFC 7628) and XOAUTH2: their parsers in
:mod:`pop3proxy.protocol.sasl`, and the exchange in the client core, byte
for byte (clients act on exactly these lines)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pop3proxy.protocol import sasl
from pop3proxy.protocol.client import (
    MAX_AUTH_LINE,
    ClientConnection,
    Close,
    Login,
    Send,
    Settings,
    State,
)

TOKENS = Settings(
    tls_active=True, stls_offered=False, mechanisms=("PLAIN", "OAUTHBEARER", "XOAUTH2")
)
PLAIN_ONLY = Settings(tls_active=True, stls_offered=False)
TOKEN = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln-_"


def oauthbearer(user: bytes, token: bytes = TOKEN) -> bytes:
    """As curl and Thunderbird send it (host and port pairs included)."""
    return (
        b"n,a="
        + user
        + b",\x01host=pop.acme.example\x01port=995\x01auth=Bearer "
        + token
        + b"\x01\x01"
    )


def xoauth2(user: bytes, token: bytes = TOKEN) -> bytes:
    return b"user=" + user + b"\x01auth=Bearer " + token + b"\x01\x01"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def sent(actions: list) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Send))


# -- the parsers --------------------------------------------------------------


def test_oauthbearer_gives_the_authzid_and_the_token() -> None:
    said = sasl.parse_oauthbearer(oauthbearer(b"alice@acme.example"))
    assert said.user == b"alice@acme.example"
    assert said.token == TOKEN


def test_oauthbearer_unescapes_the_saslname() -> None:
    said = sasl.parse_oauthbearer(b"n,a=a=2Cb=3Dc@x,\x01auth=Bearer t\x01\x01")
    assert said.user == b"a,b=c@x"


def test_bearer_scheme_is_case_insensitive_and_host_port_are_ignored() -> None:
    said = sasl.parse_oauthbearer(b"y,a=bob@x,\x01auth=bEaReR tok\x01host=h\x01\x01")
    assert (said.user, said.token) == (b"bob@x", b"tok")


def test_xoauth2_gives_the_user_and_the_token() -> None:
    said = sasl.parse_xoauth2(xoauth2(b"bob@acme.example"))
    assert (said.user, said.token) == (b"bob@acme.example", TOKEN)


NO_PAIRS = "expected a GS2 header and key-value pairs"
BAD_HEADER = "malformed GS2 header"
NO_A = "the GS2 header must name the user (a=)"
NO_END = "the key-value pairs must end with ^A"
NO_FINAL = "the key-value pairs must end with ^A^A"
BAD_PAIR = "malformed key-value pair"
NO_BEARER = "expected auth=Bearer <token>"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"", NO_PAIRS),
        (b"n,a=alice,", NO_PAIRS),
        (b"n,,\x01auth=Bearer t\x01\x01", NO_A),  # no authzid: the tenant is unknown
        (b"n,a,\x01auth=Bearer t\x01\x01", NO_A),
        (b"n,a=,\x01auth=Bearer t\x01\x01", NO_A),
        (b"p=tls-unique,a=alice,\x01auth=Bearer t\x01\x01", "channel binding is not supported"),
        (b"n,a=alice\x01auth=Bearer t\x01\x01", BAD_HEADER),  # no last comma
        (b"n,a=alice,x\x01auth=Bearer t\x01\x01", BAD_HEADER),
        (b"n,a=alice,,\x01auth=Bearer t\x01\x01", BAD_HEADER),
        (b"n,a=alice,\x01auth=Bearer t\x01", NO_FINAL),
        (b"n,a=alice,\x01auth=Bearer t", NO_END),
        (b"n,a=alice,\x01auth=Basic dXNlcjpwdw==\x01\x01", NO_BEARER),
        (b"n,a=alice,\x01auth=Bearer \x01\x01", NO_BEARER),
        (b"n,a=alice,\x01auth=Bearer a b\x01\x01", NO_BEARER),
        (b"n,a=alice,\x01host=h\x01\x01", NO_BEARER),
        (b"n,a=alice,\x01auth=Bearer t\x01auth=Bearer u\x01\x01", BAD_PAIR),  # twice
        (b"n,a=alice,\x01=x\x01\x01", BAD_PAIR),
        (b"n,a=alice,\x01a1=x\x01\x01", BAD_PAIR),
        (b"n,a=al=2Xice,\x01auth=Bearer t\x01\x01", "malformed user name in the GS2 header"),
        (b"n,a=alice,\x01noequals\x01\x01", BAD_PAIR),
    ],
)
def test_malformed_oauthbearer_is_refused(response: bytes, message: str) -> None:
    with pytest.raises(sasl.MalformedResponse) as refused:
        sasl.parse_oauthbearer(response)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"", NO_END),
        (b"auth=Bearer t\x01\x01", "expected user="),
        (b"user=\x01auth=Bearer t\x01\x01", "expected user="),
        (b"user=a\x01auth=Bearer t\x01", NO_FINAL),
        (b"user=a\x01\x01", NO_BEARER),
    ],
)
def test_malformed_xoauth2_is_refused(response: bytes, message: str) -> None:
    with pytest.raises(sasl.MalformedResponse) as refused:
        sasl.parse_xoauth2(response)
    assert str(refused.value) == message


def test_an_empty_pair_list_is_allowed_by_the_grammar_but_has_no_token() -> None:
    with pytest.raises(sasl.MalformedResponse, match="expected auth=Bearer"):
        sasl.parse_oauthbearer(b"n,a=alice,\x01\x01")


def test_the_token_never_shows_in_a_repr() -> None:
    said = sasl.parse_xoauth2(xoauth2(b"bob@x"))
    assert TOKEN.decode() not in repr(said)
    login = Login("bob@x", b"", "XOAUTH2", TOKEN)
    assert TOKEN.decode() not in repr(login)


names = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x01"), min_size=1
).map(lambda s: s.encode())
tokens = st.from_regex(rb"\A[A-Za-z0-9\-._~+/]+=*\Z")


@given(names, tokens)
def test_oauthbearer_round_trip(user: bytes, token: bytes) -> None:
    escaped = user.replace(b"=", b"=3D").replace(b",", b"=2C")
    said = sasl.parse_oauthbearer(oauthbearer(escaped, token))
    assert (said.user, said.token) == (user, token)


@given(names.filter(lambda u: b"\x01" not in u), tokens)
def test_xoauth2_round_trip(user: bytes, token: bytes) -> None:
    said = sasl.parse_xoauth2(xoauth2(user, token))
    assert (said.user, said.token) == (user, token)


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_refused_cleanly(data: bytes) -> None:
    for parse in (sasl.parse_oauthbearer, sasl.parse_xoauth2):
        try:
            said = parse(data)
        except sasl.MalformedResponse:
            continue
        assert said.token and said.user


# -- the exchange in the core --------------------------------------------------


def test_capa_lists_the_configured_mechanisms() -> None:
    capa = sent(ClientConnection(TOKENS).receive_data(b"CAPA\r\n"))
    assert b"\r\nSASL PLAIN OAUTHBEARER XOAUTH2\r\n" in capa
    capa = sent(ClientConnection(PLAIN_ONLY).receive_data(b"CAPA\r\n"))
    assert b"\r\nSASL PLAIN\r\n" in capa
    listing = sent(ClientConnection(TOKENS).receive_data(b"AUTH\r\n"))
    assert listing == b"+OK Mechanisms follow\r\nPLAIN\r\nOAUTHBEARER\r\nXOAUTH2\r\n.\r\n"


def test_a_mechanism_not_configured_is_refused() -> None:
    conn = ClientConnection(PLAIN_ONLY)
    reply = sent(conn.receive_data(b"AUTH XOAUTH2 " + b64(xoauth2(b"a@x")) + b"\r\n"))
    assert reply == b"-ERR Unsupported mechanism; use PLAIN\r\n"
    only_tokens = Settings(tls_active=True, stls_offered=False, mechanisms=("XOAUTH2",))
    reply = sent(ClientConnection(only_tokens).receive_data(b"AUTH PLAIN AGFAYg==\r\n"))
    assert reply == b"-ERR Unsupported mechanism; use XOAUTH2\r\n"


@pytest.mark.parametrize(
    ("mechanism", "build"), [(b"OAUTHBEARER", oauthbearer), (b"XOAUTH2", xoauth2)]
)
def test_initial_response_asks_for_a_token_login(mechanism: bytes, build) -> None:
    conn = ClientConnection(TOKENS)
    actions = conn.receive_data(
        b"AUTH " + mechanism.lower() + b" " + b64(build(b"alice@acme.example")) + b"\r\n"
    )
    assert actions == [Login("alice@acme.example", b"", mechanism.decode(), TOKEN)]
    assert conn.state is State.LOGIN_PENDING


@pytest.mark.parametrize(
    ("mechanism", "build"), [(b"OAUTHBEARER", oauthbearer), (b"XOAUTH2", xoauth2)]
)
def test_two_line_form_asks_for_a_token_login(mechanism: bytes, build) -> None:
    conn = ClientConnection(TOKENS)
    assert sent(conn.receive_data(b"AUTH " + mechanism + b"\r\n")) == b"+ \r\n"
    actions = conn.receive_data(b64(build(b"alice@acme.example")) + b"\r\n")
    assert actions == [Login("alice@acme.example", b"", mechanism.decode(), TOKEN)]


def test_refused_token_follows_rfc_7628_byte_for_byte() -> None:
    conn = ClientConnection(TOKENS)
    conn.receive_data(b"AUTH OAUTHBEARER " + b64(oauthbearer(b"a@x")) + b"\r\n")
    challenge = b"eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0="
    failure = b"-ERR [AUTH] Authentication failed\r\n"
    assert sent(conn.login_failed(failure, challenge)) == b"+ " + challenge + b"\r\n"
    assert conn.state is State.AUTH_ERROR_ACK
    assert sent(conn.receive_data(b"AQ==\r\n")) == failure
    assert conn.state is State.AUTHORIZATION
    assert sent(conn.receive_data(b"NOOP\r\n")) == b"+OK\r\n"


def test_the_error_ack_may_be_anything_and_comes_pipelined() -> None:
    conn = ClientConnection(TOKENS)
    conn.receive_data(b"AUTH XOAUTH2 " + b64(xoauth2(b"a@x")) + b"\r\n*\r\nNOOP\r\n")
    out = sent(conn.login_failed(b"-ERR [AUTH] no\r\n", b"e30="))
    assert out == b"+ e30=\r\n-ERR [AUTH] no\r\n+OK\r\n"


def test_refusal_without_challenge_is_a_plain_err() -> None:
    conn = ClientConnection(TOKENS)
    conn.receive_data(b"AUTH XOAUTH2 " + b64(xoauth2(b"a@x")) + b"\r\n")
    assert sent(conn.login_failed(b"-ERR [SYS/TEMP] later\r\n")) == b"-ERR [SYS/TEMP] later\r\n"
    assert conn.state is State.AUTHORIZATION


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"AUTH XOAUTH2 !!!\r\n", b"-ERR Invalid base64 in AUTH XOAUTH2 response\r\n"),
        (
            b"AUTH XOAUTH2 " + b64(b"user=a\x01\x01") + b"\r\n",
            b"-ERR [AUTH] Malformed AUTH XOAUTH2 response: expected auth=Bearer <token>\r\n",
        ),
        (
            b"AUTH OAUTHBEARER " + b64(b"n,,\x01auth=Bearer t\x01\x01") + b"\r\n",
            b"-ERR [AUTH] Malformed AUTH OAUTHBEARER response: "
            b"the GS2 header must name the user (a=)\r\n",
        ),
        (
            b"AUTH XOAUTH2 " + b64(xoauth2(b"a b")) + b"\r\n",
            b"-ERR [AUTH] Malformed AUTH XOAUTH2 response\r\n",
        ),
        (
            b"AUTH XOAUTH2 " + b64(xoauth2(b"\xff")) + b"\r\n",
            b"-ERR [AUTH] User name must be UTF-8\r\n",
        ),
    ],
)
def test_malformed_token_responses_get_a_clear_err(line: bytes, reply: bytes) -> None:
    conn = ClientConnection(TOKENS)
    assert sent(conn.receive_data(line)) == reply
    assert conn.state is State.AUTHORIZATION


def test_a_cancelled_token_exchange() -> None:
    conn = ClientConnection(TOKENS)
    conn.receive_data(b"AUTH XOAUTH2\r\n")
    assert sent(conn.receive_data(b"*\r\n")) == b"-ERR Authentication cancelled\r\n"


def test_auth_lines_may_be_16_kib_other_lines_keep_max_line() -> None:
    token = b"A" * ((MAX_AUTH_LINE - 2 - len(b"AUTH XOAUTH2 ")) * 3 // 4 - 40)
    line = b"AUTH XOAUTH2 " + b64(xoauth2(b"a@x", token)) + b"\r\n"
    assert len(line) <= MAX_AUTH_LINE
    conn = ClientConnection(TOKENS)
    assert conn.receive_data(line) == [Login("a@x", b"", "XOAUTH2", token)]
    conn = ClientConnection(TOKENS)
    assert sent(conn.receive_data(b"NOOP " + b"x" * TOKENS.max_line + b"\r\nNOOP\r\n")) == (
        b"-ERR Line too long\r\n+OK\r\n"
    )


def test_a_continuation_line_over_16_kib_is_refused_and_the_session_goes_on() -> None:
    conn = ClientConnection(TOKENS)
    conn.receive_data(b"AUTH XOAUTH2\r\n")
    out = sent(conn.receive_data(b"A" * (1024 * 1024) + b"\r\nNOOP\r\n"))
    assert out == b"-ERR Line too long\r\n+OK\r\n"
    assert conn._reader.buffered == 0


def test_without_token_mechanisms_auth_lines_keep_max_line() -> None:
    small = Settings(tls_active=True, stls_offered=False, max_line=64)
    conn = ClientConnection(small)
    out = sent(conn.receive_data(b"AUTH PLAIN " + b"A" * 100 + b"\r\n"))
    assert out == b"-ERR Line too long\r\n"


def test_after_login_the_relay_keeps_max_line() -> None:
    conn = ClientConnection(TOKENS)
    conn.receive_data(b"AUTH XOAUTH2 " + b64(xoauth2(b"a@x")) + b"\r\n")
    conn.login_succeeded()
    assert conn._reader.max_line == TOKENS.max_line


def test_too_many_refused_tokens_close_the_connection() -> None:
    settings = Settings(tls_active=True, stls_offered=False, mechanisms=("XOAUTH2",), max_errors=2)
    conn = ClientConnection(settings)
    for _ in range(2):
        conn.receive_data(b"AUTH XOAUTH2 " + b64(xoauth2(b"a@x")) + b"\r\n")
        conn.login_failed(b"-ERR [AUTH] no\r\n", b"e30=")
        actions = conn.receive_data(b"AQ==\r\n")
    assert isinstance(actions[-1], Close)
    assert conn.state is State.CLOSED


def test_the_refusal_lists_every_offered_mechanism() -> None:
    two = Settings(tls_active=True, stls_offered=False, mechanisms=("PLAIN", "XOAUTH2"))
    reply = sent(ClientConnection(two).receive_data(b"AUTH CRAM-MD5\r\n"))
    assert reply == b"-ERR Unsupported mechanism; use PLAIN or XOAUTH2\r\n"
    reply = sent(ClientConnection(two).receive_data(b"AUTH \xff\xfe\r\n"))
    assert reply == b"-ERR Unsupported mechanism; use PLAIN or XOAUTH2\r\n"


def test_with_tokens_on_a_non_auth_line_keeps_max_line_to_the_octet() -> None:
    small = Settings(tls_active=True, stls_offered=False, max_line=64, mechanisms=("XOAUTH2",))
    at_cap = b"NOOP " + b"x" * (64 - 7) + b"\r\n"
    assert len(at_cap) == 64
    assert sent(ClientConnection(small).receive_data(at_cap)) == b"+OK\r\n"
    over = b"NOOP " + b"x" * (64 - 6) + b"\r\n"
    assert sent(ClientConnection(small).receive_data(over)) == b"-ERR Line too long\r\n"
