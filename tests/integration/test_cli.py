"""The operator's command line: check-config and the tenant commands.

A mistake gets a one-line reason naming the key, exit code 2, and never a
traceback; the tenant commands round-trip through the real Redis.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from harness.proxy import run_cli
from harness.redis import RedisServer


def write(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_check_config_reports_every_problem_with_its_path(tmp_path):
    config = write(
        tmp_path / "bad.yaml",
        {
            "listeners": [{"name": "pop3", "address": "127.0.0.1:110", "tls": "tsl"}],
            "timeouts": {"idle": "ten minutes"},
            "directory": {"store": "redis", "cache_tl": "30s"},
            "limits": {"max_connections": 0},
        },
    )
    result = run_cli(config, "check-config")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "listeners[0].tls: expected one of none, starttls, implicit, got 'tsl'" in result.stderr
    assert "timeouts.idle: expected a duration" in result.stderr
    assert "directory.cache_tl: unknown key" in result.stderr
    assert "limits.max_connections: expected an integer >= 1" in result.stderr


def test_check_config_missing_file_and_bad_yaml(tmp_path):
    missing = run_cli(tmp_path / "nope.yaml", "check-config")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    broken = run_cli(write(tmp_path / "broken.yaml", "listeners: [\n"), "check-config")
    assert broken.returncode == 2 and "not valid YAML" in broken.stderr
    assert "Traceback" not in missing.stderr + broken.stderr


def test_check_config_accepts_a_good_file_store_config(tmp_path, certs):
    write(
        tmp_path / "tenants.yaml",
        {"tenants": [{"name": "acme.example", "backends": [{"host": "127.0.0.1", "port": 1110}]}]},
    )
    config = write(
        tmp_path / "ok.yaml",
        {
            "listeners": [{"name": "pop3s", "address": "127.0.0.1:1995", "tls": "implicit"}],
            "tls": {"cert": str(certs.cert_file), "key": str(certs.key_file)},
            "directory": {"store": "file", "file": "tenants.yaml"},
        },
    )
    result = run_cli(config, "check-config")
    assert result.returncode == 0, result.stderr
    assert "tenants file: 1 tenant(s)" in result.stdout


def test_check_config_rejects_a_bad_tenants_file(tmp_path):
    write(tmp_path / "tenants.yaml", {"tenants": [{"name": "acme.example", "backends": []}]})
    config = write(
        tmp_path / "c.yaml",
        {
            "listeners": [{"name": "plain", "address": "127.0.0.1:1110", "tls": "none"}],
            "directory": {"store": "file", "file": "tenants.yaml"},
        },
    )
    result = run_cli(config, "check-config")
    assert result.returncode == 2
    assert "tenants[0].backends: expected at least one backend" in result.stderr


def redis_config(tmp_path: Path, redis_server: RedisServer) -> Path:
    return write(
        tmp_path / "c.yaml",
        {
            "listeners": [{"name": "plain", "address": "127.0.0.1:1110", "tls": "none"}],
            "directory": {"redis_url": redis_server.url, "key_prefix": f"cli-{tmp_path.name}"},
        },
    )


def test_tenant_set_get_list_delete_round_trip(tmp_path, redis_server):
    config = redis_config(tmp_path, redis_server)
    made = run_cli(
        config,
        "tenant",
        "set",
        "Example.COM",
        "--backend",
        "10.0.0.1:110",
        "--backend",
        "[::1]:1110",
        "--policy",
        "round_robin",
        "--login",
        "{user}",
    )
    assert made.returncode == 0, made.stderr
    got = run_cli(config, "tenant", "get", "example.com", "--format", "json")
    record = json.loads(got.stdout)
    assert record["name"] == "example.com"
    assert [(b["host"], b["port"]) for b in record["backends"]] == [
        ("10.0.0.1", 110),
        ("::1", 1110),
    ]
    assert record["policy"] == "round_robin" and record["login"] == "{user}"
    assert yaml.safe_load(run_cli(config, "tenant", "get", "example.com").stdout) == record
    listing = run_cli(config, "tenant", "list")
    assert "example.com" in listing.stdout and "[::1]:1110" in listing.stdout
    assert json.loads(run_cli(config, "tenant", "list", "--json").stdout) == [record]
    assert run_cli(config, "tenant", "delete", "example.com").returncode == 0
    gone = run_cli(config, "tenant", "get", "example.com")
    assert gone.returncode == 1 and "no tenant named" in gone.stderr


def test_tenant_set_refuses_bad_records(tmp_path, redis_server):
    config = redis_config(tmp_path, redis_server)
    no_backend = run_cli(config, "tenant", "set", "a.example")
    assert no_backend.returncode == 2 and "--backend" in no_backend.stderr
    bad_port = run_cli(config, "tenant", "set", "a.example", "--backend", "host:notaport")
    assert bad_port.returncode == 2 and "expected HOST:PORT" in bad_port.stderr
    bad_login = run_cli(config, "tenant", "set", "a.example", "--backend", "h:1", "--login", "{x}")
    assert bad_login.returncode == 2 and "login: unknown placeholder {x}" in bad_login.stderr
    bad_name = run_cli(config, "tenant", "set", "bad name!", "--backend", "h:1")
    assert bad_name.returncode == 2 and "name: expected a DNS-like name" in bad_name.stderr
    assert run_cli(config, "tenant", "list", "--json").stdout.strip() == "[]"


def test_tenant_import_loads_a_file(tmp_path, redis_server):
    config = redis_config(tmp_path, redis_server)
    tenants = write(
        tmp_path / "tenants.yaml",
        {
            "tenants": [
                {"name": "one.example", "backends": [{"host": "127.0.0.1", "port": 1110}]},
                {"name": "two.example", "backends": [{"host": "127.0.0.1", "tls": "implicit"}]},
            ]
        },
    )
    result = run_cli(config, "tenant", "import", str(tenants))
    assert result.returncode == 0, result.stderr
    records = json.loads(run_cli(config, "tenant", "list", "--json").stdout)
    assert [r["name"] for r in records] == ["one.example", "two.example"]
    assert records[1]["backends"][0]["port"] == 995, "implicit TLS defaults to port 995"


def test_tenant_commands_report_redis_down(tmp_path):
    config = write(
        tmp_path / "c.yaml",
        {
            "listeners": [{"name": "plain", "address": "127.0.0.1:1110", "tls": "none"}],
            "directory": {"redis_url": "redis://127.0.0.1:1/0"},
        },
    )
    result = run_cli(config, "tenant", "list")
    assert result.returncode == 1
    assert result.stderr.startswith("error: Redis:") and "Traceback" not in result.stderr


def test_serve_with_a_port_in_use_fails_cleanly(tmp_path, redis_server):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write(
            tmp_path / "c.yaml",
            {
                "listeners": [{"name": "plain", "address": f"127.0.0.1:{port}", "tls": "none"}],
                "directory": {"redis_url": redis_server.url},
                "metrics": {"address": None},
            },
        )
        result = run_cli(config, "serve")
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "Traceback" not in result.stderr


def test_user_commands_on_a_tenants_file_say_user_records_need_redis(tmp_path):
    """A tenants file keeps no user records: a write is refused with the
    reason (exit 2, no traceback), and a read finds no record."""
    backends = [{"host": "127.0.0.1", "port": 1110}, {"host": "127.0.0.1", "port": 1111}]
    write(tmp_path / "tenants.yaml", {"tenants": [{"name": "acme.example", "backends": backends}]})
    config = write(
        tmp_path / "c.yaml",
        {
            "listeners": [{"name": "plain", "address": "127.0.0.1:1110", "tls": "none"}],
            "directory": {"store": "file", "file": "tenants.yaml"},
        },
    )
    reason = "user records (backend pins, local passwords) are kept in Redis only"
    pin = run_cli(config, "user", "pin", "alice@acme.example", "--backend", "127.0.0.1:1111")
    password = run_cli(config, "user", "set-password", "alice@acme.example", stdin="secret\n")
    delete = run_cli(config, "user", "delete", "alice@acme.example")
    for refused in (pin, password, delete):
        assert refused.returncode == 2
        assert reason in refused.stderr
        assert "Traceback" not in refused.stderr
    show = run_cli(config, "user", "show", "alice@acme.example")
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout) == {"user": "alice@acme.example", "record": None}
