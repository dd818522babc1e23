"""XCLIENT in the backend login machine: when it is sent, and what is never lost."""

from __future__ import annotations

import pytest

from pop3proxy.protocol.backend import BackendLogin, LoggedIn, SendToBackend, StartBackendTLS

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
