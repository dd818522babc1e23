"""The tenant directory against a real Redis: invalidation across proxies,
serve-stale through an outage, corrupt records, per-user pins, credentials.

Every proxy here is a real ``pop3proxy serve`` process and every change goes
through the real CLI, as an operator would make it.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import pytest
import yaml
from harness.certs import Certs
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess, run_cli
from harness.redis import RedisServer
from harness.sentinel import RedisNode
from harness.users import USERS
from harness.wire import Pop3Wire
from integration.conftest import DEAD_BACKEND, store_tenants

AUTH_FAILED = b"-ERR [AUTH] Authentication failed\r\n"
PROPAGATION = 1.0
"""A CLI change must reach every proxy within this long (the issue's bound)."""


def attempt(proxy: ProxyProcess, user: str, password: str | None = None) -> bytes:
    """USER/PASS on the plaintext listener; the PASS reply. Logs out if it worked."""
    local = user.partition("@")[0]
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        assert wire.command(f"USER {user}").startswith(b"+OK")
        reply = wire.command(f"PASS {password or USERS[local]}")
        if reply.startswith(b"+OK"):
            # A tenant disabled meanwhile may have its sessions ended under us.
            with contextlib.suppress(ConnectionError):
                wire.command("QUIT")
        return reply


def metric(proxy: ProxyProcess, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.M)
    match = pattern.search(proxy.metrics())
    return float(match.group(1)) if match else 0.0


def messages(proxy: ProxyProcess, text: str) -> list[dict]:
    return [r for r in proxy.log_records() if r.get("message", "").startswith(text)]


def cli(config: Path, *args: str) -> str:
    result = run_cli(config, *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def within(seconds: float, predicate, message: str) -> float:
    """Wait for ``predicate``; returns how long it took (fails past ``seconds``)."""
    started = time.monotonic()
    wait_until(predicate, seconds, message=message)
    return time.monotonic() - started


def test_cli_change_reaches_two_proxies_within_a_second(make_proxy, dovecot):
    """cache_ttl is an hour: only the pub/sub invalidation can explain the change."""
    shared = {"directory": {"key_prefix": "twoproxies", "cache_ttl": "1h"}}
    first = make_proxy(shared)
    second = make_proxy(shared, tenants=False)
    for proxy in (first, second):
        assert attempt(proxy, f"alice@{TENANT}").startswith(b"+OK")  # cached now

    cli(first.config_path, "tenant", "set", TENANT, "--backend", DEAD_BACKEND)
    for proxy in (first, second):
        within(
            PROPAGATION,
            lambda p=proxy: attempt(p, f"alice@{TENANT}").startswith(b"-ERR [SYS/TEMP]"),
            "the new (dead) backend to be used",
        )

    cli(first.config_path, "tenant", "delete", TENANT)
    for proxy in (first, second):
        within(
            PROPAGATION,
            lambda p=proxy: attempt(p, f"alice@{TENANT}") == AUTH_FAILED,
            "the deleted tenant to be refused",
        )

    backend = f"{dovecot.host}:{dovecot.port}"
    cli(first.config_path, "tenant", "set", TENANT, "--backend", backend)
    for proxy in (first, second):
        within(
            PROPAGATION,
            lambda p=proxy: attempt(p, f"alice@{TENANT}").startswith(b"+OK"),
            "the restored tenant to log in",
        )


def test_redis_outage_serves_cached_tenants_and_recovers(tmp_path, certs, dovecot):
    """Stop the real redis-server mid-run, then start it again on the same port."""
    with RedisServer() as redis_server:
        proxy = ProxyProcess(
            tmp_path / "proxy",
            certs,
            {
                "directory": {
                    "redis_url": redis_server.url,
                    "key_prefix": "outage",
                    "cache_ttl": "1s",
                    "redis_timeout": "500ms",
                }
            },
        )
        store_tenants(proxy.config_path, dovecot)
        with proxy:
            assert attempt(proxy, f"alice@{TENANT}").startswith(b"+OK")
            with Pop3Wire(proxy.host, proxy.ports["plain"]) as relaying:
                relaying.login(f"bob@{TENANT}", USERS["bob"])

                redis_server.stop()

                # Expired (ttl 1 s) but within stale_ttl: served from the last record.
                def served_stale() -> bool:
                    assert attempt(proxy, f"alice@{TENANT}").startswith(b"+OK")
                    stale = '{source="stale"}'
                    return metric(proxy, "pop3proxy_directory_lookups_total", stale) > 0

                wait_until(served_stale, 10, message="a login served from the stale record")
                for _ in range(5):
                    assert attempt(proxy, f"carol@{TENANT}").startswith(b"+OK")
                # Stored, but never looked up by this proxy: nothing to serve.
                assert attempt(proxy, "alice@down.example").startswith(b"-ERR [SYS/TEMP]")
                assert attempt(proxy, "alice@never.example").startswith(b"-ERR [SYS/TEMP]")
                assert relaying.command("STAT").startswith(b"+OK")  # untouched
                assert metric(proxy, "pop3proxy_redis_up") == 0
                assert proxy.http_get("/readyz")[0] == 200  # it can serve from cache
                assert len(messages(proxy, "redis unreachable")) == 1  # once, not per login

                redis_server.start()  # same port, empty: the records must be stored again
                store_tenants(proxy.config_path, dovecot)
                wait_until(
                    lambda: (
                        attempt(proxy, "alice@down.example").startswith(b"-ERR [SYS/TEMP]")
                        and messages(proxy, "redis reachable again")
                    ),
                    10,
                    message="recovery",
                )
                assert attempt(proxy, f"alice@{TENANT}").startswith(b"+OK")
                assert attempt(proxy, "alice@off.example") == AUTH_FAILED  # read from Redis
                assert relaying.command("STAT").startswith(b"+OK")
                assert relaying.command("QUIT").startswith(b"+OK")
            assert metric(proxy, "pop3proxy_redis_up") == 1
            assert len(messages(proxy, "redis unreachable")) == 1
            assert len(messages(proxy, "redis reachable again")) == 1


def test_corrupt_record_fails_only_its_tenant_logged_once(make_proxy, redis_server):
    proxy = make_proxy()
    prefix = proxy.config["directory"]["key_prefix"]
    client = redis_server.client()
    client.set(f"{prefix}:tenant:bad.example", b'{"name": "bad.example", "backends": 7}')
    client.set(f"{prefix}:tenant:junk.example", b"\xff not json")
    for _ in range(3):
        assert attempt(proxy, "alice@bad.example").startswith(b"-ERR [SYS/TEMP]")
    assert attempt(proxy, "alice@junk.example").startswith(b"-ERR [SYS/TEMP]")
    assert attempt(proxy, f"alice@{TENANT}").startswith(b"+OK")
    corrupt = messages(proxy, "corrupt record")
    keys = [f"{prefix}:tenant:bad.example", f"{prefix}:tenant:junk.example"]
    assert [r["key"] for r in corrupt] == keys
    assert "backends: expected a list" in " ".join(corrupt[0]["problems"])
    assert metric(proxy, "pop3proxy_directory_corrupt_records_total", '{kind="tenant"}') == 4
    listing = run_cli(proxy.config_path, "tenant", "list")
    assert listing.returncode == 1 and "bad.example: corrupt record" in listing.stderr
    assert TENANT in listing.stdout and "Traceback" not in listing.stderr


def test_user_pin_routes_to_one_backend_and_follows_changes(
    make_proxy, make_dovecot, dovecot, fresh_mailbox
):
    fresh_mailbox("alice")  # the samples on the first backend
    second = make_dovecot()  # alice's mailbox is empty there
    first_address = f"{dovecot.host}:{dovecot.port}"
    second_address = f"{second.host}:{second.port}"
    proxy = make_proxy({"directory": {"cache_ttl": "1h"}})
    config = proxy.config_path
    cli(config, "tenant", "set", "shard.example", "--backend", first_address,
        "--backend", second_address)  # fmt: skip

    def stat() -> int:
        with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
            wire.login("alice@shard.example", USERS["alice"])
            count = int(wire.command("STAT").split()[1])
            wire.command("QUIT")
            return count

    assert stat() > 0  # failover order: the first backend
    cli(config, "user", "pin", "alice@shard.example", "--backend", second_address)
    within(PROPAGATION, lambda: stat() == 0, "the pin to take effect")
    shown = cli(config, "user", "show", "Alice@shard.example")
    assert second_address in shown
    cli(config, "user", "unpin", "alice@shard.example")
    within(PROPAGATION, lambda: stat() > 0, "the unpin to take effect")
    assert '"record": null' in cli(config, "user", "show", "alice@shard.example")

    refused = run_cli(config, "user", "pin", "alice@shard.example", "--backend", DEAD_BACKEND)
    assert refused.returncode == 2
    assert "is not a backend of tenant shard.example" in refused.stderr
    nobody = run_cli(config, "user", "pin", "alice@nope.example", "--backend", first_address)
    assert nobody.returncode == 1 and "no tenant named" in nobody.stderr


def _config(tmp_path: Path, directory: dict) -> Path:
    path = tmp_path / "cli.yaml"
    listeners = [{"name": "plain", "address": "127.0.0.1:1110", "tls": "none"}]
    path.write_text(yaml.safe_dump({"listeners": listeners, "directory": directory}))
    return path


def test_tenant_cli_set_from_file_import_dry_run_prune_export(tmp_path, redis_server):
    config = _config(
        tmp_path, {"redis_url": redis_server.url, "key_prefix": f"cli-{tmp_path.name}"}
    )
    bad = run_cli(config, "tenant", "set", "x.example", "--backend", "h:1", "--max-sessions", "0")
    assert bad.returncode == 2 and "max_sessions: expected an integer >= 1" in bad.stderr

    record = tmp_path / "one.json"
    record.write_text('{"backends": [{"host": "a.internal", "port": 995, "tls": "implicit"}],'
                      ' "login": "{user}", "max_sessions": 7}')  # fmt: skip
    cli(config, "tenant", "set", "one.example", "--from-file", str(record))
    got = yaml.safe_load(cli(config, "tenant", "get", "one.example"))
    assert got["backends"][0]["tls"] == "implicit" and got["max_sessions"] == 7

    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(yaml.safe_dump({"tenants": [
        {"name": "one.example", "backends": [{"host": "b.internal"}]},
        {"name": "two.example", "backends": [{"host": "c.internal"}], "enabled": False},
    ]}))  # fmt: skip
    dry = cli(config, "tenant", "import", str(tenants), "--dry-run")
    assert "+ two.example" in dry and "~ one.example: backends:" in dry
    assert "nothing written" in dry
    assert "two.example" not in cli(config, "tenant", "list")

    assert "1 added, 1 changed, 0 unchanged" in cli(config, "tenant", "import", str(tenants))
    again = cli(config, "tenant", "import", str(tenants))  # idempotent
    assert "0 added, 0 changed, 2 unchanged, 0 removed" in again

    cli(config, "tenant", "set", "extra.example", "--backend", "d.internal:110")
    pruned = cli(config, "tenant", "import", str(tenants), "--prune")
    assert "- extra.example" in pruned and "1 removed" in pruned
    assert "extra.example" not in cli(config, "tenant", "list")

    exported = tmp_path / "exported.yaml"
    cli(config, "tenant", "export", "--output", str(exported))
    assert "0 added, 0 changed, 2 unchanged" in cli(config, "tenant", "import", str(exported))
    listed = yaml.safe_load(cli(config, "tenant", "list", "--json"))
    assert [t["name"] for t in listed] == ["one.example", "two.example"]
    missing = run_cli(config, "tenant", "get", "nope.example")
    assert missing.returncode == 1 and "no tenant named" in missing.stderr


@pytest.fixture
def secure_redis(certs: Certs):
    """redis-server with TLS only and an ACL user allowed nothing but our keys."""
    node = RedisNode(
        [
            f"tls-cert-file {certs.cert_file}",
            f"tls-key-file {certs.key_file}",
            f"tls-ca-cert-file {certs.ca_file}",
            "tls-auth-clients no",
            "user default off",
            "user proxy on >s3cret-acl ~sec:* &sec:* +@all",
        ],
        tls=True,
        client_kwargs={
            "ssl": True,
            "ssl_ca_certs": str(certs.ca_file),
            "username": "proxy",
            "password": "s3cret-acl",
        },
        name="tls",
    )
    node.start()
    yield node
    node.close()


def test_rediss_with_ca_and_acl_credentials_from_env_and_file(
    secure_redis, tmp_path, certs, dovecot, monkeypatch
):
    directory = {
        "redis_url": f"rediss://localhost:{secure_redis.port}/0",
        "redis_ca_file": str(certs.ca_file),
        "key_prefix": "sec",
    }
    proxy = ProxyProcess(tmp_path / "proxy", certs, {"directory": directory})
    assert "s3cret" not in proxy.config_path.read_text()

    denied = run_cli(proxy.config_path, "tenant", "list")
    assert denied.returncode == 1 and "Traceback" not in denied.stderr

    monkeypatch.setenv("POP3PROXY_REDIS_USERNAME", "proxy")
    monkeypatch.setenv("POP3PROXY_REDIS_PASSWORD", "s3cret-acl")
    store_tenants(proxy.config_path, dovecot)  # the CLI: credentials from the environment

    monkeypatch.delenv("POP3PROXY_REDIS_PASSWORD")
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret-acl\n")  # as a Kubernetes Secret mounts it
    directory["redis_password_file"] = str(secret)
    proxy = ProxyProcess(tmp_path / "proxy", certs, {"directory": directory})
    with proxy:
        assert attempt(proxy, f"alice@{TENANT}").startswith(b"+OK")
        assert metric(proxy, "pop3proxy_redis_up") == 1
        cli(proxy.config_path, "tenant", "set", TENANT, "--backend", DEAD_BACKEND)
        assert "s3cret" not in proxy.read_log()
    assert secure_redis.client().exists("sec:tenant:acme.example")
