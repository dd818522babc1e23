"""BackendLogin: greeting, optional STLS, USER, PASS; never leaks the password."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pop3proxy.protocol.backend import (
    AUTH_FAILURE,
    TEMPORARY_FAILURE,
    BackendLogin,
    Failed,
    FailureKind,
    LoggedIn,
    SendToBackend,
    StartBackendTLS,
)
from pop3proxy.protocol.replies import Code

PASSWORD = b"pa ss\xffword"


def failed(actions: list[object]) -> Failed:
    assert len(actions) == 1 and isinstance(actions[0], Failed), actions
    return actions[0]


def test_plain_login_happy_path() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False)
    assert login.receive_line(b"+OK Dovecot ready.") == [SendToBackend(b"USER alice\r\n")]
    assert login.receive_line(b"+OK") == [SendToBackend(b"PASS " + PASSWORD + b"\r\n")]
    assert not login.done
    assert login.receive_line(b"+OK Logged in.") == [LoggedIn()]
    assert login.done


def test_login_name_is_sent_as_utf8() -> None:
    login = BackendLogin("jörg", b"pw", starttls=False)
    assert login.receive_line(b"+OK") == [SendToBackend("USER jörg\r\n".encode())]


def test_err_greeting_is_unavailable() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False)
    failure = failed(login.receive_line(b"-ERR [SYS/TEMP] too busy"))
    assert failure.kind is FailureKind.UNAVAILABLE
    assert failure.client_reply == TEMPORARY_FAILURE
    assert login.done


@pytest.mark.parametrize("line", [b"", b"HTTP/1.1 400 Bad Request", b"SSH-2.0-OpenSSH", b"OK"])
def test_garbage_greeting_is_unavailable(line: bytes) -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False)
    failure = failed(login.receive_line(line))
    assert failure.kind is FailureKind.UNAVAILABLE
    assert failure.reason == "garbage"


def test_garbage_after_user_is_unavailable_and_password_unsent() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False)
    actions = login.receive_line(b"+OK")
    actions += login.receive_line(b"* garbage")
    assert failed(actions[1:]).kind is FailureKind.UNAVAILABLE
    assert not any(isinstance(a, SendToBackend) and PASSWORD in a.data for a in actions)


def test_starttls_happy_path() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=True)
    assert login.receive_line(b"+OK ready") == [SendToBackend(b"STLS\r\n")]
    assert login.receive_line(b"+OK Begin TLS") == [StartBackendTLS()]
    assert login.tls_established() == [SendToBackend(b"USER alice\r\n")]
    assert login.receive_line(b"+OK") == [SendToBackend(b"PASS " + PASSWORD + b"\r\n")]
    assert login.receive_line(b"+OK") == [LoggedIn()]


def test_stls_refused_never_sends_the_password() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=True)
    actions = login.receive_line(b"+OK ready")
    actions += login.receive_line(b"-ERR STLS not supported")
    failure = failed(actions[1:])
    assert failure.kind is FailureKind.UNAVAILABLE
    # Whatever comes next, a login that refused STLS is over.
    actions += login.receive_line(b"+OK")
    actions += login.receive_line(b"+OK")
    assert not any(isinstance(a, SendToBackend) and PASSWORD in a.data for a in actions)
    assert not any(isinstance(a, SendToBackend) and a.data.startswith(b"USER") for a in actions)


def test_data_while_tls_pending_is_refused() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=True)
    login.receive_line(b"+OK")
    login.receive_line(b"+OK")
    # A server (or a man in the middle) answering before the handshake.
    failure = failed(login.receive_line(b"+OK"))
    assert failure.kind is FailureKind.UNAVAILABLE


@pytest.mark.parametrize("step", ["USER", "PASS"])
@pytest.mark.parametrize(
    "line",
    [
        b"-ERR",
        b"-ERR no such user alice",
        b"-ERR [AUTH] Invalid password for alice",
        b"-ERR [SYS/PERM] account alice locked",
    ],
)
def test_refusals_become_the_generic_auth_reply(step: str, line: bytes) -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False)
    login.receive_line(b"+OK")
    if step == "PASS":
        login.receive_line(b"+OK")
    failure = failed(login.receive_line(line))
    assert failure.kind is FailureKind.AUTH
    assert failure.client_reply == AUTH_FAILURE
    assert b"alice" not in failure.client_reply
    assert PASSWORD not in failure.client_reply
    assert login.done


@pytest.mark.parametrize("step", ["USER", "PASS"])
def test_in_use_is_passed_through(step: str) -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False)
    login.receive_line(b"+OK")
    if step == "PASS":
        login.receive_line(b"+OK")
    failure = failed(login.receive_line(b"-ERR [in-use] Mailbox locked by pid 4242"))
    assert failure.kind is FailureKind.AUTH
    assert failure.client_reply.startswith(f"-ERR [{Code.IN_USE}]".encode())
    assert b"4242" not in failure.client_reply


def test_login_delay_is_passed_through() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False)
    login.receive_line(b"+OK")
    login.receive_line(b"+OK")
    failure = failed(login.receive_line(b"-ERR [LOGIN-DELAY] wait"))
    assert failure.client_reply.startswith(b"-ERR [LOGIN-DELAY]")


def test_sys_temp_is_unavailable() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False)
    login.receive_line(b"+OK")
    login.receive_line(b"+OK")
    failure = failed(login.receive_line(b"-ERR [SYS/TEMP] Try again"))
    assert failure.kind is FailureKind.UNAVAILABLE
    assert failure.client_reply == TEMPORARY_FAILURE


def test_lines_after_done_are_refused() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False)
    for line in (b"+OK", b"+OK", b"+OK"):
        login.receive_line(line)
    assert login.done
    assert failed(login.receive_line(b"+OK")).kind is FailureKind.UNAVAILABLE


def test_repr_of_actions_never_shows_the_password() -> None:
    login = BackendLogin("alice", b"hunter2", starttls=False)
    actions = login.receive_line(b"+OK") + login.receive_line(b"+OK")
    assert actions[-1] == SendToBackend(b"PASS hunter2\r\n")
    assert all("hunter2" not in repr(a) for a in actions)


_line = st.one_of(
    st.sampled_from([b"+OK", b"+OK ready", b"+ ", b"-ERR", b"-ERR [IN-USE] x", b"-ERR [SYS/TEMP]"]),
    st.binary(max_size=60),
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_line, max_size=8),
    starttls=st.booleans(),
    tls_after=st.integers(min_value=0, max_value=8),
    sasl_plain=st.booleans(),
)
def test_any_lines_give_only_actions_and_password_only_after_user_ok(
    lines: list[bytes], starttls: bool, tls_after: int, sasl_plain: bool
) -> None:
    secret = b"P4ss-\x00-unique"
    encoded = base64.b64encode(b"\0alice\0" + secret)
    login = BackendLogin("alice", secret, starttls=starttls, sasl_plain=sasl_plain)
    actions: list[object] = []
    tls_done = False
    for index, line in enumerate(lines):
        new = login.receive_line(line)
        if any(isinstance(a, StartBackendTLS) for a in new) and index >= tls_after - 1:
            new += login.tls_established()
            tls_done = True
        for action in new:
            assert isinstance(action, SendToBackend | StartBackendTLS | LoggedIn | Failed)
            assert "P4ss" not in repr(action)
            if isinstance(action, Failed):
                assert action.client_reply.startswith(b"-ERR [")
                assert action.client_reply in (
                    AUTH_FAILURE,
                    TEMPORARY_FAILURE,
                ) or action.client_reply.startswith((b"-ERR [IN-USE]", b"-ERR [LOGIN-DELAY]"))
            if isinstance(action, SendToBackend) and (
                secret in action.data or encoded in action.data
            ):
                assert not starttls or tls_done
        actions += new
        if login.done:
            assert failed(login.receive_line(b"+OK")).kind is FailureKind.UNAVAILABLE
            break
    assert sum(isinstance(a, LoggedIn | Failed) for a in actions) <= 1


# -- AUTH PLAIN (login_command: auth_plain) ---------------------------------


def plain(user: bytes, password: bytes) -> bytes:
    return base64.b64encode(b"\0" + user + b"\0" + password)


def test_auth_plain_logs_in_in_one_round_trip() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False, sasl_plain=True)
    assert login.receive_line(b"+OK Dovecot ready.") == [
        SendToBackend(b"AUTH PLAIN " + plain(b"alice", PASSWORD) + b"\r\n")
    ]
    assert login.receive_line(b"+OK Logged in.") == [LoggedIn()]
    assert login.done


def test_auth_plain_after_stls_and_xclient() -> None:
    login = BackendLogin(
        "alice", PASSWORD, starttls=True, xclient=("192.0.2.7", 4242), sasl_plain=True
    )
    assert login.receive_line(b"+OK [XCLIENT] ready") == [SendToBackend(b"STLS\r\n")]
    assert login.receive_line(b"+OK Begin TLS") == [StartBackendTLS()]
    [xclient] = login.tls_established()
    assert isinstance(xclient, SendToBackend) and xclient.data.startswith(b"XCLIENT ")
    [auth] = login.receive_line(b"+OK")
    assert auth == SendToBackend(b"AUTH PLAIN " + plain(b"alice", PASSWORD) + b"\r\n")
    assert login.receive_line(b"+OK") == [LoggedIn()]


def test_auth_plain_too_long_for_one_line_answers_the_challenge() -> None:
    """RFC 2449 caps a command line at 255 octets: without the initial
    response, the credentials go after the server's empty challenge."""
    long_password = b"p" * 300
    login = BackendLogin("alice", long_password, starttls=False, sasl_plain=True)
    assert login.receive_line(b"+OK") == [SendToBackend(b"AUTH PLAIN\r\n")]
    assert login.receive_line(b"+ ") == [SendToBackend(plain(b"alice", long_password) + b"\r\n")]
    assert login.receive_line(b"+OK Logged in.") == [LoggedIn()]


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"-ERR [AUTH] Authentication failed.", AUTH_FAILURE),
        (b"-ERR Unknown command", AUTH_FAILURE),
        (b"-ERR [SYS/TEMP] Try again", TEMPORARY_FAILURE),
    ],
)
def test_auth_plain_refusals_are_those_of_pass(line: bytes, reply: bytes) -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False, sasl_plain=True)
    login.receive_line(b"+OK")
    failure = failed(login.receive_line(line))
    assert failure.client_reply == reply
    assert login.done


def test_auth_plain_actions_never_show_the_password() -> None:
    login = BackendLogin("alice", b"hunter2", starttls=False, sasl_plain=True)
    actions = login.receive_line(b"+OK")
    encoded = plain(b"alice", b"hunter2").decode()
    assert all("hunter2" not in repr(a) and encoded not in repr(a) for a in actions)


# -- what the log and the client are told ------------------------------------


def test_failure_reasons_name_the_step() -> None:
    """The reason is the label of the log line and the metric: it says where the
    login stopped, so an operator can tell a bad backend from a bad password."""
    assert failed(BackendLogin("a", b"p", starttls=False).receive_line(b"-ERR")).reason == (
        "bad_greeting"
    )
    stls = BackendLogin("a", b"p", starttls=True)
    stls.receive_line(b"+OK")
    assert failed(stls.receive_line(b"-ERR no")).reason == "stls_refused"
    pending = BackendLogin("a", b"p", starttls=True)
    pending.receive_line(b"+OK")
    pending.receive_line(b"+OK")
    assert failed(pending.receive_line(b"+OK")).reason == "unexpected_data"
    done = BackendLogin("a", b"p", starttls=False)
    for line in (b"+OK", b"+OK", b"+OK"):
        done.receive_line(line)
    assert failed(done.receive_line(b"+OK")).reason == "unexpected_data"


@pytest.mark.parametrize(
    ("line", "kind", "reason", "reply"),
    [
        (
            b"-ERR [AUTH] Authentication failed.",
            FailureKind.AUTH,
            "login_refused",
            b"-ERR [AUTH] Authentication failed\r\n",
        ),
        (
            b"-ERR [IN-USE] Mailbox [INBOX] is locked",
            FailureKind.AUTH,
            "login_refused",
            b"-ERR [IN-USE] Mailbox is in use by another session\r\n",
        ),
        (
            b"-ERR [LOGIN-DELAY] wait",
            FailureKind.AUTH,
            "login_refused",
            b"-ERR [LOGIN-DELAY] Logged in too recently, try again later\r\n",
        ),
        (
            b"-ERR [SYS/TEMP] Try again",
            FailureKind.UNAVAILABLE,
            "backend_temporary_failure",
            b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n",
        ),
        (b"-ERR [\xffIN-USE] garbage", FailureKind.AUTH, "login_refused", AUTH_FAILURE),
        (b"-ERR [] nothing", FailureKind.AUTH, "login_refused", AUTH_FAILURE),
    ],
)
def test_a_refused_password_tells_the_client_the_code_it_can_act_on(
    line: bytes, kind: FailureKind, reason: str, reply: bytes
) -> None:
    """RFC 3206: IN-USE and LOGIN-DELAY tell the client when to come back,
    SYS/TEMP to retry; any other refusal is the one [AUTH] reply."""
    login = BackendLogin("alice", PASSWORD, starttls=False)
    login.receive_line(b"+OK")
    login.receive_line(b"+OK")
    failure = failed(login.receive_line(line))
    assert (failure.kind, failure.reason, failure.client_reply) == (kind, reason, reply)


@pytest.mark.parametrize("challenge", [b"+", b"+ "])
def test_auth_plain_answers_a_bare_or_spaced_challenge(challenge: bytes) -> None:
    """RFC 5034 section 4 has the server send "+ " and a (here empty) challenge;
    some servers send a lone "+". Either gets the response, and only once."""
    long_password = b"p" * 300
    login = BackendLogin("alice", long_password, starttls=False, sasl_plain=True)
    assert login.receive_line(b"+OK") == [SendToBackend(b"AUTH PLAIN\r\n")]
    assert login.receive_line(challenge) == [
        SendToBackend(plain(b"alice", long_password) + b"\r\n")
    ]
    # A second challenge is not answered with the password again.
    assert failed(login.receive_line(challenge)).reason == "garbage"


def test_auth_plain_within_255_octets_goes_in_one_line() -> None:
    """RFC 2449 section 4: 255 octets, CRLF included. The base64 of the
    response grows four octets at a time: 253 fits, 257 does not."""
    fits = b"p" * (180 - len(b"\0alice\0"))  # 180 octets encode to 240
    command = b"AUTH PLAIN " + plain(b"alice", fits) + b"\r\n"
    assert len(command) == 253
    login = BackendLogin("alice", fits, starttls=False, sasl_plain=True)
    assert login.receive_line(b"+OK") == [SendToBackend(command)]
    too_long = fits + b"ppp"
    login = BackendLogin("alice", too_long, starttls=False, sasl_plain=True)
    assert login.receive_line(b"+OK") == [SendToBackend(b"AUTH PLAIN\r\n")]


def test_a_challenge_outside_auth_plain_is_garbage() -> None:
    login = BackendLogin("alice", PASSWORD, starttls=False)
    login.receive_line(b"+OK")
    actions = login.receive_line(b"+ ")
    assert failed(actions).reason == "garbage"
    assert not any(isinstance(a, SendToBackend) for a in actions)


def xoauth2_response(user: bytes, token: bytes) -> bytes:
    return base64.b64encode(b"user=" + user + b"\x01auth=Bearer " + token + b"\x01\x01")


def test_xoauth2_passes_the_token_on_in_one_line() -> None:
    login = BackendLogin("alice", b"tok", starttls=False, xoauth2=True)
    command = b"AUTH XOAUTH2 " + xoauth2_response(b"alice", b"tok") + b"\r\n"
    assert login.receive_line(b"+OK") == [SendToBackend(command)]
    assert login.receive_line(b"+OK Logged in.") == [LoggedIn()]


def test_xoauth2_refused_token_answers_the_error_challenge_once() -> None:
    login = BackendLogin("alice", b"tok", starttls=False, xoauth2=True)
    login.receive_line(b"+OK")
    assert login.receive_line(b"+ eyJzdGF0dXMiOiI0MDEifQ==") == [SendToBackend(b"\r\n")]
    assert failed(login.receive_line(b"-ERR [AUTH] no")).reason == "login_refused"


def test_xoauth2_long_token_goes_after_the_challenge() -> None:
    token = b"t" * 3000
    login = BackendLogin("alice", token, starttls=False, xoauth2=True)
    assert login.receive_line(b"+OK") == [SendToBackend(b"AUTH XOAUTH2\r\n")]
    response = xoauth2_response(b"alice", token) + b"\r\n"
    assert login.receive_line(b"+ ") == [SendToBackend(response)]
    assert login.receive_line(b"+ e30=") == [SendToBackend(b"\r\n")]
    assert failed(login.receive_line(b"+ e30=")).reason == "garbage"


def test_xoauth2_of_exactly_255_octets_goes_in_one_line() -> None:
    token = b"t" * 155
    login = BackendLogin("alice", token, starttls=False, xoauth2=True)
    command = b"AUTH XOAUTH2 " + xoauth2_response(b"alice", token) + b"\r\n"
    assert len(command) == 255
    assert login.receive_line(b"+OK") == [SendToBackend(command)]
    assert login.receive_line(b"+ e30=") == [SendToBackend(b"\r\n")]


def test_user_pass_takes_no_challenge() -> None:
    """Only a token exchange has an error challenge: a "+" to PASS is garbage."""
    login = BackendLogin("alice", b"pw", starttls=False)
    assert login.receive_line(b"+OK") == [SendToBackend(b"USER alice\r\n")]
    assert login.receive_line(b"+OK") == [SendToBackend(b"PASS pw\r\n")]
    assert failed(login.receive_line(b"+ e30=")).reason == "garbage"
