"""The harness itself, proven with real clients against the real servers.

What Dovecot 2.3 serves for a Maildir file stored with LF line ends (checked
byte for byte below, through ``Pop3Wire``):

* every LF becomes CRLF on the wire (an existing CRLF is not doubled);
* a line starting with "." gets one more "." (a lone "." goes out as "..");
* a message that does not end with a line end gets a CRLF before ".\\r\\n";
* LIST and the RETR "+OK <n> octets" line count the CRLF form of the message.

So ``poplib.retr()`` returns ``mailbox.retr_lines(message)`` (CRLF split,
one leading dot removed), and the raw reply body equals
``mailbox.retr_wire(message)``.
"""

from __future__ import annotations

import poplib
import re
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from harness.certs import Certs, make_other_ca_certs
from harness.dovecot import Dovecot
from harness.mailbox import SAMPLE_IDS, crlf, retr_lines, retr_wire, sample_messages
from harness.process import group_alive
from harness.redis import RedisServer
from harness.users import MASTER_USERS, USERS, WRONG_PASSWORD
from harness.wire import Pop3Wire

FreshMailbox = Callable[[str], list[bytes]]

UIDL = re.compile(rb"^[0-9a-f]{16}$")  # %08Xu%08Xv: Dovecot's %X is lower-case hex


def _login(client: poplib.POP3, user: str) -> None:
    client.user(user)
    client.pass_(USERS[user])


def _base_names(paths: list[Path]) -> set[str]:
    """Maildir base names: Dovecot appends ":2,<flags>" when it moves a file to cur/."""
    return {path.name.split(":")[0] for path in paths}


def test_poplib_retrieves_every_sample_unchanged(dovecot: Dovecot, fresh_mailbox: FreshMailbox):
    messages = fresh_mailbox("alice")
    client = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    try:
        _login(client, "alice")
        assert client.stat() == (len(messages), sum(len(crlf(m)) for m in messages))
        _, uidls, _ = client.uidl()
        assert all(UIDL.match(line.split()[1]) for line in uidls)
        for number, (name, message) in enumerate(zip(SAMPLE_IDS, messages, strict=True), 1):
            status, lines, _ = client.retr(number)
            assert status == f"+OK {len(crlf(message))} octets".encode(), name
            assert lines == retr_lines(message), name
        client.quit()
    finally:
        client.close()


def test_wire_bytes_are_crlf_and_dot_stuffed(dovecot: Dovecot, fresh_mailbox: FreshMailbox):
    unterminated = b"Subject: no final newline\n\nlast line without LF"
    messages = [*fresh_mailbox("erin"), unterminated, b"Subject: crlf\r\n\r\n.body\r\n"]
    dovecot.reset_mailbox("erin", messages)
    with Pop3Wire(dovecot.host, dovecot.port) as pop:
        pop.login("erin", USERS["erin"])
        for number, message in enumerate(messages, 1):
            assert pop.command(f"RETR {number}").startswith(b"+OK")
            assert pop.read_multiline() == retr_wire(message), number
        assert retr_wire(unterminated).endswith(b"without LF\r\n.\r\n")
        assert pop.command("QUIT").startswith(b"+OK")


def test_pop3s_with_the_test_ca(dovecot: Dovecot, certs: Certs, fresh_mailbox: FreshMailbox):
    messages = fresh_mailbox("bob")
    assert dovecot.pop3s_port is not None
    client = poplib.POP3_SSL(
        "localhost", dovecot.pop3s_port, context=certs.ssl_client_context(), timeout=10
    )
    try:
        _login(client, "bob")
        assert client.stat()[0] == len(messages)
        assert client.retr(1)[1] == retr_lines(messages[0])
        client.quit()
    finally:
        client.close()


def test_pop3s_refuses_a_certificate_from_another_ca(dovecot: Dovecot, tmp_path: Path):
    other = make_other_ca_certs(tmp_path)
    assert dovecot.pop3s_port is not None
    with pytest.raises(ssl.SSLCertVerificationError):
        poplib.POP3_SSL(
            dovecot.host, dovecot.pop3s_port, context=other.ssl_client_context(), timeout=10
        )


def test_stls_on_the_plain_port(dovecot: Dovecot, certs: Certs, fresh_mailbox: FreshMailbox):
    messages = fresh_mailbox("carol")
    client = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    try:
        assert "STLS" in client.capa()
        client.stls(certs.ssl_client_context())
        assert isinstance(client.sock, ssl.SSLSocket)
        _login(client, "carol")
        assert client.stat()[0] == len(messages)
        client.quit()
    finally:
        client.close()


def test_wrong_password_is_refused(dovecot: Dovecot):
    client = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    try:
        client.user("alice")
        with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
            client.pass_(WRONG_PASSWORD)
    finally:
        client.close()


def test_master_user_logs_in_as_another_user(dovecot: Dovecot, fresh_mailbox: FreshMailbox):
    messages = fresh_mailbox("dave")
    (master, password), *_ = MASTER_USERS.items()
    with Pop3Wire(dovecot.host, dovecot.port) as pop:
        pop.login(f"dave*{master}", password)
        assert pop.command("STAT").startswith(f"+OK {len(messages)} ".encode())


def test_dele_and_quit_removes_the_file(dovecot: Dovecot, fresh_mailbox: FreshMailbox):
    messages = fresh_mailbox("carol")
    first = _base_names(dovecot.message_files("carol")[:1])
    client = poplib.POP3(dovecot.host, dovecot.port, timeout=10)
    try:
        _login(client, "carol")
        client.dele(1)
        client.quit()  # UPDATE state: Dovecot expunges before answering QUIT
    finally:
        client.close()
    remaining = dovecot.message_files("carol")
    assert len(remaining) == len(messages) - 1
    assert not first & _base_names(remaining)


def test_dele_then_vanishing_client_removes_nothing(dovecot: Dovecot, fresh_mailbox: FreshMailbox):
    messages = fresh_mailbox("dave")
    before = _base_names(dovecot.message_files("dave"))
    mark = dovecot.log_mark()
    pop = Pop3Wire(dovecot.host, dovecot.port)
    pop.login("dave", USERS["dave"])
    assert pop.command("DELE 1").startswith(b"+OK")
    pop.drop()  # no QUIT: the session never reaches UPDATE
    # Only once Dovecot has logged the session's end is "nothing deleted" a fact;
    # its own count says so too (a QUIT would log "Logged out ... del=1/6").
    dovecot.wait_for_log(r"pop3\(dave\).*Disconnected: Connection closed.*del=0/", since=mark)
    assert _base_names(dovecot.message_files("dave")) == before
    with Pop3Wire(dovecot.host, dovecot.port) as pop:
        pop.login("dave", USERS["dave"])
        assert pop.command("STAT").startswith(f"+OK {len(messages)} ".encode())


def test_redis_ping_and_restart_on_the_same_port():
    """A private server: restarting the shared one would wipe other tests' tenants."""
    with RedisServer() as redis_server:
        _ping_and_restart(redis_server)


def _ping_and_restart(redis_server: RedisServer) -> None:
    client = redis_server.client()
    assert client.ping()
    client.set("harness:key", "value")
    port, pid = redis_server.port, redis_server.pid
    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.pid != pid
    assert redis_server.url == f"redis://127.0.0.1:{port}/0"
    fresh = redis_server.client()
    assert fresh.ping()
    assert fresh.get("harness:key") is None  # nothing persisted
    client.close()
    fresh.close()


def test_haproxy_listener_and_trusted_networks(make_dovecot: Callable[..., Dovecot]):
    server = make_dovecot(haproxy_port=True, login_trusted_networks="127.0.0.0/8")
    server.reset_mailbox("alice", sample_messages()[:1])
    assert server.haproxy_port is not None
    mark = server.log_mark()
    header = f"PROXY TCP4 192.0.2.10 127.0.0.1 40000 {server.haproxy_port}\r\n".encode()
    with Pop3Wire(server.host, server.haproxy_port, proxy_header=header) as pop:
        assert pop.greeting.startswith(b"+OK")
        pop.login("alice", USERS["alice"])
        assert pop.command("QUIT").startswith(b"+OK")
    server.wait_for_log(r"Login: user=<alice>.*rip=192\.0\.2\.10", since=mark)


@pytest.mark.skipif(shutil.which("dovecot") is None, reason="'dovecot' is not installed")
def test_stop_leaves_no_dovecot_process(certs: Certs):
    with Dovecot({"zoe": "zoe-secret"}, certs=certs) as server:
        pid = server.pid
        assert pid is not None and group_alive(pid)
    assert not group_alive(pid)
    assert not server.root.exists()
