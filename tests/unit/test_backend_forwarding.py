"""XCLIENT in the backend login machine: when it is sent, what is never lost,
and that no value can put a line of its own on the backend's wire."""

from __future__ import annotations

import base64

import pytest

from pop3proxy.protocol.backend import (
    AUTH_FAILURE,
    BackendLogin,
    Failed,
    FailureKind,
    LoggedIn,
    SendToBackend,
    StartBackendTLS,
    xtext,
)
from pop3proxy.tenants import RecordError, parse_tenant

CLIENT = ("192.0.2.10", 50123)
XCLIENT = SendToBackend(b"XCLIENT ADDR=192.0.2.10 PORT=50123\r\n")
USER = SendToBackend(b"USER alice\r\n")


def login(**kwargs: object) -> BackendLogin:
    return BackendLogin("alice", b"pw", starttls=False, xclient=CLIENT, **kwargs)  # type: ignore[arg-type]


def test_dovecot_announces_xclient_in_the_greeting() -> None:
    machine = login()
    assert machine.receive_line(b"+OK [XCLIENT] Dovecot (Debian) ready.") == [XCLIENT]
    assert machine.receive_line(b"+OK Updated") == [USER]
    assert machine.xclient_result == "sent"
    machine.receive_line(b"+OK")
    assert machine.receive_line(b"+OK Logged in.") == [LoggedIn()]


def test_without_the_greeting_code_capa_decides() -> None:
    machine = login()
    assert machine.receive_line(b"+OK ready") == [SendToBackend(b"CAPA\r\n")]
    for line in (b"+OK", b"TOP", b"XCLIENT", b"USER"):
        assert machine.receive_line(line) == []
    assert machine.receive_line(b".") == [XCLIENT]


def test_not_offered_means_login_without_it() -> None:
    machine = login()
    machine.receive_line(b"+OK ready")
    machine.receive_line(b"+OK")
    machine.receive_line(b"USER")
    assert machine.receive_line(b".") == [USER]
    assert machine.xclient_result == "not_offered"


def test_capa_refused_means_login_without_it() -> None:
    machine = login()
    machine.receive_line(b"+OK ready")
    assert machine.receive_line(b"-ERR unknown command") == [USER]
    assert machine.xclient_result == "not_offered"


def test_refused_xclient_still_logs_in() -> None:
    machine = login()
    machine.receive_line(b"+OK [XCLIENT] ready")
    assert machine.receive_line(b"-ERR You are not from trusted IP") == [USER]
    assert machine.xclient_result == "refused"


def test_xclient_goes_inside_tls_after_stls() -> None:
    machine = BackendLogin("alice", b"pw", starttls=True, xclient=CLIENT)
    assert machine.receive_line(b"+OK [XCLIENT] ready") == [SendToBackend(b"STLS\r\n")]
    assert machine.receive_line(b"+OK Begin TLS") == [StartBackendTLS()]
    assert machine.tls_established() == [XCLIENT]


def test_no_xclient_unless_asked() -> None:
    machine = BackendLogin("alice", b"pw", starttls=False)
    assert machine.receive_line(b"+OK [XCLIENT] ready") == [USER]
    assert machine.xclient_result is None


def test_xclient_listed_with_its_attributes_in_capa() -> None:
    """RFC 2449 section 5: a capability line is its tag, then parameters
    (Postfix-style servers list the attributes they accept)."""
    machine = login()
    machine.receive_line(b"+OK ready")
    machine.receive_line(b"+OK Capability list follows")
    for line in (b"TOP", b"", b"SASL PLAIN", b"xclient ADDR PORT NAME"):
        assert machine.receive_line(line) == []
    assert machine.receive_line(b".") == [XCLIENT]


@pytest.mark.parametrize("line", [b" XCLIENT", b"XCLIENT\tADDR", b"XCLIENTS", b"X-XCLIENT"])
def test_capa_lines_that_only_look_like_xclient(line: bytes) -> None:
    machine = login()
    machine.receive_line(b"+OK ready")
    machine.receive_line(b"+OK")
    assert machine.receive_line(line) == []
    assert machine.receive_line(b".") == [USER]
    assert machine.xclient_result == "not_offered"


# -- nothing injected ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("192.0.2.10", b"192.0.2.10"),
        ("2001:db8::1", b"2001:db8::1"),
        ("a+b=c", b"a+2Bb+3Dc"),
        ("x y\r\nQUIT", b"x+20y+0D+0AQUIT"),
        ("\x00\x7f~!", b"+00+7F~!"),
        ("\u00e9", b"+C3+A9"),  # octets of the UTF-8 form
    ],
)
def test_xtext_as_rfc_3461_defines_it(value: str, encoded: bytes) -> None:
    assert xtext(value) == encoded


def sent(actions: list) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, SendToBackend))


def test_a_zone_id_never_reaches_xclient() -> None:
    """A link-local client's socket address carries its zone; a header's never
    does (the parser refuses it), but whatever the text, XCLIENT gets the
    address alone, one line."""
    machine = BackendLogin("alice", b"pw", starttls=False, xclient=("fe80::1%a\nQUIT", 50123))
    command = sent(machine.receive_line(b"+OK [XCLIENT] ready"))
    assert command == b"XCLIENT ADDR=fe80::1 PORT=50123\r\n"


def test_xclient_refuses_text_that_is_not_an_address() -> None:
    with pytest.raises(ValueError):
        BackendLogin("alice", b"pw", starttls=False, xclient=("mail.example QUIT", 1))


UNSAFE_CREDENTIALS = [
    ("alice\r\nDELE 1", b"pw"),
    ("alice\nDELE 1", b"pw"),
    ("al\x00ice", b"pw"),
    ("alice", b"pw\r\nDELE 1"),
    ("alice", b"pw\nDELE 1"),
    ("alice", b"pw\rDELE 1"),
    ("alice", b"p\x00w"),
    ("", b"pw"),
]


@pytest.mark.parametrize("sasl_plain", [False, True], ids=["user_pass", "auth_plain"])
@pytest.mark.parametrize(("name", "password"), UNSAFE_CREDENTIALS)
def test_credentials_that_would_break_a_line_are_never_sent(
    name: str, password: bytes, sasl_plain: bool
) -> None:
    machine = BackendLogin(name, password, starttls=False, sasl_plain=sasl_plain)
    actions = machine.receive_line(b"+OK ready")
    assert actions == [Failed(FailureKind.AUTH, "unsafe_credentials", AUTH_FAILURE)]
    assert machine.done


@pytest.mark.parametrize("name", ["alice smith", "alice\t", "alice\x1b[2J", "alice\u2028"])
def test_user_takes_one_printable_argument(name: str) -> None:
    machine = BackendLogin(name, b"pw", starttls=False)
    actions = machine.receive_line(b"+OK ready")
    assert [type(a) for a in actions] == [Failed]
    assert sent(actions) == b""


def test_auth_plain_carries_a_name_with_a_space_inside_base64() -> None:
    """RFC 4616 allows any UTF-8 but NUL in the identity; the line stays one
    base64 word."""
    machine = BackendLogin("alice smith", b"pw", starttls=False, sasl_plain=True)
    command = sent(machine.receive_line(b"+OK ready"))
    assert command == b"AUTH PLAIN " + base64.b64encode(b"\0alice smith\0pw") + b"\r\n"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("login", "{local} x"),
        ("login", "{local}\r\nDELE 1"),
        ("master_login", "{login}*{master}\n"),
        ("master_user", "proxy master"),
        ("master_user", "master\rDELE 1"),
    ],
)
def test_a_record_that_would_put_a_second_word_in_user_is_refused(field: str, value: str) -> None:
    """Caught when the record is written (the CLI names the field), long
    before the login machine's last check."""
    record = {
        "name": "acme.example",
        "backends": [{"host": "mail.acme.internal"}],
        "auth": "local",
        "master_user": "proxymaster",
        "master_password_env": "ACME_MASTER",
        field: value,
    }
    with pytest.raises(RecordError) as error:
        parse_tenant(record)
    assert any(
        problem.startswith(field) and "one word" in problem for problem in error.value.problems
    )
