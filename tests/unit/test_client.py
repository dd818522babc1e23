"""ClientConnection: the sans-IO AUTHORIZATION machine and TRANSACTION forwarding."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3proxy.protocol import replies
from pop3proxy.protocol.client import (
    BAD_LINE_SUBSTITUTE,
    TOO_LONG_SUBSTITUTE,
    TRANSACTION_COMMANDS,
    Action,
    ClientConnection,
    Close,
    Forward,
    Login,
    Send,
    Settings,
    StartTLS,
    State,
)

TLS = Settings(tls_active=True, stls_offered=False)
"""An implicit-TLS listener."""
STARTTLS = Settings(tls_active=False, stls_offered=True, require_tls=True)
"""A port-110 listener that requires STLS before any login."""
PLAINTEXT = Settings(tls_active=False, stls_offered=False, require_tls=False)
"""Plaintext allowed (tls: none)."""


def sent(actions: list[object]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, Send))


def sent_lines(actions: list[object]) -> list[bytes]:
    return sent(actions).split(b"\r\n")[:-1]


def only_errors(actions: list[object]) -> bool:
    return all(isinstance(a, Send) and a.data.startswith(b"-ERR") for a in actions)


def plain(authzid: bytes, authcid: bytes, password: bytes) -> bytes:
    return base64.b64encode(authzid + b"\x00" + authcid + b"\x00" + password)


def logged_in(settings: Settings = TLS) -> ClientConnection:
    conn = ClientConnection(settings)
    assert conn.receive_data(b"USER alice\r\nPASS pw\r\n")[-1] == Login("alice", b"pw")
    conn.login_succeeded()
    assert conn.state is State.TRANSACTION
    return conn


# -- greeting and CAPA ---------------------------------------------------------


def test_greeting_is_one_ok_line() -> None:
    conn = ClientConnection(Settings(tls_active=True, stls_offered=False, greeting="Hi there"))
    assert conn.greeting() == [Send(b"+OK Hi there\r\n")]


def capa(settings: Settings) -> list[bytes]:
    conn = ClientConnection(settings)
    lines = sent_lines(conn.receive_data(b"CAPA\r\n"))
    assert lines[0].startswith(b"+OK")
    assert lines[-1] == b"."
    return lines[1:-1]


def test_capa_over_tls_offers_login_but_not_stls() -> None:
    caps = capa(TLS)
    assert b"USER" in caps
    assert b"SASL PLAIN" in caps
    assert b"STLS" not in caps
    assert b"PIPELINING" in caps
    assert b"RESP-CODES" in caps
    assert b"AUTH-RESP-CODE" in caps
    assert b"IMPLEMENTATION pop3proxy" in caps


def test_capa_before_stls_with_require_tls_hides_login_mechanisms() -> None:
    caps = capa(STARTTLS)
    assert b"STLS" in caps
    assert b"USER" not in caps
    assert not any(c.startswith(b"SASL") for c in caps)


def test_capa_before_stls_without_require_tls_offers_everything() -> None:
    caps = capa(Settings(tls_active=False, stls_offered=True, require_tls=False))
    assert {b"STLS", b"USER", b"SASL PLAIN"} <= set(caps)


def test_capa_plaintext_listener_never_offers_stls() -> None:
    caps = capa(PLAINTEXT)
    assert b"STLS" not in caps
    assert b"USER" in caps


def test_capa_after_stls_drops_stls_and_offers_login() -> None:
    conn = ClientConnection(STARTTLS)
    conn.receive_data(b"STLS\r\n")
    conn.tls_established()
    caps = sent_lines(conn.receive_data(b"CAPA\r\n"))[1:-1]
    assert b"STLS" not in caps
    assert b"USER" in caps
    assert b"SASL PLAIN" in caps


# -- USER / PASS -------------------------------------------------------------------


def test_user_pass_happy_path_gives_exact_credentials() -> None:
    conn = ClientConnection(TLS)
    assert sent(conn.receive_data(b"USER alice@acme.example\r\n")).startswith(b"+OK")
    password = b" spaced  pass\xff\xe9\x80 "
    actions = conn.receive_data(b"PASS " + password + b"\r\n")
    assert actions == [Login("alice@acme.example", password, "USER")]
    assert conn.state is State.LOGIN_PENDING


def test_password_may_be_sent_with_bare_lf() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"USER bob\nPASS pw\n")
    assert actions[-1] == Login("bob", b"pw", "USER")


def test_keywords_are_case_insensitive() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"user alice\r\nPass Secret\r\n")
    assert actions[-1] == Login("alice", b"Secret", "USER")


def test_pass_before_user_is_refused() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"PASS secret\r\n")
    assert only_errors(actions)
    assert conn.state is State.AUTHORIZATION


def test_pass_without_password_is_refused() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"USER alice\r\nPASS\r\n")
    assert not any(isinstance(a, Login) for a in actions)
    assert sent_lines(actions)[-1].startswith(b"-ERR")


@pytest.mark.parametrize(
    "name",
    [
        b"",
        b"alice bob",
        b"alice\tx",
        b"alice\x0bx",
        b"alice\x7f",
        b"alice\xc2\x9b31m",  # C1 CSI
        b"alice\xc2\x85x",  # NEL
        b"alice\xe2\x80\xa8x",  # LINE SEPARATOR
        b"alice\xe2\x80\xaex",  # RIGHT-TO-LEFT OVERRIDE
        b"\xff\xfe",  # not UTF-8
        b"a" * 256,
    ],
)
def test_bad_user_names_are_refused(name: bytes) -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"USER " + name + b"\r\nPASS pw\r\n")
    assert not any(isinstance(a, Login) for a in actions)
    assert conn.user is None


def test_user_name_cannot_smuggle_a_second_command() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"USER alice DELE 1\r\nPASS pw\r\n")
    assert not any(isinstance(a, Login) for a in actions)


@pytest.mark.parametrize("line", [b"USER al\x00ice", b"USER alice\rDELE 1", b"PASS a\x00b"])
def test_nul_and_cr_inside_a_command_are_refused(line: bytes) -> None:
    conn = ClientConnection(TLS)
    if line.startswith(b"PASS"):
        conn.receive_data(b"USER alice\r\n")
    actions = conn.receive_data(line + b"\r\n")
    assert only_errors(actions) and actions
    assert not any(isinstance(a, Login) for a in actions)


def test_user_name_of_255_octets_is_accepted() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"USER " + b"u" * 255 + b"\r\nPASS pw\r\n")
    assert actions[-1] == Login("u" * 255, b"pw")


def test_utf8_user_name_is_accepted() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data("USER jörg@exämple.org\r\nPASS pw\r\n".encode())
    assert actions[-1] == Login("jörg@exämple.org", b"pw")


# -- require_tls and STLS -----------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [b"USER alice", b"PASS pw", b"AUTH PLAIN " + plain(b"", b"alice", b"pw"), b"AUTH"],
)
def test_require_tls_refuses_login_commands_before_stls(command: bytes) -> None:
    conn = ClientConnection(STARTTLS)
    actions = conn.receive_data(command + b"\r\n")
    assert only_errors(actions) and actions
    assert b"STLS" in sent(actions)
    assert conn.user is None


def test_without_require_tls_plaintext_login_works() -> None:
    conn = ClientConnection(PLAINTEXT)
    assert conn.receive_data(b"USER a\r\nPASS b\r\n")[-1] == Login("a", b"b")


def test_stls_then_injected_command_in_same_packet_is_discarded() -> None:
    conn = ClientConnection(STARTTLS)
    actions = conn.receive_data(b"STLS\r\nCAPA\r\n")
    assert actions == [Send(b"+OK Begin TLS negotiation\r\n"), StartTLS()]
    # More plaintext while the handshake runs: never processed.
    assert conn.receive_data(b"USER mallory\r\nPASS x\r\n") == []
    assert conn.tls_established() == []
    assert conn.user is None
    assert conn.receive_data(b"NOOP\r\n") == [Send(b"+OK\r\n")]


def test_injected_bytes_split_across_packets_are_discarded_too() -> None:
    conn = ClientConnection(STARTTLS)
    assert conn.receive_data(b"ST") == []
    assert conn.receive_data(b"LS\r\nCA") == [Send(b"+OK Begin TLS negotiation\r\n"), StartTLS()]
    conn.receive_data(b"PA\r\n")
    conn.tls_established()
    # Had "CA" + "PA\r\n" survived, this would answer a CAPA list first.
    assert conn.receive_data(b"NOOP\r\n") == [Send(b"+OK\r\n")]


def test_user_given_before_stls_is_forgotten() -> None:
    conn = ClientConnection(Settings(tls_active=False, stls_offered=True, require_tls=False))
    conn.receive_data(b"USER victim\r\n")
    conn.receive_data(b"STLS\r\n")
    conn.tls_established()
    actions = conn.receive_data(b"PASS pw\r\n")
    assert only_errors(actions)
    assert not any(isinstance(a, Login) for a in actions)


def test_stls_when_tls_is_active_is_refused() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"STLS\r\n")
    assert only_errors(actions) and actions
    assert conn.state is State.AUTHORIZATION


def test_stls_twice_is_refused() -> None:
    conn = ClientConnection(STARTTLS)
    conn.receive_data(b"STLS\r\n")
    conn.tls_established()
    actions = conn.receive_data(b"STLS\r\n")
    assert not any(isinstance(a, StartTLS) for a in actions)
    assert only_errors(actions)


def test_stls_not_offered_is_refused() -> None:
    conn = ClientConnection(PLAINTEXT)
    actions = conn.receive_data(b"STLS\r\n")
    assert not any(isinstance(a, StartTLS) for a in actions)
    assert only_errors(actions)


def test_after_stls_login_is_allowed() -> None:
    conn = ClientConnection(STARTTLS)
    conn.receive_data(b"STLS\r\n")
    conn.tls_established()
    assert conn.receive_data(b"USER a\r\nPASS b\r\n")[-1] == Login("a", b"b")


# -- AUTH PLAIN -------------------------------------------------------------------


def test_auth_plain_with_initial_response() -> None:
    conn = ClientConnection(TLS)
    password = b"p a s s\xff"
    actions = conn.receive_data(b"AUTH PLAIN " + plain(b"", b"alice", password) + b"\r\n")
    assert actions == [Login("alice", password, "PLAIN")]


def test_auth_plain_mechanism_is_case_insensitive() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"auth plain " + plain(b"", b"alice", b"pw") + b"\r\n")
    assert actions == [Login("alice", b"pw", "PLAIN")]


def test_auth_plain_with_continuation() -> None:
    conn = ClientConnection(TLS)
    assert conn.receive_data(b"AUTH PLAIN\r\n") == [Send(b"+ \r\n")]
    assert conn.state is State.AUTH_CONTINUATION
    actions = conn.receive_data(plain(b"", b"alice", b"pw") + b"\r\n")
    assert actions == [Login("alice", b"pw", "PLAIN")]


def test_auth_plain_continuation_pipelined_in_one_packet() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"AUTH PLAIN\r\n" + plain(b"", b"bob", b"x") + b"\r\n")
    assert actions == [Send(b"+ \r\n"), Login("bob", b"x", "PLAIN")]


def test_auth_plain_authzid_equal_to_authcid_is_accepted() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"AUTH PLAIN " + plain(b"alice", b"alice", b"pw") + b"\r\n")
    assert actions == [Login("alice", b"pw", "PLAIN")]


def test_auth_plain_other_authzid_is_refused() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"AUTH PLAIN " + plain(b"admin", b"alice", b"pw") + b"\r\n")
    assert only_errors(actions) and actions
    assert b"[AUTH]" in sent(actions)
    assert conn.state is State.AUTHORIZATION


def test_auth_plain_empty_initial_response_is_malformed() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"AUTH PLAIN =\r\n")
    assert only_errors(actions) and actions
    assert conn.state is State.AUTHORIZATION


def test_auth_cancel_with_star() -> None:
    conn = ClientConnection(TLS)
    conn.receive_data(b"AUTH PLAIN\r\n")
    actions = conn.receive_data(b"*\r\n")
    assert only_errors(actions) and actions
    assert conn.state is State.AUTHORIZATION
    assert conn.receive_data(b"NOOP\r\n") == [Send(b"+OK\r\n")]


@pytest.mark.parametrize(
    "response",
    [
        b"not base64!",
        b"YWxpY2U",  # missing padding
        base64.b64encode(b"alice\x00pw"),  # two parts
        base64.b64encode(b"\x00alice\x00pw\x00extra"),  # four parts
        base64.b64encode(b"\x00\x00pw"),  # empty authcid
        base64.b64encode(b"\x00alice\x00"),  # empty password
        base64.b64encode(b"\x00al ice\x00pw"),  # space in user name
        base64.b64encode(b"\x00alice\x00p\r\nDELE 1"),  # CRLF in password
        base64.b64encode(b"\x00\xff\xfe\x00pw"),  # user not UTF-8
    ],
)
def test_auth_plain_bad_responses_are_refused(response: bytes) -> None:
    for via_continuation in (False, True):
        conn = ClientConnection(TLS)
        if via_continuation:
            conn.receive_data(b"AUTH PLAIN\r\n")
            actions = conn.receive_data(response + b"\r\n")
        else:
            actions = conn.receive_data(b"AUTH PLAIN " + response + b"\r\n")
        assert only_errors(actions) and actions
        assert conn.state is State.AUTHORIZATION


def test_auth_without_mechanism_lists_plain() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"AUTH\r\n")
    assert sent_lines(actions) == [b"+OK Mechanisms follow", b"PLAIN", b"."]
    assert conn.errors == 0


def test_auth_unsupported_mechanism() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"AUTH CRAM-MD5\r\n")
    assert only_errors(actions) and actions
    assert conn.state is State.AUTHORIZATION


def test_overlong_sasl_response_ends_the_exchange() -> None:
    conn = ClientConnection(Settings(tls_active=True, stls_offered=False, max_line=64))
    conn.receive_data(b"AUTH PLAIN\r\n")
    actions = conn.receive_data(b"A" * 200 + b"\r\n")
    assert only_errors(actions) and actions
    # The next line is a command again, not a SASL response ("QUIT" is valid base64).
    assert conn.receive_data(b"QUIT\r\n") == [Send(b"+OK Bye\r\n"), Close("quit")]


# -- other AUTHORIZATION commands ---------------------------------------------------


def test_apop_gets_a_clear_error() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"APOP alice c4c9334bac560ecc979e58001b3e22fb\r\n")
    assert only_errors(actions) and actions
    assert b"APOP" in sent(actions)


@pytest.mark.parametrize("command", [b"STAT", b"LIST", b"RETR 1", b"DELE 1", b"UIDL", b"TOP 1 0"])
def test_transaction_commands_before_login_are_refused(command: bytes) -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(command + b"\r\n")
    assert only_errors(actions) and actions
    assert b"not allowed" in sent(actions)
    assert not any(isinstance(a, Forward) for a in actions)


def test_unknown_command_gets_error_and_session_goes_on() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"XYZZY\r\nNOOP\r\n")
    assert sent_lines(actions)[0].startswith(b"-ERR")
    assert sent_lines(actions)[1] == b"+OK"
    assert conn.state is State.AUTHORIZATION


def test_overlong_line_in_authorization_is_an_error_not_a_crash() -> None:
    conn = ClientConnection(Settings(tls_active=True, stls_offered=False, max_line=64))
    actions = conn.receive_data(b"USER " + b"a" * 500 + b"\r\nNOOP\r\n")
    assert sent_lines(actions)[0].startswith(b"-ERR")
    assert sent_lines(actions)[1] == b"+OK"
    assert conn.user is None


def test_error_budget_closes_the_connection() -> None:
    conn = ClientConnection(Settings(tls_active=True, stls_offered=False, max_errors=3))
    actions = conn.receive_data(b"BAD1\r\nBAD2\r\n")
    assert not any(isinstance(a, Close) for a in actions)
    actions = conn.receive_data(b"BAD3\r\nNOOP\r\nUSER x\r\nPASS y\r\n")
    assert isinstance(actions[-1], Close)
    assert sent_lines(actions)[-1].startswith(b"-ERR")
    assert b"Too many errors" in sent(actions)
    assert not any(isinstance(a, Login) for a in actions)
    assert conn.state is State.CLOSED
    assert conn.receive_data(b"NOOP\r\n") == []


def test_quit_in_authorization() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"QUIT\r\nUSER x\r\n")
    assert actions == [Send(b"+OK Bye\r\n"), Close("quit")]
    assert conn.client_sent_quit
    assert conn.receive_data(b"NOOP\r\n") == []


# -- login outcome and pipelining -------------------------------------------------------


def test_pipelined_login_then_transaction_commands_in_order() -> None:
    conn = ClientConnection(TLS)
    actions = conn.receive_data(b"USER x\r\nPASS y\r\nSTAT\r\nLIST\r\n")
    assert actions == [Send(b"+OK Send PASS\r\n"), Login("x", b"y", "USER")]
    # Nothing moves while the login runs.
    assert conn.receive_data(b"UIDL\r\n") == []
    actions = conn.login_succeeded()
    assert actions == [
        Send(b"+OK Logged in.\r\n"),
        Forward(b"STAT\r\n", "STAT"),
        Forward(b"LIST\r\n", "LIST"),
        Forward(b"UIDL\r\n", "UIDL"),
    ]


def test_login_failed_sends_given_reply_and_accepts_new_user() -> None:
    conn = ClientConnection(TLS)
    conn.receive_data(b"USER x\r\nPASS y\r\n")
    reply = replies.err("Authentication failed", replies.Code.AUTH)
    assert conn.login_failed(reply) == [Send(reply)]
    assert conn.user is None
    assert conn.state is State.AUTHORIZATION
    actions = conn.receive_data(b"USER z\r\nPASS w\r\n")
    assert actions[-1] == Login("z", b"w")


def test_login_failed_processes_pipelined_lines_as_authorization() -> None:
    conn = ClientConnection(TLS)
    conn.receive_data(b"USER x\r\nPASS y\r\nSTAT\r\n")
    actions = conn.login_failed(b"-ERR [AUTH] no\r\n")
    assert not any(isinstance(a, Forward) for a in actions)
    assert sent_lines(actions) == [b"-ERR [AUTH] no", b"-ERR STAT is not allowed before login"]


def test_login_failures_count_toward_the_error_budget() -> None:
    conn = ClientConnection(Settings(tls_active=True, stls_offered=False, max_errors=2))
    conn.receive_data(b"USER x\r\nPASS y\r\n")
    conn.login_failed(b"-ERR [AUTH] no\r\n")
    conn.receive_data(b"USER x\r\nPASS y\r\n")
    actions = conn.login_failed(b"-ERR [AUTH] no\r\n")
    assert isinstance(actions[-1], Close)


# -- TRANSACTION ---------------------------------------------------------------


def test_transaction_forwards_verbatim_with_crlf() -> None:
    conn = logged_in()
    actions = conn.receive_data(b"RETR 1\nTOP 2 10\r\nlist\r\nuidl 3\r\n")
    assert actions == [
        Forward(b"RETR 1\r\n", "RETR"),
        Forward(b"TOP 2 10\r\n", "TOP"),
        Forward(b"list\r\n", "LIST"),
        Forward(b"uidl 3\r\n", "UIDL"),
    ]


@pytest.mark.parametrize(
    "line", [b"XEVIL", b"USER bob", b"PASS x", b"AUTH PLAIN", b"", b"STAT\xff", b"\xe9t\xe9"]
)
def test_transaction_unknown_commands_are_counted_as_other(line: bytes) -> None:
    conn = logged_in()
    assert conn.receive_data(line + b"\r\n") == [Forward(line + b"\r\n", "other")]


def test_transaction_quit_is_remembered_and_later_lines_dropped() -> None:
    conn = logged_in()
    assert not conn.client_sent_quit
    actions = conn.receive_data(b"DELE 1\r\nquit\r\nRSET\r\nDELE 2\r\n")
    assert actions == [Forward(b"DELE 1\r\n", "DELE"), Forward(b"quit\r\n", "QUIT")]
    assert conn.client_sent_quit
    assert conn.receive_data(b"RSET\r\n") == []


def test_transaction_without_quit_never_marks_quit() -> None:
    conn = logged_in()
    conn.receive_data(b"QUITX\r\nNOOP QUIT\r\n")
    assert not conn.client_sent_quit


def test_transaction_overlong_line_is_substituted_in_order() -> None:
    conn = logged_in(Settings(tls_active=True, stls_offered=False, max_line=64))
    actions = conn.receive_data(b"STAT\r\nRETR " + b"9" * 200 + b"\r\nLIST\r\n")
    assert actions == [
        Forward(b"STAT\r\n", "STAT"),
        Forward(TOO_LONG_SUBSTITUTE, "other"),
        Forward(b"LIST\r\n", "LIST"),
    ]


def test_transaction_overlong_line_without_end_is_substituted_once() -> None:
    conn = logged_in(Settings(tls_active=True, stls_offered=False, max_line=64))
    actions: list[object] = []
    for _ in range(20):
        actions += conn.receive_data(b"x" * 1000)
    actions += conn.receive_data(b"\r\nNOOP\r\n")
    assert actions == [Forward(TOO_LONG_SUBSTITUTE, "other"), Forward(b"NOOP\r\n", "NOOP")]


@pytest.mark.parametrize("line", [b"NOOP\rQUIT", b"RETR 1\x00DELE 1"])
def test_transaction_line_with_cr_or_nul_is_not_forwarded(line: bytes) -> None:
    conn = logged_in()
    actions = conn.receive_data(line + b"\r\nSTAT\r\n")
    assert actions == [Forward(BAD_LINE_SUBSTITUTE, "other"), Forward(b"STAT\r\n", "STAT")]
    assert not conn.client_sent_quit


def test_transaction_labels_are_bounded() -> None:
    conn = logged_in()
    labels = set()
    for i in range(200):
        for action in conn.receive_data(b"CMD%d arg\r\n" % i):
            assert isinstance(action, Forward)
            labels.add(action.command)
    assert labels == {"other"}


def test_login_repr_never_shows_the_password() -> None:
    login = Login("alice", b"hunter2-secret")
    assert b"hunter2" not in repr(login).encode()
    assert "hunter2" not in str(login)


# -- properties ------------------------------------------------------------------

SETTINGS = [
    TLS,
    STARTTLS,
    PLAINTEXT,
    Settings(tls_active=False, stls_offered=True, require_tls=False, max_line=16, max_errors=3),
    Settings(tls_active=True, stls_offered=False, max_line=8, max_errors=1),
]

SECRET = b"S3cr3t-pw"

interesting = st.sampled_from(
    [
        b"USER alice\r\n",
        b"PASS " + SECRET + b"\r\n",
        b"AUTH PLAIN " + plain(b"", b"alice", SECRET) + b"\r\n",
        b"AUTH PLAIN\r\n",
        plain(b"", b"bob", SECRET) + b"\r\n",
        b"*\r\n",
        b"STLS\r\n",
        b"CAPA\r\n",
        b"QUIT\r\n",
        b"NOOP\r\n",
        b"STAT\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"\x00",
        b"A" * 40,
    ]
)
chunks = st.lists(st.one_of(interesting, st.binary(max_size=40)), max_size=25)


def _outcome(conn: ClientConnection, action: Action, choice: int) -> list[Action]:
    if isinstance(action, StartTLS):
        return conn.tls_established()
    if isinstance(action, Login):
        if choice % 2:
            return conn.login_succeeded()
        return conn.login_failed(b"-ERR [AUTH] Authentication failed\r\n")
    return []


@settings(max_examples=300, deadline=None)
@given(
    settings_index=st.integers(min_value=0, max_value=len(SETTINGS) - 1),
    data=chunks,
    choices=st.lists(st.integers(min_value=0, max_value=1), min_size=30, max_size=30),
)
def test_any_input_gives_only_actions_and_stays_bounded(
    settings_index: int, data: list[bytes], choices: list[int]
) -> None:
    settings_ = SETTINGS[settings_index]
    conn = ClientConnection(settings_)
    tls_active = settings_.tls_active
    logged_in_ = False
    pending: list[Action] = list(conn.greeting())
    calls = 0
    for chunk in data:
        pending += conn.receive_data(chunk)
        while pending:
            action = pending.pop(0)
            assert isinstance(action, Send | StartTLS | Login | Forward | Close)
            if isinstance(action, Login):
                assert action.password  # never an empty password
                assert tls_active or not settings_.require_tls
                assert SECRET not in repr(action).encode()
            if isinstance(action, StartTLS):
                tls_active = True
            if isinstance(action, Forward):
                assert logged_in_
                assert action.command in TRANSACTION_COMMANDS | {"other"}
                body = action.data[:-2]
                assert action.data.endswith(b"\r\n")
                assert not any(c in body for c in (b"\r", b"\n", b"\x00"))
            if isinstance(action, Send):
                assert action.data.endswith(b"\r\n")
            follow = _outcome(conn, action, choices[calls % len(choices)])
            if isinstance(action, Login | StartTLS):
                calls += 1
                if isinstance(action, Login) and conn.state is State.TRANSACTION:
                    logged_in_ = True
            pending = follow + pending
        if conn.state in (State.AUTHORIZATION, State.AUTH_CONTINUATION, State.TRANSACTION):
            assert conn._reader.buffered < settings_.max_line


RELAYED_LINES = st.sampled_from(
    [
        b"STAT\r\n",
        b"stat\r\n",
        b"Stat\r\n",
        b"list 1\r\n",
        b"RETR 2\r\n",
        b"QUIT\r\n",
        b"quit\n",
        b"XEVIL\r\n",
        b"\r\n",
        b"A\x00B\r\n",
        b"A\rB\r\n",
        b"NOOP\r\r\n",
        b"X" * 3000 + b"\r\n",
    ]
)


def _relay_both_ways(chunks: list[bytes]) -> None:
    """Feeds ``chunks`` to the relay's fast path and to ``receive_data``: the
    bytes forwarded, the commands counted and QUIT must agree."""
    by_actions, fast = logged_in(), logged_in()
    actions = [action for chunk in chunks for action in by_actions.receive_data(chunk)]
    commands: dict[str, int] = {}
    forwarded = b"".join(fast.relay_data(chunk, commands) for chunk in chunks)
    assert forwarded == b"".join(action.data for action in actions)
    expected: dict[str, int] = {}
    for action in actions:
        expected[action.command] = expected.get(action.command, 0) + 1
    assert commands == expected
    assert fast.client_sent_quit == by_actions.client_sent_quit


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(RELAYED_LINES, max_size=8), cut=st.integers(min_value=0, max_value=200))
def test_relay_data_forwards_what_the_forward_actions_would(lines: list[bytes], cut: int) -> None:
    """The relay's fast path and the actions of ``receive_data`` agree byte for byte."""
    data = b"".join(lines)
    _relay_both_ways([data[:cut], data[cut:]])


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(RELAYED_LINES, max_size=8))
def test_a_line_per_read_takes_the_fast_path_to_the_same_bytes(lines: list[bytes]) -> None:
    """One command per read, the usual case, skips the line buffer: same outcome."""
    _relay_both_ways(lines)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=40), max_size=6))
def test_the_relay_agrees_with_the_actions_on_any_bytes(chunks: list[bytes]) -> None:
    _relay_both_ways(chunks)


def test_a_whole_line_passes_through_unchanged_and_is_counted_by_name() -> None:
    conn = logged_in()
    commands: dict[str, int] = {}
    assert conn.relay_data(memoryview(b"retr 7\r\n"), commands) == b"retr 7\r\n"
    assert conn.relay_data(b"Quit\r\n", commands) == b"Quit\r\n"
    assert commands == {"RETR": 1, "QUIT": 1}
    assert conn.client_sent_quit
    assert conn.relay_data(b"STAT\r\n", commands) == b""
