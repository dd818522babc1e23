"""ClientConnection at its edges: the exact replies, control bytes where a
line starts, the line cap to the octet, errors pipelined behind good commands.

The client sees every reply the proxy writes itself, word for word (mail
clients show the text of an -ERR to the user, and act on its response code),
so the table below pins each one: a change of wording is a deliberate edit
here, not a side effect of reworking the parser.
"""

from __future__ import annotations

import base64

import pytest

from pop3proxy.protocol.client import (
    BAD_LINE_SUBSTITUTE,
    TOO_LONG_SUBSTITUTE,
    ClientConnection,
    Close,
    Forward,
    Login,
    Send,
    Settings,
    State,
)

TLS = Settings(tls_active=True, stls_offered=False)
STARTTLS = Settings(tls_active=False, stls_offered=True, require_tls=True)
PLAINTEXT = Settings(tls_active=False, stls_offered=False, require_tls=False)
SMALL = Settings(tls_active=True, stls_offered=False, max_line=64)


def plain(authzid: bytes, authcid: bytes, password: bytes) -> bytes:
    return base64.b64encode(authzid + b"\x00" + authcid + b"\x00" + password)


def replies_to(settings: Settings, data: bytes) -> list[bytes]:
    actions = ClientConnection(settings).receive_data(data)
    return b"".join(a.data for a in actions if isinstance(a, Send)).split(b"\r\n")[:-1]


def logged_in(settings: Settings = TLS) -> ClientConnection:
    conn = ClientConnection(settings)
    assert conn.receive_data(b"USER alice\r\nPASS pw\r\n")[-1] == Login("alice", b"pw")
    conn.login_succeeded()
    return conn


MALFORMED = b"-ERR [AUTH] Malformed AUTH PLAIN response"

EVERY_REPLY = [
    (TLS, b"NOOP\r\n", [b"+OK"]),
    (TLS, b"QUIT\r\n", [b"+OK Bye"]),
    (TLS, b"XYZZY\r\n", [b"-ERR Unknown command"]),
    (TLS, b"RETR 1\r\n", [b"-ERR RETR is not allowed before login"]),
    (TLS, b"NO\x00OP\r\n", [b"-ERR NUL and CR are not allowed in a command"]),
    (SMALL, b"NOOP " + b"x" * 64 + b"\r\n", [b"-ERR Line too long"]),
    (
        TLS,
        b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n",
        [b"-ERR APOP is not supported by this proxy; use USER/PASS or AUTH PLAIN"],
    ),
    # STLS (RFC 2595 section 4)
    (STARTTLS, b"STLS\r\n", [b"+OK Begin TLS negotiation"]),
    (TLS, b"STLS\r\n", [b"-ERR Already using TLS"]),
    (PLAINTEXT, b"STLS\r\n", [b"-ERR STLS is not available here"]),
    (STARTTLS, b"USER alice\r\n", [b"-ERR Plaintext authentication is disabled: use STLS first"]),
    (STARTTLS, b"PASS pw\r\n", [b"-ERR Plaintext authentication is disabled: use STLS first"]),
    (STARTTLS, b"AUTH PLAIN\r\n", [b"-ERR Plaintext authentication is disabled: use STLS first"]),
    # USER and PASS (RFC 1939 section 7)
    (TLS, b"USER alice\r\n", [b"+OK Send PASS"]),
    (TLS, b"USER\r\n", [b"-ERR USER needs a name"]),
    (TLS, b"USER \xff\xfe\r\n", [b"-ERR User name must be UTF-8"]),
    (TLS, b"PASS pw\r\n", [b"-ERR Send USER first"]),
    (TLS, b"USER alice\r\nPASS\r\n", [b"+OK Send PASS", b"-ERR PASS needs a password"]),
    # AUTH PLAIN (RFC 5034, RFC 4616); credential failures carry [AUTH] (RFC 3206)
    (TLS, b"AUTH\r\n", [b"+OK Mechanisms follow", b"PLAIN", b"."]),
    (TLS, b"AUTH CRAM-MD5\r\n", [b"-ERR Unsupported mechanism; use PLAIN"]),
    (TLS, b"AUTH PLAIN\r\n", [b"+ "]),
    (TLS, b"AUTH PLAIN\r\n*\r\n", [b"+ ", b"-ERR Authentication cancelled"]),
    (TLS, b"AUTH PLAIN not-base64!\r\n", [b"-ERR Invalid base64 in AUTH PLAIN response"]),
    (TLS, b"AUTH PLAIN =\r\n", [MALFORMED]),
    (TLS, b"AUTH PLAIN\r\n=\r\n", [b"+ ", MALFORMED]),
    (TLS, b"AUTH PLAIN " + base64.b64encode(b"alice\x00pw") + b"\r\n", [MALFORMED]),
    (TLS, b"AUTH PLAIN " + plain(b"", b"al ice", b"pw") + b"\r\n", [MALFORMED]),
    (
        TLS,
        b"AUTH PLAIN " + plain(b"", b"\xff\xfe", b"pw") + b"\r\n",
        [b"-ERR [AUTH] User name must be UTF-8"],
    ),
    (
        TLS,
        b"AUTH PLAIN " + plain(b"admin", b"alice", b"pw") + b"\r\n",
        [b"-ERR [AUTH] Authorization identity not permitted"],
    ),
]


@pytest.mark.parametrize(("settings", "data", "expected"), EVERY_REPLY)
def test_every_reply_the_proxy_writes_itself(
    settings: Settings, data: bytes, expected: list[bytes]
) -> None:
    assert replies_to(settings, data) == expected


@pytest.mark.parametrize(
    ("settings", "capabilities"),
    [
        (TLS, [b"USER", b"SASL PLAIN"]),
        (STARTTLS, [b"STLS"]),
        (
            Settings(tls_active=False, stls_offered=True, require_tls=False),
            [b"USER", b"SASL PLAIN", b"STLS"],
        ),
    ],
    ids=["tls", "before-stls", "stls-optional"],
)
def test_capa_is_the_whole_list_in_its_order(settings: Settings, capabilities: list[bytes]) -> None:
    """RFC 2449 section 5; TOP and UIDL are the optional commands every backend
    worth proxying has, and the proxy forwards them."""
    assert replies_to(settings, b"CAPA\r\n") == [
        b"+OK Capability list follows",
        b"TOP",
        b"UIDL",
        b"RESP-CODES",
        b"AUTH-RESP-CODE",
        b"PIPELINING",
        *capabilities,
        b"IMPLEMENTATION pop3proxy",
        b".",
    ]


def test_the_last_error_of_the_budget_says_goodbye_and_why() -> None:
    conn = ClientConnection(Settings(tls_active=True, stls_offered=False, max_errors=1))
    assert conn.receive_data(b"XYZZY\r\nNOOP\r\n") == [
        Send(b"-ERR Unknown command\r\n"),
        Send(b"-ERR Too many errors, closing connection\r\n"),
        Close("too_many_errors"),
    ]
    assert conn.state is State.CLOSED


def test_stls_and_quit_move_the_state() -> None:
    conn = ClientConnection(STARTTLS)
    conn.receive_data(b"STLS\r\n")
    assert conn.state is State.TLS_PENDING
    conn.tls_established()
    assert conn.state is State.AUTHORIZATION
    conn.receive_data(b"QUIT\r\n")
    assert conn.state is State.CLOSED


# -- control bytes at the start of a line and inside a password -------------------


@pytest.mark.parametrize("control", [b"\x00", b"\r"])
def test_nul_or_cr_that_starts_a_command_is_refused(control: bytes) -> None:
    assert replies_to(TLS, control + b"NOOP\r\nNOOP\r\n") == [
        b"-ERR NUL and CR are not allowed in a command",
        b"+OK",
    ]


def test_a_lone_lf_that_starts_a_line_ends_an_empty_one() -> None:
    assert replies_to(TLS, b"\nNOOP\r\n") == [b"-ERR Unknown command", b"+OK"]


@pytest.mark.parametrize(
    "password",
    [b"\rpw", b"p\rw", b"pw\r", b"\npw", b"p\nw", b"pw\n", b"p\r\nw"],
    ids=["cr-first", "cr", "cr-last", "lf-first", "lf", "lf-last", "crlf"],
)
@pytest.mark.parametrize("via_continuation", [False, True])
def test_auth_plain_password_with_a_line_end_is_refused(
    password: bytes, via_continuation: bool
) -> None:
    """A CR or an LF alone would end the PASS line the backend login sends."""
    response = plain(b"", b"alice", password)
    data = b"AUTH PLAIN\r\n" + response if via_continuation else b"AUTH PLAIN " + response
    conn = ClientConnection(TLS)
    actions = conn.receive_data(data + b"\r\n")
    assert actions[-1] == Send(MALFORMED + b"\r\n")
    assert not any(isinstance(a, Login) for a in actions)
    assert conn.state is State.AUTHORIZATION


@pytest.mark.parametrize("password", [b"\x00pw", b"p\x00w", b"pw\x00"])
def test_auth_plain_password_with_nul_is_refused(password: bytes) -> None:
    """RFC 4616: NUL separates the three fields, so it cannot be in one."""
    assert replies_to(TLS, b"AUTH PLAIN " + plain(b"", b"alice", password) + b"\r\n") == [MALFORMED]


@pytest.mark.parametrize(
    "response",
    [plain(b"", b"alice", b"pw")[:4] + b"!" + plain(b"", b"alice", b"pw")[4:], b"AGFs aWNlAHB3"],
    ids=["outside-the-alphabet", "inner-space"],
)
def test_auth_plain_response_is_strict_base64(response: bytes) -> None:
    """RFC 5034 section 4: a response that is not base64 is refused, not
    decoded around the bytes a lenient decoder would skip."""
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"AUTH PLAIN " + response + b"\r\n")
    assert actions == [Send(b"-ERR Invalid base64 in AUTH PLAIN response\r\n")]


@pytest.mark.parametrize("control", [b"\x00", b"\r"])
def test_transaction_line_starting_with_nul_or_cr_is_not_forwarded(control: bytes) -> None:
    line = control + b"QUIT\r\n"
    by_actions, fast = logged_in(), logged_in()
    assert by_actions.receive_data(line) == [Forward(BAD_LINE_SUBSTITUTE, "other")]
    commands: dict[str, int] = {}
    assert fast.relay_data(line, commands) == BAD_LINE_SUBSTITUTE
    assert commands == {"other": 1}
    assert not fast.client_sent_quit and not by_actions.client_sent_quit


@pytest.mark.parametrize("line", [b"STAT\x00\r\n", b"STAT\r\r\n"])
def test_transaction_nul_or_cr_just_before_the_crlf_is_not_forwarded(line: bytes) -> None:
    commands: dict[str, int] = {}
    assert logged_in().relay_data(line, commands) == BAD_LINE_SUBSTITUTE


def test_transaction_lone_lf_that_starts_a_line_reaches_the_backend_as_crlf() -> None:
    """The backend never sees a bare LF: each line goes on ending in CRLF."""
    conn = logged_in()
    commands: dict[str, int] = {}
    assert conn.relay_data(b"\nQUIT\r\n", commands) == b"\r\nQUIT\r\n"
    assert commands == {"other": 1, "QUIT": 1}
    assert conn.client_sent_quit


# -- the line cap, to the octet, on both paths -----------------------------------


@pytest.mark.parametrize("max_line", [64, Settings(tls_active=True, stls_offered=False).max_line])
def test_authorization_line_at_the_cap_is_a_command_one_more_is_too_long(max_line: int) -> None:
    settings = Settings(tls_active=True, stls_offered=False, max_line=max_line)
    at_cap = b"NOOP " + b"x" * (max_line - 7) + b"\r\n"
    assert len(at_cap) == max_line
    assert replies_to(settings, at_cap) == [b"+OK"]
    assert replies_to(settings, at_cap[:-2] + b"x\r\n") == [b"-ERR Line too long"]


@pytest.mark.parametrize("max_line", [64, Settings(tls_active=True, stls_offered=False).max_line])
def test_transaction_line_at_the_cap_is_forwarded_one_more_is_substituted(max_line: int) -> None:
    settings = Settings(tls_active=True, stls_offered=False, max_line=max_line)
    at_cap = b"RETR " + b"1" * (max_line - 7) + b"\r\n"
    over = at_cap[:-2] + b"1\r\n"
    assert len(at_cap) == max_line
    for line, forwarded, command in (
        (at_cap, at_cap, "RETR"),
        (over, TOO_LONG_SUBSTITUTE, "other"),
    ):
        assert logged_in(settings).receive_data(line) == [Forward(forwarded, command)]
        commands: dict[str, int] = {}
        assert logged_in(settings).relay_data(line, commands) == forwarded  # the fast path
        assert commands == {command: 1}


# -- an error pipelined behind a good command, in one read --------------------------


def test_authorization_error_behind_a_good_command_keeps_both_replies() -> None:
    data = b"NOOP\r\n" + b"x" * 100 + b"\r\nNOOP\r\n"
    assert replies_to(SMALL, data) == [b"+OK", b"-ERR Line too long", b"+OK"]


def test_transaction_bad_line_behind_a_good_command_keeps_both() -> None:
    conn = logged_in()
    commands: dict[str, int] = {}
    assert conn.relay_data(b"STAT\r\nRETR\x001\r\n", commands) == b"STAT\r\n" + BAD_LINE_SUBSTITUTE
    assert commands == {"STAT": 1, "other": 1}
