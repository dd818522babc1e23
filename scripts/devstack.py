"""The local stack behind ``scripts/dev-stack``; see that script.

It reuses the test harness (private redis-server and Dovecot on loopback,
trustme certificates) so that what a newcomer tries is what the tests run.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.certs import make_certs  # noqa: E402
from harness.dovecot import Dovecot  # noqa: E402
from harness.mailbox import sample_messages  # noqa: E402
from harness.ports import port_is_open  # noqa: E402
from harness.proxy import TENANT, ProxyProcess, run_cli  # noqa: E402
from harness.redis import RedisServer  # noqa: E402
from harness.users import USERS  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pop3-port", type=int, default=1110, help="STLS listener")
    parser.add_argument("--pop3s-port", type=int, default=1995, help="implicit TLS listener")
    parser.add_argument("--plain-port", type=int, default=1143, help="plaintext listener")
    parser.add_argument("--metrics-port", type=int, default=9110)
    parser.add_argument(
        "--state", type=Path, default=ROOT / ".dev", help="certificates, config, logs"
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    ports = {"pop3": args.pop3_port, "pop3s": args.pop3s_port, "plain": args.plain_port}
    busy = [p for p in [*ports.values(), args.metrics_port] if port_is_open("127.0.0.1", p)]
    if busy:
        print(f"error: port(s) {busy} already in use; pick others with --*-port", file=sys.stderr)
        return 2
    args.state.mkdir(exist_ok=True)
    certs = make_certs(args.state / "certs")
    with RedisServer() as redis_server, Dovecot(USERS, certs=certs) as dovecot:
        for user in USERS:
            dovecot.reset_mailbox(user, sample_messages())
        proxy = ProxyProcess(
            args.state / "proxy",
            certs,
            {
                "directory": {"store": "redis", "redis_url": redis_server.url},
                "logging": {"format": "text"},
                "metrics": {"address": f"127.0.0.1:{args.metrics_port}"},
            },
            ports=ports,
            metrics_port=args.metrics_port,
        )
        backend = f"{dovecot.host}:{dovecot.port}"
        result = run_cli(proxy.config_path, "tenant", "set", TENANT, "--backend", backend)
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        with proxy:
            print_help(args, certs.ca_file, proxy, redis_server.url)
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            while not stop.wait(1.0):
                if proxy.proc is not None and proxy.proc.poll() is not None:
                    print(f"the proxy exited; see {proxy.log_path}", file=sys.stderr)
                    return 1
    print("stopped")
    return 0


def print_help(
    args: argparse.Namespace, ca_file: Path, proxy: ProxyProcess, redis_url: str
) -> None:
    user = f"alice@{TENANT}:{USERS['alice']}"
    ca = f"--cacert {ca_file}"
    print(
        f"""
pop3proxy dev stack is up (Ctrl-C stops it).

  List alice's mailbox over POP3S (implicit TLS):
    curl {ca} -u '{user}' pop3s://localhost:{args.pop3s_port}/
  Download message 1:
    curl {ca} -u '{user}' pop3s://localhost:{args.pop3s_port}/1
  The same over STLS:
    curl {ca} --ssl-reqd -u '{user}' pop3://localhost:{args.pop3_port}/1

  Users: {", ".join(f"{name}@{TENANT}" for name in USERS)} (password: <name>-secret)
  Metrics: curl http://127.0.0.1:{args.metrics_port}/metrics
  Tenants: .venv/bin/pop3proxy tenant list --config {proxy.config_path}
  Proxy log: {proxy.log_path}   Redis: {redis_url}
""",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
