"""Timeouts, drain and the health endpoints, seen from outside the process."""

from __future__ import annotations

import signal
import socket
import time

import pytest
from harness.mailbox import retr_wire
from harness.ports import port_is_open, wait_until
from harness.proxy import TENANT
from harness.users import USERS
from harness.wire import Pop3Wire


def test_auth_timeout_says_why_and_closes(make_proxy):
    proxy = make_proxy({"timeouts": {"auth": "1s"}})
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        assert wire.read_line() == b"-ERR [SYS/TEMP] Authorization timed out\r\n"
        assert wire.read_line() == b""


def test_at_max_connections_new_clients_wait_for_a_free_slot(make_proxy):
    """With ``limits.max_connections: 2`` a third client is left in the kernel's
    accept queue (no greeting, no refusal) until one of the two leaves; then it
    is served."""
    proxy = make_proxy({"limits": {"max_connections": 2}})
    first = Pop3Wire(proxy.host, proxy.ports["plain"])
    second = Pop3Wire(proxy.host, proxy.ports["pop3"])
    third = socket.create_connection((proxy.host, proxy.ports["plain"]), timeout=0.5)
    try:
        with pytest.raises(TimeoutError):
            third.recv(100)  # not accepted: nothing to read within the half second
        first.drop()
        third.settimeout(5)
        assert third.recv(100).startswith(b"+OK")
    finally:
        third.close()
        second.drop()


def test_sigterm_finishes_running_download_and_refuses_new(make_proxy, fresh_mailbox, dovecot):
    """SIGTERM while a 5 MB RETR is in flight: the download completes byte for byte, a
    client still in AUTHORIZATION is told to retry, a new connection is refused, and the
    process exits 0 as soon as the last session ends, well within ``timeouts.drain``."""
    drain = 20.0
    proxy = make_proxy({"timeouts": {"drain": f"{drain:g}s"}})
    messages = fresh_mailbox("erin")
    with (
        Pop3Wire(proxy.host, proxy.ports["plain"]) as waiting,
        Pop3Wire(proxy.host, proxy.ports["plain"]) as wire,
    ):
        wire.login(f"erin@{TENANT}", USERS["erin"])
        assert wire.command(f"RETR {len(messages)}").startswith(b"+OK")
        first = wire.read_line()  # the download is running
        signalled = time.monotonic()
        proxy.signal(signal.SIGTERM)
        assert waiting.read_line() == b"-ERR [SYS/TEMP] Server is restarting, please reconnect\r\n"
        wait_until(lambda: not port_is_open(proxy.host, proxy.ports["plain"]), 5)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.ports["plain"]), timeout=2)
        assert proxy.http_get("/readyz")[0] == 503
        body = first + wire.read_multiline()
        assert len(body) > 5_000_000
        assert body == retr_wire(messages[-1])
        assert wire.command("QUIT").startswith(b"+OK")
    assert proxy.wait(drain) == 0
    assert time.monotonic() - signalled < drain
    assert any(r["message"] == "stopped" for r in proxy.log_records())


def test_second_signal_cuts_sessions_without_quit(make_proxy, fresh_mailbox, dovecot):
    """A second SIGTERM (or SIGINT) ends a drain at once: the session is closed towards the
    backend without QUIT, so the message marked for deletion is still there; exit 0."""
    proxy = make_proxy({"timeouts": {"drain": "60s"}})
    messages = fresh_mailbox("carol")
    mark = dovecot.log_mark()
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.login(f"carol@{TENANT}", USERS["carol"])
        assert wire.command("DELE 1").startswith(b"+OK")
        proxy.signal(signal.SIGTERM)
        wait_until(lambda: proxy.http_get("/readyz")[0] != 200, 5)
        assert wire.command("NOOP").startswith(b"+OK")  # still relaying while draining
        started = time.monotonic()
        proxy.signal(signal.SIGINT)
        assert proxy.wait(10) == 0
        assert time.monotonic() - started < 10
        assert wire.read_line() == b""
    dovecot.wait_for_log(r"pop3\(carol\).*Disconnected: Connection closed.*del=0/", since=mark)
    assert dovecot.message_count("carol") == len(messages)


def test_health_and_readiness(proxy):
    assert proxy.http_get("/healthz") == (200, "ok\n")
    assert proxy.http_get("/readyz") == (200, "ready\n")
    assert proxy.http_get("/nope")[0] == 404


def test_readyz_false_when_redis_is_down_and_cache_is_empty(make_proxy, redis_server):
    proxy = make_proxy({"directory": {"redis_url": "redis://127.0.0.1:1/0"}}, tenants=False)
    assert proxy.http_get("/readyz")[0] == 503
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        wire.command(f"USER alice@{TENANT}")
        assert wire.command(f"PASS {USERS['alice']}").startswith(b"-ERR [SYS/TEMP]")


@pytest.mark.parametrize("listener", ["plain", "pop3s"])
def test_reset_connections_do_not_disturb_the_proxy(proxy, certs, listener):
    for _ in range(50):
        sock = socket.create_connection((proxy.host, proxy.ports[listener]))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    context = certs.ssl_client_context() if listener == "pop3s" else None
    with Pop3Wire(proxy.host, proxy.ports[listener], context=context) as wire:
        assert wire.greeting.startswith(b"+OK")
