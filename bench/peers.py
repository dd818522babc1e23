"""The servers a benchmark run starts: Dovecot, nginx's mail proxy, pop3proxy, an idle backend.

Everything listens on 127.0.0.1 only, on free ports, in a private directory,
and is stopped by the runner. nginx's ``auth_http`` is answered by nginx
itself (an ``http`` block), so the peer pays no Python on the login path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from harness import process
from harness.certs import Certs
from harness.dovecot import Dovecot
from harness.ports import LOOPBACK, free_port, port_is_open, wait_until
from harness.proxy import ProxyProcess

TENANT = "bench.example"
IDLE_TENANT = "idle.example"
NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
DEBIAN_PACKAGES = ("nginx-light", "libnginx-mod-mail")


def ensure_debian_packages() -> None:
    """Install nginx and its mail module when missing (CI-like reproducibility)."""
    if shutil.which("nginx") and NGINX_MODULE.exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"nginx or {NGINX_MODULE} missing; install {' '.join(DEBIAN_PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, timeout=300)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *DEBIAN_PACKAGES],
        check=True,
        env=env,
        timeout=600,
    )


class BenchDovecot(Dovecot):
    """The harness Dovecot with process limits raised for 128 concurrent sessions.

    Login processes run in high-performance mode (``service_count = 0``): one
    login process serves many connections, as a production Dovecot would.
    """

    def _service_lines(self) -> list[str]:
        lines = super()._service_lines()
        index = lines.index("service pop3-login {")
        lines[index + 1 : index + 1] = [
            "  service_count = 0",
            "  process_min_avail = 2",
            "  client_limit = 2000",
        ]
        return [
            "default_process_limit = 1000",
            "default_client_limit = 4000",
            "default_vsz_limit = 1G",
            *lines,
            "service pop3 {",
            "  process_limit = 1000",
            "}",
        ]


# -- nginx -------------------------------------------------------------------


NGINX_CONF = """\
load_module {module};
daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {root}/nginx.pid;
error_log {root}/error.log warn;

events {{
    worker_connections {connections};
}}

http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    map $http_auth_user $bench_backend_port {{
        ~@{idle_tenant_re}$ {idle_port};
        default {backend_port};
    }}
    server {{
        listen {host}:{auth_port};
        location /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server {host};
            add_header Auth-Port $bench_backend_port;
            return 204;
        }}
    }}
}}

mail {{
    server_name localhost;
    auth_http {host}:{auth_port}/auth;
    proxy on;
    pop3_auth plain;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;

    server {{
        listen {host}:{plain_port};
        protocol pop3;
    }}
    server {{
        listen {host}:{tls_port} ssl;
        protocol pop3;
    }}
}}
"""


class Nginx:
    """A private nginx (1 worker) with a POP3 and a POP3S mail listener."""

    def __init__(
        self, certs: Certs, backend_port: int, idle_port: int, nofile: int, workers: int = 1
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pop3proxy-bench-nginx-"))
        self.root.chmod(0o755)
        self.ports = {"plain": free_port(), "pop3s": free_port()}
        self.auth_port = free_port()
        self.conf = self.root / "nginx.conf"
        self.conf.write_text(
            NGINX_CONF.format(
                module=NGINX_MODULE,
                workers=workers,
                nofile=nofile,
                connections=max(1024, nofile - 1000),
                root=self.root,
                host=LOOPBACK,
                auth_port=self.auth_port,
                backend_port=backend_port,
                idle_port=idle_port,
                idle_tenant_re=IDLE_TENANT.replace(".", r"\."),
                cert=certs.cert_file,
                key=certs.key_file,
                plain_port=self.ports["plain"],
                tls_port=self.ports["pop3s"],
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Nginx:
        argv = ["nginx", "-p", str(self.root), "-c", str(self.conf)]
        self.proc = process.spawn(argv, self.root / "nginx.out")
        wait_until(self._ready, 10, message=f"nginx (see {self.root})")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(
                "nginx exited:\n" + (self.root / "nginx.out").read_text(errors="replace")
            )
        ports = [*self.ports.values(), self.auth_port]
        return all(port_is_open(LOOPBACK, port) for port in ports) and bool(self.worker_pids())

    def worker_pids(self) -> list[int]:
        return children(self.pid)

    def pids(self) -> list[int]:
        """Master and workers: the CPU and memory nginx spends."""
        return [self.pid, *self.worker_pids()]

    def stop(self) -> None:
        if self.proc is not None:
            process.stop(self.proc)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (nginx workers, pop3proxy workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(child) for child in path.read_text().split()]
    except OSError:
        return []


# -- pop3proxy ---------------------------------------------------------------


def start_pop3proxy(
    workdir: Path,
    certs: Certs,
    backend_port: int,
    idle_port: int,
    max_connections: int,
    workers: int = 1,
    python: str = sys.executable,
    login_command: str = "auth_plain",
) -> ProxyProcess:
    """pop3proxy with a file directory; logging at ``warning`` keeps logs out of the figures.
    ``python`` runs it (see ``bench/interpreter.py``). ``login_command`` is how
    it logs in to Dovecot: ``auth_plain`` (one AUTH PLAIN, what an operator
    with Dovecot backends sets) or ``user_pass`` (USER and PASS, as nginx does)."""
    workdir.mkdir(parents=True, exist_ok=True)
    tenants = workdir / "tenants.yaml"
    tenants.write_text(
        yaml.safe_dump(
            {
                "tenants": [
                    {
                        "name": name,
                        "backends": [_backend(port, command)],
                        "login": "{user}",
                        "max_sessions": max_connections,
                    }
                    for name, port, command in (
                        (TENANT, backend_port, login_command),
                        (IDLE_TENANT, idle_port, "user_pass"),  # the stub speaks USER/PASS
                    )
                ]
            }
        )
    )
    overrides = {
        "directory": {"store": "file", "file": str(tenants)},
        "logging": {"level": "warning", "format": "json"},
        "limits": {"max_connections": max_connections},
    }
    if workers > 1:
        overrides["workers"] = workers
    proxy = ProxyProcess(workdir, certs, overrides, python=python).start()
    if workers > 1:
        wait_until(lambda: len(children(proxy.proc.pid)) >= workers, 15, message="workers")
    return proxy


def _backend(port: int, login_command: str) -> dict[str, object]:
    """The key only when it is not the default: older trees refuse unknown keys."""
    backend: dict[str, object] = {"host": LOOPBACK, "port": port}
    if login_command != "user_pass":
        backend["login_command"] = login_command
    return backend


def proxy_pids(proxy: ProxyProcess) -> list[int]:
    """The proxy process and, with ``workers: N``, its worker processes."""
    assert proxy.proc is not None
    return [proxy.proc.pid, *children(proxy.proc.pid)]


# -- idle backend --------------------------------------------------------------


class IdleBackend:
    """A tiny POP3 server (bench/idle_backend.py) that takes any login and then waits.

    Dovecot runs one process per POP3 session, so 10,000 idle sessions
    cannot go to it; the proxies' memory per idle session does not depend on
    what the backend is.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pop3proxy-bench-idle-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IdleBackend:
        script = Path(__file__).with_name("idle_backend.py")
        argv = [sys.executable, str(script), LOOPBACK, str(self.port)]
        self.proc = process.spawn(argv, self.root / "idle.out")
        wait_until(lambda: port_is_open(LOOPBACK, self.port), 10, message="idle backend")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            process.stop(self.proc)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
