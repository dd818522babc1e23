"""The proxy under test, as a real ``pop3proxy serve`` subprocess.

Tests drive it exactly as an operator would: a YAML file, the console entry
point, signals, and its JSON log on stderr.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from . import process
from .certs import Certs
from .ports import LOOPBACK, free_port, port_is_open, wait_until
from .wire import Pop3Wire

START_TIMEOUT = 15.0

TENANT = "acme.example"
"""The tenant the integration fixtures store, served by the shared Dovecot."""


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class ProxyProcess:
    """One proxy with three listeners: ``pop3`` (STLS), ``pop3s`` (implicit), ``plain``.

    Args:
        workdir: where the config and the log go.
        certs: the listeners' certificate.
        overrides: merged into the generated config (nested mappings merge).
        ports: listener ports by name (default: free ones).
        python: the interpreter to run it with.
    """

    def __init__(
        self,
        workdir: Path,
        certs: Certs,
        overrides: Mapping[str, Any] = (),
        *,
        ports: Mapping[str, int] | None = None,
        metrics_port: int | None = None,
        python: str = sys.executable,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.python = python
        """The interpreter that runs the proxy (the benchmarks may choose another)."""
        self.ports = dict(
            ports or {"pop3": free_port(), "pop3s": free_port(), "plain": free_port()}
        )
        self.metrics_port = metrics_port or free_port()
        base = {
            "listeners": [
                {"name": "pop3", "address": f"{LOOPBACK}:{self.ports['pop3']}", "tls": "starttls"},
                {
                    "name": "pop3s",
                    "address": f"{LOOPBACK}:{self.ports['pop3s']}",
                    "tls": "implicit",
                },
                {"name": "plain", "address": f"{LOOPBACK}:{self.ports['plain']}", "tls": "none"},
            ],
            "tls": {"cert": str(certs.cert_file), "key": str(certs.key_file)},
            "metrics": {"address": f"{LOOPBACK}:{self.metrics_port}"},
            "logging": {"level": "info", "format": "json"},
            # Abuse control off by default: the suite logs in from one address
            # hundreds of times, wrongly on purpose. Tests of the limits turn
            # it back on (tests/integration/test_abuse.py).
            "auth": {"allow": ["127.0.0.0/8"], "failure_delay": "0s"},
            "limits": {"max_connections_per_address": 0, "max_sessions_per_user": 0},
        }
        self.config = _merge(base, dict(overrides))
        self.config_path = workdir / "pop3proxy.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = workdir / "proxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return LOOPBACK

    def start(self) -> ProxyProcess:
        argv = [self.python, "-m", "pop3proxy", "serve", "--config", str(self.config_path)]
        self.proc = process.spawn(argv, self.log_path)
        wait_until(self._ready, START_TIMEOUT, message=f"proxy ready (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"proxy exited with {self.proc.returncode}:\n{self.read_log()}")
        return all(port_is_open(LOOPBACK, port) for port in self.ports.values()) and (
            self.http_get("/healthz")[0] == 200
        )

    def http_get(self, path: str) -> tuple[int, str]:
        url = f"http://{LOOPBACK}:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> str:
        status, body = self.http_get("/metrics")
        assert status == 200, status
        return body

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None:
            process.stop(self.proc)

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        """Every complete JSON log line so far; a line that is not JSON fails the test.

        A line still being written (the proxy's buffer went out mid-line) is
        left for the next read.
        """
        complete = self.read_log().rpartition("\n")[0]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def sessions(self) -> list[dict[str, Any]]:
        return [r for r in self.log_records() if r.get("message") == "session"]

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def attempt_login(
    proxy: ProxyProcess,
    user: str,
    password: str,
    *,
    listener: str = "plain",
    proxy_header: bytes = b"",
) -> bytes:
    """USER and PASS on ``listener`` (after ``proxy_header``, for a listener that
    expects a PROXY header); returns the PASS reply. A session that got in
    checks STAT and QUITs (so its slot frees at once)."""
    with Pop3Wire(proxy.host, proxy.ports[listener], proxy_header=proxy_header) as wire:
        assert wire.greeting.startswith(b"+OK"), wire.greeting
        assert wire.command(f"USER {user}").startswith(b"+OK")
        reply = wire.command(f"PASS {password}")
        if reply.startswith(b"+OK"):
            assert wire.command("STAT").startswith(b"+OK")
            wire.command("QUIT")
        return reply


LOCAL_TENANT = "local.example"
"""The tenant :func:`store_local_tenant` writes."""


def store_local_tenant(
    proxy: ProxyProcess,
    backend: tuple[str, int],
    directory: Path,
    passwords: Mapping[str, str],
    **fields: Any,
) -> None:
    """Through the real CLI: tenant ``local.example`` with ``auth: local`` on
    ``backend`` (the proxy logs in as Dovecot's master user ``proxymaster``;
    ``fields`` say where its password is, and may add or override others),
    and each user's proxy password from ``passwords``."""
    host, port = backend
    record = {
        "name": LOCAL_TENANT,
        "backends": [{"host": host, "port": port}],
        "auth": "local",
        "master_user": "proxymaster",
        **fields,
    }
    path = directory / "local-tenant.json"
    path.write_text(json.dumps(record))
    steps: list[tuple[tuple[str, ...], str | None]] = [
        (("tenant", "set", "--from-file", str(path)), None)
    ]
    steps += [
        (("user", "set-password", f"{user}@{LOCAL_TENANT}"), f"{password}\n")
        for user, password in passwords.items()
    ]
    for args, stdin in steps:
        result = run_cli(proxy.config_path, *args, stdin=stdin)
        assert result.returncode == 0, result.stderr


def run_cli(config_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``pop3proxy ARGS --config CONFIG`` as a subprocess; output captured as text."""
    argv = [sys.executable, "-m", "pop3proxy", *args, "--config", str(config_path)]
    return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=60)
