"""Who gets in, who does not, and what the ones who do not are told.

Unknown tenant, disabled tenant and a wrong password must be
indistinguishable to a client; a failure on our side must say SYS/TEMP.
"""

from __future__ import annotations

import contextlib
import socket
import ssl

import pytest
from harness.proxy import TENANT
from harness.proxy import attempt_login as attempt
from harness.users import USERS, WRONG_PASSWORD
from harness.wire import Pop3Wire

AUTH_FAILED = b"-ERR [AUTH] Authentication failed\r\n"


@pytest.mark.parametrize(
    ("user", "password"),
    [
        (f"alice@{TENANT}", WRONG_PASSWORD),
        ("nobody@" + TENANT, WRONG_PASSWORD),
        ("alice@unknown.example", USERS["alice"]),
        ("alice@off.example", USERS["alice"]),
        ("alice", USERS["alice"]),
    ],
    ids=["wrong-password", "unknown-user", "unknown-tenant", "disabled-tenant", "no-tenant"],
)
def test_every_refusal_looks_the_same(proxy, user, password):
    assert attempt(proxy, user, password) == AUTH_FAILED


def test_unreachable_backend_is_a_temporary_failure(proxy):
    reply = attempt(proxy, "alice@down.example", USERS["alice"])
    assert reply.startswith(b"-ERR [SYS/TEMP]")


def test_failed_login_can_be_retried_on_the_same_connection(proxy, fresh_mailbox):
    fresh_mailbox("bob")
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.command(f"USER bob@{TENANT}")
        assert wire.command(f"PASS {WRONG_PASSWORD}") == AUTH_FAILED
        wire.login(f"bob@{TENANT}", USERS["bob"])
        assert wire.command("STAT").startswith(b"+OK")


def test_require_tls_refuses_plaintext_credentials(proxy):
    with Pop3Wire(proxy.host, proxy.ports["pop3"]) as wire:
        reply = wire.command(f"USER alice@{TENANT}")
        assert reply.startswith(b"-ERR") and b"STLS" in reply
        assert wire.command("AUTH PLAIN").startswith(b"-ERR")
        assert wire.command("NOOP").startswith(b"+OK"), "the session goes on"


def test_stls_discards_injected_plaintext(proxy, certs):
    """STARTTLS command injection: CAPA sent with STLS in one packet must vanish."""
    with Pop3Wire(proxy.host, proxy.ports["pop3"]) as wire:
        wire.send(b"STLS\r\nCAPA\r\n")
        assert wire.read_line().startswith(b"+OK")
        wire.sock = certs.ssl_client_context().wrap_socket(wire.sock, server_hostname="localhost")
        wire._stream = wire.sock.makefile("rb")
        assert wire.command("NOOP") == b"+OK\r\n", "the injected CAPA must not be answered"


def test_tls_1_2_is_accepted(proxy, certs):
    context = certs.ssl_client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=context) as wire:
        assert wire.sock.version() == "TLSv1.2"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_below_1_2_is_refused(proxy, certs):
    context = certs.ssl_client_context()
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        Pop3Wire(proxy.host, proxy.ports["pop3s"], context=context)


def test_apop_and_out_of_state_commands_get_clear_errors(proxy):
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        assert b"APOP is not supported" in wire.command("APOP alice 0123456789abcdef")
        assert b"not allowed before login" in wire.command("RETR 1")
        assert wire.command("BOGUS").startswith(b"-ERR")
        assert wire.command("CAPA").startswith(b"+OK")


def test_overlong_line_gets_err_and_session_goes_on(proxy):
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.send(b"NOOP " + b"x" * 100_000 + b"\r\n")
        assert wire.read_line() == b"-ERR Line too long\r\n"
        assert wire.command("NOOP") == b"+OK\r\n"


def test_error_budget_ends_the_session(proxy):
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        replies = [wire.command("BOGUS") for _ in range(10)]
        assert all(reply.startswith(b"-ERR") for reply in replies)
        assert wire.read_line().startswith(b"-ERR Too many errors")
        assert wire.read_line() == b"", "the proxy closes the connection"


def test_garbage_instead_of_tls_hello_is_closed_and_others_go_on(proxy, certs, fresh_mailbox):
    fresh_mailbox("carol")
    with socket.create_connection((proxy.host, proxy.ports["pop3s"]), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        with contextlib.suppress(ConnectionResetError):  # a reset is a close too
            while raw.recv(4096):
                pass  # a TLS alert may come first; then the proxy must close
    with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=certs.ssl_client_context()) as wire:
        wire.login(f"carol@{TENANT}", USERS["carol"])
        assert wire.command("STAT").startswith(b"+OK")


def test_tls_sessions_resume(proxy, certs):
    """A polling mail client reconnects every few minutes: the second
    handshake resumes the first session instead of a full key exchange."""
    context = certs.ssl_client_context()
    with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=context) as first:
        first.command("NOOP")  # TLS 1.3 tickets arrive after the handshake
        session = first.sock.session
    raw = socket.create_connection((proxy.host, proxy.ports["pop3s"]), timeout=10)
    with context.wrap_socket(raw, server_hostname="localhost", session=session) as second:
        assert second.recv(100).startswith(b"+OK")
        assert second.session_reused
