"""Rule 1: the backend deletes mail only when the client sent DELE and QUIT.

Each test marks messages deleted, ends the session some way, waits for
Dovecot to log the end of that backend session, and counts the files in the
Maildir. Dovecot's own log line says whether it entered UPDATE ("Logged
out") or was simply disconnected ("Connection closed").
"""

from __future__ import annotations

import signal

from harness.ports import wait_until
from harness.proxy import TENANT
from harness.users import USERS
from harness.wire import Pop3Wire

USER = "dave"
LOGIN = f"{USER}@{TENANT}"


def _delete_two(wire: Pop3Wire) -> None:
    wire.login(LOGIN, USERS[USER])
    assert wire.command("DELE 1").startswith(b"+OK")
    assert wire.command("DELE 2").startswith(b"+OK")


def test_dele_and_quit_deletes(proxy, dovecot, fresh_mailbox):
    count = len(fresh_mailbox(USER))
    mark = dovecot.log_mark()
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        _delete_two(wire)
        assert wire.command("QUIT").startswith(b"+OK")
        assert wire.read_line() == b"", "the session ends after QUIT"
    dovecot.wait_for_log(rf"pop3\({USER}\).*Disconnected: Logged out.*del=2/", since=mark)
    assert dovecot.message_count(USER) == count - 2


def test_dropped_client_deletes_nothing(proxy, dovecot, fresh_mailbox):
    count = len(fresh_mailbox(USER))
    mark = dovecot.log_mark()
    wire = Pop3Wire(proxy.host, proxy.ports["plain"])
    _delete_two(wire)
    wire.send(b"QUI")  # half a QUIT is no QUIT
    wire.drop()
    dovecot.wait_for_log(rf"pop3\({USER}\).*Disconnected: Connection closed.*del=0/", since=mark)
    assert dovecot.message_count(USER) == count


def test_idle_timeout_deletes_nothing(make_proxy, dovecot, fresh_mailbox):
    proxy = make_proxy({"timeouts": {"idle": "1s"}})
    count = len(fresh_mailbox(USER))
    mark = dovecot.log_mark()
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        _delete_two(wire)
        assert wire.read_line() == b"", "the proxy closes an idle session"
    dovecot.wait_for_log(rf"pop3\({USER}\).*Disconnected: Connection closed.*del=0/", since=mark)
    assert dovecot.message_count(USER) == count
    wait_until(lambda: any(s.get("end") == "idle_timeout" for s in proxy.sessions()), 5)


def test_killed_proxy_deletes_nothing(make_proxy, dovecot, fresh_mailbox):
    proxy = make_proxy()
    count = len(fresh_mailbox(USER))
    mark = dovecot.log_mark()
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        _delete_two(wire)
        proxy.signal(signal.SIGKILL)
        assert wire.read_line() == b""
    dovecot.wait_for_log(rf"pop3\({USER}\).*Disconnected: Connection closed.*del=0/", since=mark)
    assert dovecot.message_count(USER) == count


def test_drain_cuts_leftover_sessions_without_quit(make_proxy, dovecot, fresh_mailbox):
    proxy = make_proxy({"timeouts": {"drain": "1s"}})
    count = len(fresh_mailbox(USER))
    mark = dovecot.log_mark()
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        _delete_two(wire)
        proxy.signal(signal.SIGTERM)
        assert wire.read_line() == b"", "cut after the drain timeout"
    assert proxy.wait(10) == 0
    dovecot.wait_for_log(rf"pop3\({USER}\).*Disconnected: Connection closed.*del=0/", since=mark)
    assert dovecot.message_count(USER) == count
