"""A mail client downloads its mailbox through the proxy, byte for byte.

Every comparison is against what the same Dovecot serves directly, so the
test shows the proxy adds and loses nothing, over every way in: POP3S, STLS,
and the plain listener, with poplib, curl and a raw socket.
"""

from __future__ import annotations

import poplib
import shutil
import subprocess

import pytest
from harness.dovecot import Dovecot
from harness.proxy import TENANT, ProxyProcess
from harness.users import USERS
from harness.wire import Pop3Wire

USER = "alice"
LOGIN = f"{USER}@{TENANT}"


def direct_retr(dovecot: Dovecot, user: str, count: int) -> list[bytes]:
    """Raw RETR replies (status line excluded) straight from Dovecot."""
    with Pop3Wire(dovecot.host, dovecot.port) as wire:
        wire.login(user, USERS[user])
        return [_retr(wire, number) for number in range(1, count + 1)]


def _retr(wire: Pop3Wire, number: int) -> bytes:
    status = wire.command(f"RETR {number}")
    assert status.startswith(b"+OK"), status
    return wire.read_multiline()


def test_pop3s_raw_bytes_match_dovecot(proxy: ProxyProcess, dovecot, fresh_mailbox, certs):
    messages = fresh_mailbox(USER)
    expected = direct_retr(dovecot, USER, len(messages))
    with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=certs.ssl_client_context()) as wire:
        assert wire.greeting.startswith(b"+OK")
        wire.login(LOGIN, USERS[USER])
        assert wire.command("STAT").startswith(f"+OK {len(messages)} ".encode())
        for number, direct in enumerate(expected, start=1):
            assert _retr(wire, number) == direct, f"message {number} differs"
        assert wire.command("QUIT").startswith(b"+OK")
    assert dovecot.message_count(USER) == len(messages)


def test_poplib_pop3_ssl_downloads_every_message(proxy, dovecot, fresh_mailbox, certs):
    messages = fresh_mailbox(USER)
    client = poplib.POP3_SSL(proxy.host, proxy.ports["pop3s"], context=certs.ssl_client_context())
    client.user(LOGIN)
    assert client.pass_(USERS[USER]).startswith(b"+OK")
    direct = poplib.POP3(dovecot.host, dovecot.port)
    direct.user(USER)
    direct.pass_(USERS[USER])
    assert client.uidl()[1] == direct.uidl()[1]
    assert client.list()[1] == direct.list()[1]
    for number in range(1, len(messages) + 1):
        assert client.retr(number)[1] == direct.retr(number)[1]
    assert client.top(1, 0)[1] == direct.top(1, 0)[1]
    client.quit()
    direct.quit()


def test_poplib_stls_then_login(proxy, dovecot, fresh_mailbox, certs):
    messages = fresh_mailbox(USER)
    client = poplib.POP3(proxy.host, proxy.ports["pop3"])
    assert "STLS" in client.capa()
    assert "USER" not in client.capa(), "USER must not be offered before STLS"
    client.stls(certs.ssl_client_context())
    assert "USER" in client.capa() and "STLS" not in client.capa()
    client.user(LOGIN)
    client.pass_(USERS[USER])
    assert client.stat()[0] == len(messages)
    assert client.retr(3)[1] == direct_lines(dovecot, 3)
    client.quit()


def direct_lines(dovecot: Dovecot, number: int) -> list[bytes]:
    direct = poplib.POP3(dovecot.host, dovecot.port)
    direct.user(USER)
    direct.pass_(USERS[USER])
    lines = direct.retr(number)[1]
    direct.quit()
    return lines


def test_auth_plain_with_continuation(proxy, fresh_mailbox, certs):
    fresh_mailbox(USER)
    import base64

    token = base64.b64encode(f"\0{LOGIN}\0{USERS[USER]}".encode())
    with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=certs.ssl_client_context()) as wire:
        assert wire.command("AUTH PLAIN") == b"+ \r\n"
        wire.send(token + b"\r\n")
        assert wire.read_line().startswith(b"+OK")
        assert wire.command("NOOP").startswith(b"+OK")


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", *args], capture_output=True, timeout=60
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("number", [1, 2, 4, 6])
def test_curl_pop3s_and_stls_match_direct(proxy, dovecot, fresh_mailbox, certs, number):
    fresh_mailbox(USER)
    ca = ["--cacert", str(certs.ca_file)]
    direct = curl("-u", f"{USER}:{USERS[USER]}", f"pop3://{dovecot.host}:{dovecot.port}/{number}")
    assert direct.returncode == 0, direct.stderr
    credentials = ["-u", f"{LOGIN}:{USERS[USER]}"]
    pop3s = curl(*ca, *credentials, f"pop3s://localhost:{proxy.ports['pop3s']}/{number}")
    assert pop3s.returncode == 0, pop3s.stderr
    assert pop3s.stdout == direct.stdout
    stls = curl(*ca, "--ssl-reqd", *credentials, f"pop3://localhost:{proxy.ports['pop3']}/{number}")
    assert stls.returncode == 0, stls.stderr
    assert stls.stdout == direct.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_lists_the_mailbox(proxy, fresh_mailbox, certs):
    messages = fresh_mailbox(USER)
    listing = curl(
        "--cacert",
        str(certs.ca_file),
        "-u",
        f"{LOGIN}:{USERS[USER]}",
        f"pop3s://localhost:{proxy.ports['pop3s']}/",
    )
    assert listing.returncode == 0, listing.stderr
    assert len(listing.stdout.splitlines()) == len(messages)


def test_plain_listener_relays_pipelined_commands(proxy, fresh_mailbox):
    messages = fresh_mailbox(USER)
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.send(f"USER {LOGIN}\r\nPASS {USERS[USER]}\r\nSTAT\r\nNOOP\r\n".encode())
        assert wire.read_line().startswith(b"+OK")
        assert wire.read_line().startswith(b"+OK Logged in")
        assert wire.read_line().startswith(f"+OK {len(messages)} ".encode())
        assert wire.read_line().startswith(b"+OK")
