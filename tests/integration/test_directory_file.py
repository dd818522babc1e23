"""``directory.store: file``: validated at start, reloaded on SIGHUP and when
the file changes (also through a symlink swap, as a Kubernetes ConfigMap
does), and a bad new file keeps the old records."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import yaml
from harness.ports import wait_until
from harness.proxy import TENANT, ProxyProcess
from integration.conftest import DEAD_BACKEND
from integration.test_directory import AUTH_FAILED, attempt, messages

RELOAD = 5.0
"""The watcher polls every second; a loaded machine may take a little longer."""


def tenants_file(path: Path, backend: str, enabled: bool = True) -> Path:
    host, _, port = backend.rpartition(":")
    record = {"name": TENANT, "backends": [{"host": host, "port": int(port)}], "enabled": enabled}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"tenants": [record]}))
    return path


def test_file_store_reloads_on_change_keeps_old_on_error_and_on_sighup(tmp_path, certs, dovecot):
    backend = f"{dovecot.host}:{dovecot.port}"
    # A ConfigMap volume: tenants.yaml -> ..data/tenants.yaml, ..data -> a dated directory.
    tenants_file(tmp_path / "v1" / "tenants.yaml", backend)
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "tenants.yaml").symlink_to("..data/tenants.yaml")
    directory = {"store": "file", "file": str(tmp_path / "tenants.yaml")}
    with ProxyProcess(tmp_path / "proxy", certs, {"directory": directory}) as proxy:
        assert attempt(proxy, f"alice@{TENANT}").startswith(b"+OK")

        # The swap: a new directory, then the ..data link replaced atomically.
        tenants_file(tmp_path / "v2" / "tenants.yaml", backend, enabled=False)
        (tmp_path / "..data_tmp").symlink_to("v2")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
        wait_until(lambda: attempt(proxy, f"alice@{TENANT}") == AUTH_FAILED, RELOAD, message="v2")

        # A broken file: the previous records stay, and the log says why.
        (tmp_path / "v2" / "tenants.yaml").write_text("tenants: [{name: acme.example}]\n")
        wait_until(
            lambda: messages(proxy, "tenants file rejected"), RELOAD, message="rejection log"
        )
        rejected = messages(proxy, "tenants file rejected")[-1]
        assert "tenants[0].backends: expected at least one backend" in rejected["problems"]
        assert attempt(proxy, f"alice@{TENANT}") == AUTH_FAILED  # still v2, disabled

        # Fixed in place, and SIGHUP asks for it without waiting for the poll.
        tenants_file(tmp_path / "v2" / "tenants.yaml", DEAD_BACKEND)
        proxy.signal(signal.SIGHUP)
        wait_until(
            lambda: attempt(proxy, f"alice@{TENANT}").startswith(b"-ERR [SYS/TEMP]"),
            RELOAD,
            message="the fixed file",
        )
        assert proxy.proc is not None and proxy.proc.poll() is None
