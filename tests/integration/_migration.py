"""What the migrate tests share: tenant ``move.example`` on two real Dovecots
whose ``pop3_uidl_format`` differ, and a proxy in front of them."""

from __future__ import annotations

import json
import poplib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.dovecot import Dovecot
from harness.proxy import ProxyProcess, run_cli
from harness.redis import RedisServer
from harness.users import USERS

from pop3proxy.directory import RedisStore
from pop3proxy.tenants import parse_tenant

MOVING = "move.example"
NEW_UIDL_FORMAT = "%v.%u"
"""The new server's UIDLs: UIDVALIDITY.UID, where the old one has Dovecot's default."""


def message(number: int, subject: str | None = None, body: bytes = b"Hello.\n") -> bytes:
    headers = (
        f"From: Sender <sender@example.org>\nTo: alice@{MOVING}\n"
        f"Subject: {subject or f'message {number}'}\n"
        f"Message-ID: <move-{number}@pop3proxy.test>\n\n"
    )
    return headers.encode() + body


@dataclass
class Move:
    proxy: ProxyProcess
    store: RedisStore
    old: Dovecot
    new: Dovecot
    credentials: Path

    @property
    def to(self) -> str:
        return f"{self.new.host}:{self.new.port}"

    def cli(self, *args: str) -> tuple[int, str, str]:
        result = run_cli(self.proxy.config_path, "migrate", *args)
        return result.returncode, result.stdout, result.stderr

    def deliver(self, user: str, old: list[bytes], new: list[bytes]) -> None:
        self.old.reset_mailbox(user, old)
        self.new.reset_mailbox(user, new)


def set_up_move(
    make_dovecot: Callable[..., Dovecot],
    make_proxy: Callable[..., ProxyProcess],
    redis_server: RedisServer,
    tmp_path: Path,
) -> Move:
    """Tenant ``move.example`` on two Dovecots (failover: the old one first),
    read with a credentials file (a passthrough tenant has no master)."""
    old = make_dovecot()
    new = make_dovecot(uidl_format=NEW_UIDL_FORMAT)
    proxy = make_proxy()
    store = RedisStore(redis_server.client(), proxy.config["directory"]["key_prefix"])
    backends = [{"host": server.host, "port": server.port} for server in (old, new)]
    store.put(parse_tenant({"name": MOVING, "backends": backends, "policy": "failover"}))
    credentials = tmp_path / "credentials.yaml"
    credentials.write_text(
        json.dumps({f"{user}@{MOVING}": password for user, password in USERS.items()})
    )
    return Move(proxy, store, old, new, credentials)


def uidls(server: Dovecot, user: str) -> list[bytes]:
    """The UIDLs ``server`` gives ``user``'s messages, in order (closed without QUIT)."""
    client = poplib.POP3(server.host, server.port, timeout=10)
    try:
        client.user(user)
        client.pass_(USERS[user])
        return [line.split()[1] for line in client.uidl()[1]]
    finally:
        client.sock.close()
