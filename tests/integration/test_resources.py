"""Sessions leave nothing behind: every socket they opened is closed again."""

from __future__ import annotations

import os
import socket

import yaml
from harness.ports import wait_until
from harness.proxy import TENANT
from harness.users import USERS, WRONG_PASSWORD
from harness.wire import Pop3Wire


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_file_descriptors_return_to_baseline(make_proxy, fresh_mailbox, certs, dovecot, tmp_path):
    """Counted on a tenants file: with Redis, the proxy's background work (the
    session registry, backend states, login history) shares a connection pool
    that grows with concurrency up to ``directory.redis_pool_size`` and keeps
    its connections, which is not what this test is about."""
    fresh_mailbox("erin")
    tenants = tmp_path / "tenants.yaml"
    record = {"name": TENANT, "backends": [{"host": dovecot.host, "port": dovecot.port}]}
    tenants.write_text(yaml.safe_dump({"tenants": [record]}))
    proxy = make_proxy({"directory": {"store": "file", "file": str(tenants)}}, tenants=False)
    pid = proxy.proc.pid
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as warm_up:  # lazy imports, pools
        warm_up.login(f"erin@{TENANT}", USERS["erin"])
        warm_up.command("QUIT")
    wait_until(lambda: len(proxy.sessions()) >= 1, 5)
    baseline = open_fds(pid)
    for round_ in range(10):
        with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=certs.ssl_client_context()) as ok:
            ok.login(f"erin@{TENANT}", USERS["erin"])
            ok.command("STAT")
            if round_ % 2:
                ok.command("QUIT")  # half end with QUIT, half just vanish
        if round_ % 4 == 0:  # Dovecot answers a wrong password after 0.5 s: only a few
            with Pop3Wire(proxy.host, proxy.ports["plain"]) as bad:
                bad.command(f"USER erin@{TENANT}")
                bad.command(f"PASS {WRONG_PASSWORD}")
        socket.create_connection((proxy.host, proxy.ports["pop3"])).close()
    wait_until(lambda: len(proxy.sessions()) >= 24, 10, message="all sessions logged")
    wait_until(lambda: open_fds(pid) <= baseline, 5, message=f"fds back to {baseline}")
