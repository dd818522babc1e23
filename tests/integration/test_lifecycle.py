"""Timeouts, drain and the health endpoints, seen from outside the process."""

from __future__ import annotations

import signal
import socket

import pytest
from harness.ports import port_is_open, wait_until
from harness.proxy import TENANT
from harness.users import USERS
from harness.wire import Pop3Wire


def test_auth_timeout_says_why_and_closes(make_proxy):
    proxy = make_proxy({"timeouts": {"auth": "1s"}})
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        assert wire.read_line() == b"-ERR [SYS/TEMP] Authorization timed out\r\n"
        assert wire.read_line() == b""


def test_sigterm_finishes_running_download_and_refuses_new(make_proxy, fresh_mailbox, dovecot):
    proxy = make_proxy({"timeouts": {"drain": "20s"}})
    messages = fresh_mailbox("erin")
    with (
        Pop3Wire(proxy.host, proxy.ports["plain"]) as waiting,
        Pop3Wire(proxy.host, proxy.ports["plain"]) as wire,
    ):
        wire.login(f"erin@{TENANT}", USERS["erin"])
        proxy.signal(signal.SIGTERM)
        assert waiting.read_line() == b"-ERR [SYS/TEMP] Server is restarting, please reconnect\r\n"
        wait_until(lambda: not port_is_open(proxy.host, proxy.ports["plain"]), 5)
        assert proxy.http_get("/readyz")[0] == 503
        status = wire.command(f"RETR {len(messages)}")
        assert status.startswith(b"+OK")
        body = wire.read_multiline()
        assert len(body) > 5_000_000
        assert wire.command("QUIT").startswith(b"+OK")
    assert proxy.wait(15) == 0


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
