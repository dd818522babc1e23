"""What a login with an app password costs in argon2id checks, counted in this
process against a real Redis and a real Dovecot with a master user: one
check however many app passwords the user has, none for a repeated login of
the same device, and a revoked one forgotten as soon as the record change
arrives. (This process is not monkey-patched, so the change channel's
message is handed to the directory here as its subscriber would;
test_app_passwords.py revokes across two proxy processes through Redis.)"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import argon2
import pytest
from conftest import MASTER_ENV
from harness.dovecot import Dovecot
from harness.redis import RedisServer
from harness.users import MASTER_USERS, USERS

from pop3proxy import invalidation
from pop3proxy.apppasswords import RECORD_FIELD, new_app_password
from pop3proxy.config import AuthConfig, Config, DirectoryConfig
from pop3proxy.directory import Directory, RedisStore
from pop3proxy.interfaces import LoggedIn, LoginFailed
from pop3proxy.login import LoginService
from pop3proxy.net.backend import Dialer
from pop3proxy.tenants import parse_tenant

APPS = "apps.example"
DEVICES = 8


@pytest.fixture
def service(
    redis_server: RedisServer, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[LoginService, RedisStore]]:
    monkeypatch.setenv(MASTER_ENV, MASTER_USERS["proxymaster"])
    prefix = f"apcost-{uuid.uuid4().hex[:8]}"
    store = RedisStore(redis_server.client(), prefix)
    store.put(
        parse_tenant(
            {
                "name": APPS,
                "backends": [{"host": dovecot.host, "port": dovecot.port}],
                "app_passwords": "allowed",
                "master_user": "proxymaster",
                "master_password_env": MASTER_ENV,
            }
        )
    )
    directory_config = DirectoryConfig(redis_url=redis_server.url, key_prefix=prefix)
    directory = Directory(store, directory_config)
    config = Config(listeners=(), directory=directory_config, auth=AuthConfig(failure_delay=0.0))
    yield LoginService(config, directory, Dialer()), store
    for key in store.client.scan_iter(match=f"{prefix}:*"):
        store.client.delete(key)
    store.client.close()


@pytest.fixture
def argon2_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every argon2 verification in this process (the real one still runs)."""
    calls: list[int] = []
    lock = threading.Lock()
    real = argon2.PasswordHasher.verify

    def counting(self, stored, password):  # type: ignore[no-untyped-def]
        with lock:
            calls.append(1)
        return real(self, stored, password)

    monkeypatch.setattr(argon2.PasswordHasher, "verify", counting)
    return calls


def add(store: RedisStore, local: str, label: str) -> tuple[str, str]:
    """As ``user app-password add`` does: (id, password)."""
    record = store.get_user(APPS, local)
    taken = [p.id for p in record.app_passwords] if record else []
    password, entry = new_app_password(taken, label)

    def with_new(current):  # type: ignore[no-untyped-def]
        return {**(current or {}), entry.id: entry.stored()}

    store.update_user_field(APPS, local, RECORD_FIELD, with_new)
    return entry.id, password


def login(service: LoginService, user: str, password: str) -> LoggedIn:
    logged_in = service.login(user, password.encode())
    service.abandon(logged_in)  # closed without QUIT; slots back
    return logged_in


def checks_during(calls: list[int], action: Callable[[], object]) -> int:
    before = len(calls)
    action()
    return len(calls) - before


def test_one_argon2_check_with_many_app_passwords_and_none_when_cached(service, argon2_checks):
    login_service, store = service
    devices = [add(store, "alice", f"device {n}") for n in range(DEVICES)]
    last_id, last = devices[-1]
    user = f"alice@{APPS}"

    first: list[LoggedIn] = []
    assert checks_during(argon2_checks, lambda: first.append(login(login_service, user, last))) == 1
    assert (first[0].mechanism, first[0].credential) == ("app_password", last_id)
    assert first[0].credential_label == f"device {DEVICES - 1}"
    assert checks_during(argon2_checks, lambda: login(login_service, user, last)) == 0
    typed = last.upper().replace("-", " ")  # the same device, typed loosely: the same entry
    assert checks_during(argon2_checks, lambda: login(login_service, user, typed)) == 0

    wrong = last[:5] + "-aaaaa-aaaaa-aaaaa-aaaaa"
    with pytest.raises(LoginFailed) as refused:
        login(login_service, user, wrong)
    assert (refused.value.result, refused.value.detail) == ("bad_credentials", "wrong app password")

    # The mailbox password of a passthrough tenant: the backend judges it, no argon2.
    mailbox: list[LoggedIn] = []
    checks = checks_during(
        argon2_checks, lambda: mailbox.append(login(login_service, user, USERS["alice"]))
    )
    assert (checks, mailbox[0].mechanism, mailbox[0].credential) == (0, "password", None)


def test_a_cached_app_password_is_forgotten_when_revoked_and_never_serves_another_user(
    service, argon2_checks
):
    login_service, store = service
    _, password = add(store, "alice", "phone")
    alice, bob = f"alice@{APPS}", f"bob@{APPS}"
    login(login_service, alice, password)
    assert checks_during(argon2_checks, lambda: login(login_service, alice, password)) == 0

    with pytest.raises(LoginFailed):  # bob has no such app password: Dovecot says no
        login(login_service, bob, password)
    add(store, "bob", "phone")
    with pytest.raises(LoginFailed):
        login(login_service, bob, password)

    assert len(login_service.app_passwords.verified) == 1  # alice's phone, only
    store.update_user_field(APPS, "alice", RECORD_FIELD, lambda current: None)
    login_service.directory.on_change(invalidation.user_message(APPS, "alice"))
    with pytest.raises(LoginFailed) as refused:
        login(login_service, alice, password)
    assert refused.value.result == "bad_credentials"
    assert len(login_service.app_passwords.verified) == 0  # bob's never verified: no entry
