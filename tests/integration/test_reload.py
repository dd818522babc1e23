"""Live reload: certificates swapped on disk, SIGHUP, and SNI certificates.

Certificates are laid out as Kubernetes mounts a Secret: the real files in a
``..<version>`` directory, a ``..data`` symlink to it, and ``tls.crt`` and
``tls.key`` symlinks through ``..data``. A rotation swaps ``..data`` in one
``rename``, which is what the proxy must notice.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from pathlib import Path

import trustme
import yaml
from cryptography import x509
from harness.certs import SERVER_NAMES, Certs
from harness.ports import free_port, wait_until
from harness.proxy import TENANT, ProxyProcess
from harness.users import USERS
from harness.wire import Pop3Wire


class SecretVolume:
    """A directory that looks like a mounted ``kubernetes.io/tls`` Secret."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.versions = 0
        for name in ("tls.crt", "tls.key"):
            (root / name).symlink_to(f"..data/{name}")

    @property
    def cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def key(self) -> Path:
        return self.root / "tls.key"

    def publish(self, cert: bytes, key: bytes) -> None:
        """Write a new version and swap ``..data`` to it atomically, as the kubelet does."""
        self.versions += 1
        version = self.root / f"..v{self.versions}"
        version.mkdir()
        (version / "tls.crt").write_bytes(cert)
        (version / "tls.key").write_bytes(key)
        link = self.root / "..data_tmp"
        link.symlink_to(version.name)
        os.replace(link, self.root / "..data")


def issue(ca: trustme.CA, *names: str) -> tuple[bytes, bytes, int]:
    """A leaf certificate for ``names``: (chain PEM, key PEM, serial number)."""
    leaf = ca.issue_cert(*(names or SERVER_NAMES))
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    serial = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
    return chain, leaf.private_key_pem.bytes(), serial


def peer_serial(sock: ssl.SSLSocket) -> int:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def handshake_serial(proxy: ProxyProcess, certs: Certs, server_name: str = "localhost") -> int:
    """Connect to ``pop3s``, complete a verified handshake, return the served serial."""
    context = certs.ssl_client_context()
    with (
        socket.create_connection((proxy.host, proxy.ports["pop3s"]), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as sock,
    ):
        return peer_serial(sock)


class SNIWire(Pop3Wire):
    """A POP3S connection that sends ``server_name`` as SNI (and verifies it)."""

    def __init__(self, proxy: ProxyProcess, certs: Certs, server_name: str) -> None:
        raw = socket.create_connection((proxy.host, proxy.ports["pop3s"]), timeout=10)
        self.sock = certs.ssl_client_context().wrap_socket(raw, server_hostname=server_name)
        self._stream = self.sock.makefile("rb")
        self.greeting = self.read_line()


def messages_of(proxy: ProxyProcess, text: str) -> list[dict]:
    return [r for r in proxy.log_records() if r["message"] == text]


def test_symlink_swap_reloads_certificate_without_dropping_sessions(
    make_proxy, certs, fresh_mailbox, tmp_path
):
    """The open session goes on with its old certificate; the next handshake presents the
    new one; a broken new version is refused with a reason and the last good one stays."""
    volume = SecretVolume(tmp_path / "secret")
    chain, key, first = issue(certs.ca)
    volume.publish(chain, key)
    proxy = make_proxy(
        {"tls": {"cert": str(volume.cert), "key": str(volume.key), "watch_interval": "100ms"}}
    )
    fresh_mailbox("alice")
    assert handshake_serial(proxy, certs) == first
    with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=certs.ssl_client_context()) as open_:
        open_.login(f"alice@{TENANT}", USERS["alice"])
        chain, key, second = issue(certs.ca)
        volume.publish(chain, key)
        wait_until(lambda: handshake_serial(proxy, certs) == second, 10, message="new cert")
        assert open_.command("STAT").startswith(b"+OK")
        assert peer_serial(open_.sock) == first

        chain, _, _ = issue(certs.ca)
        volume.publish(
            chain, b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"
        )
        failed = wait_until(
            lambda: messages_of(
                proxy, "certificate reload failed: keeping the current certificate"
            ),
            10,
        )
        assert str(volume.root) in failed[0]["error"]
        assert handshake_serial(proxy, certs) == second
        assert open_.command("RETR 1").startswith(b"+OK")
        open_.read_multiline()

        chain, key, third = issue(certs.ca)
        volume.publish(chain, key)
        wait_until(lambda: handshake_serial(proxy, certs) == third, 10, message="third cert")
        assert open_.command("QUIT").startswith(b"+OK")
    assert len(messages_of(proxy, "certificate loaded")) == 2
    assert len(failed) == 1  # once per bad version, not once per poll


def test_sighup_reloads_certificate_and_live_config(make_proxy, certs, tmp_path):
    """With polling off, SIGHUP alone picks up the new certificate; it also applies the
    new auth timeout and says that the new metrics address needs a restart."""
    volume = SecretVolume(tmp_path / "secret")
    chain, key, first = issue(certs.ca)
    volume.publish(chain, key)
    proxy = make_proxy(
        {"tls": {"cert": str(volume.cert), "key": str(volume.key), "watch_interval": "0s"}}
    )
    chain, key, second = issue(certs.ca)
    volume.publish(chain, key)
    assert handshake_serial(proxy, certs) == first  # nobody looked yet

    config = yaml.safe_load(proxy.config_path.read_text())
    config["timeouts"] = {**config.get("timeouts", {}), "auth": "1s"}
    config["metrics"]["address"] = f"127.0.0.1:{free_port()}"
    config["logging"]["level"] = "debug"
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.signal(signal.SIGHUP)
    reloaded = wait_until(lambda: messages_of(proxy, "configuration reloaded"), 10)
    assert set(reloaded[0]["changed"]) == {"timeouts", "logging"}
    # Logged right after "configuration reloaded": wait for it too, not just read.
    restart = wait_until(
        lambda: messages_of(proxy, "configuration changes need a restart to apply"), 10
    )
    assert restart[0]["needs_restart"] == ["metrics.address"]
    assert handshake_serial(proxy, certs) == second
    assert proxy.http_get("/healthz")[0] == 200  # still on the old metrics address
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as wire:
        assert wire.read_line() == b"-ERR [SYS/TEMP] Authorization timed out\r\n"

    proxy.config_path.write_text("listeners: [oops")
    proxy.signal(signal.SIGHUP)
    failed = wait_until(
        lambda: messages_of(proxy, "reload failed: configuration invalid, nothing changed"), 10
    )
    assert failed[0]["problems"]
    assert handshake_serial(proxy, certs) == second


def test_sni_picks_certificate_and_tenant(make_proxy, certs, fresh_mailbox, tmp_path):
    """``tls.sni`` and ``tls.sni_dir`` certificates by server name; with
    ``tenancy.sni_tenant`` the name also picks the tenant of a bare user name."""
    mapped_chain, mapped_key, mapped = issue(certs.ca, "pop.acme.example")
    (tmp_path / "pop.crt").write_bytes(mapped_chain)
    (tmp_path / "pop.key").write_bytes(mapped_key)
    sni_dir = tmp_path / "sni"
    sni_dir.mkdir()
    dir_chain, dir_key, in_dir = issue(certs.ca, TENANT)
    (sni_dir / f"{TENANT}.crt").write_bytes(dir_chain)
    (sni_dir / f"{TENANT}.key").write_bytes(dir_key)
    proxy = make_proxy(
        {
            "tls": {
                "sni": {
                    "pop.acme.example": {
                        "cert": str(tmp_path / "pop.crt"),
                        "key": str(tmp_path / "pop.key"),
                        "tenant": TENANT,
                    }
                },
                "sni_dir": str(sni_dir),
            },
            "tenancy": {"sni_tenant": True},
        }
    )
    fresh_mailbox("bob")
    default = x509.load_pem_x509_certificate(certs.cert_file.read_bytes()).serial_number
    assert handshake_serial(proxy, certs, "localhost") == default
    for name, serial in (("pop.acme.example", mapped), (TENANT, in_dir)):
        with SNIWire(proxy, certs, name) as wire:
            assert peer_serial(wire.sock) == serial
            wire.login("bob", USERS["bob"])
            assert wire.command("QUIT").startswith(b"+OK")
    with SNIWire(proxy, certs, "localhost") as wire:
        wire.command("USER bob")
        assert wire.command(f"PASS {USERS['bob']}").startswith(b"-ERR [AUTH]")
    tenants = [s.get("tenant") for s in proxy.sessions() if s["result"] == "ok"]
    assert tenants == [TENANT, TENANT]
