"""Fixtures for tests that run the proxy: one shared proxy on Redis, and a factory.

The shared proxy knows these tenants (stored through the real CLI):

- ``acme.example``: the shared Dovecot, login ``{local}``
- ``off.example``: the same backend, but disabled
- ``down.example``: a backend port where nothing listens
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.certs import Certs
from harness.dovecot import Dovecot
from harness.proxy import TENANT, ProxyProcess, run_cli, store_local_tenant
from harness.redis import RedisServer
from harness.users import MASTER_USERS

from pop3proxy.directory import RedisStore
from pop3proxy.tenants import parse_tenant

MASTER_ENV = "POP3PROXY_TEST_MASTER_PASSWORD"
"""Where local-auth tenants of the tests find the master password."""
CHEAP_HASH = {"argon2_time_cost": 1, "argon2_memory_cost": 1024}
"""argon2 parameters that keep a test's logins fast."""

APPS = "apps.example"
"""The tenant :func:`app_proxies` stores: app passwords in front of the shared Dovecot."""

DEAD_BACKEND = "127.0.0.1:1"
"""Port 1 (tcpmux) is privileged and unused: a free ephemeral port could be
taken later by a server another test starts."""


def tenant_commands(dovecot: Dovecot) -> list[tuple[str, ...]]:
    backend = f"{dovecot.host}:{dovecot.port}"
    return [
        ("tenant", "set", TENANT, "--backend", backend),
        ("tenant", "set", "off.example", "--backend", backend, "--disabled"),
        ("tenant", "set", "down.example", "--backend", DEAD_BACKEND),
    ]


def store_tenants(config_path: Path, dovecot: Dovecot) -> None:
    """Through the real CLI, as an operator would."""
    for args in tenant_commands(dovecot):
        result = run_cli(config_path, *args)
        assert result.returncode == 0, result.stderr


def store_tenants_quickly(redis_server: RedisServer, prefix: str, dovecot: Dovecot) -> None:
    """The same records written in process: a CLI start costs most of a second,
    and the private proxies need them dozens of times per run."""
    store = RedisStore(redis_server.client(), prefix)
    for args in tenant_commands(dovecot):
        host, _, port = args[4].rpartition(":")
        record = {"name": args[2], "backends": [{"host": host, "port": int(port)}]}
        store.put(parse_tenant({**record, "enabled": "--disabled" not in args}))
    store.client.close()


@pytest.fixture(scope="session")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    certs: Certs,
    redis_server: RedisServer,
    dovecot: Dovecot,
) -> Iterator[ProxyProcess]:
    """The shared proxy: Redis directory, three listeners, default timeouts."""
    workdir = tmp_path_factory.mktemp("proxy")
    server = ProxyProcess(
        workdir,
        certs,
        {"directory": {"store": "redis", "redis_url": redis_server.url, "key_prefix": "shared"}},
    )
    store_tenants(server.config_path, dovecot)
    with server:
        yield server


@pytest.fixture
def make_proxy(
    tmp_path: Path, certs: Certs, redis_server: RedisServer, dovecot: Dovecot
) -> Iterator[Callable[..., ProxyProcess]]:
    """``make_proxy(overrides)``: a private proxy for tests that change settings or
    stop it; stopped at the end. Its tenants are those of the shared proxy."""
    started: list[ProxyProcess] = []

    def make(
        overrides: dict[str, Any] | None = None, *, start: bool = True, tenants: bool = True
    ) -> ProxyProcess:
        prefix = f"t{len(started)}-{tmp_path.name}"
        config = {
            "directory": {"store": "redis", "redis_url": redis_server.url, "key_prefix": prefix}
        }
        for key, value in (overrides or {}).items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        server = ProxyProcess(tmp_path / f"proxy{len(started)}", certs, config)
        if tenants and config["directory"].get("store") == "redis":
            store_tenants_quickly(redis_server, server.config["directory"]["key_prefix"], dovecot)
        started.append(server)
        return server.start() if start else server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def make_local_tenant(
    make_proxy: Callable[..., ProxyProcess], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., ProxyProcess]:
    """``make_local_tenant(dovecot, failure_delay=..., **fields)``: a private proxy
    whose tenant ``local.example`` (on ``dovecot``) judges passwords itself and
    logs in as Dovecot's master user; alice's proxy password is ``local-pass``."""

    def make(dovecot: Dovecot, *, failure_delay: str = "0s", **fields: Any) -> ProxyProcess:
        monkeypatch.setenv(MASTER_ENV, MASTER_USERS["proxymaster"])
        proxy = make_proxy({"auth": {**CHEAP_HASH, "failure_delay": failure_delay}})
        store_local_tenant(
            proxy,
            (dovecot.host, dovecot.port),
            tmp_path,
            {"alice": "local-pass"},
            master_password_env=MASTER_ENV,
            **fields,
        )
        return proxy

    return make


@pytest.fixture
def app_proxies(
    make_proxy: Callable[..., ProxyProcess], monkeypatch: pytest.MonkeyPatch, dovecot
) -> Callable[..., list[ProxyProcess]]:
    """``app_proxies(mode, replicas=1, **auth)``: proxies sharing one Redis key
    prefix (replicas of one deployment) that know tenant ``apps.example``
    with ``app_passwords: mode``, stored through ``tenant set``."""

    def make(mode: str, replicas: int = 1, **auth: Any) -> list[ProxyProcess]:
        monkeypatch.setenv(MASTER_ENV, MASTER_USERS["proxymaster"])
        shared = {
            "directory": {"key_prefix": f"apps-{uuid.uuid4().hex[:8]}"},
            "auth": {"failure_delay": "0s", **auth},
        }
        proxies = [make_proxy(shared) for _ in range(replicas)]
        stored = run_cli(
            proxies[0].config_path,
            *("tenant", "set", APPS, "--backend", f"{dovecot.host}:{dovecot.port}"),
            *("--app-passwords", mode, "--master-user", "proxymaster"),
            *("--master-password-env", MASTER_ENV),
        )
        assert stored.returncode == 0, stored.stderr
        return proxies

    return make
