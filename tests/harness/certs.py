"""Real TLS material from trustme, written to PEM files servers can load.

Validation stays on in every test: clients trust the test CA, never
``CERT_NONE``. A second, unrelated CA gives a certificate that must be refused.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

#: Names the server certificate is valid for: every way a test reaches a loopback server.
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Certs:
    """A CA and one server certificate issued by it, as objects and as files."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    """Server certificate chain (leaf first), PEM."""
    key_file: Path
    """Server private key, PEM, unencrypted."""
    chain_file: Path
    """Key and certificate chain in one PEM file, for servers that want a single file."""

    def ssl_client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA and checks host names."""
        return ssl_client_context(self.ca_file)

    def ssl_server_context(self) -> ssl.SSLContext:
        """A server context presenting this certificate (for fake backends)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def ssl_client_context(ca_file: Path) -> ssl.SSLContext:
    """A verifying client context that trusts ``ca_file`` and nothing else."""
    return ssl.create_default_context(cafile=str(ca_file))


def _write(ca: trustme.CA, directory: Path, prefix: str) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    leaf = ca.issue_cert(*SERVER_NAMES)
    ca_file = directory / f"{prefix}ca.pem"
    cert_file = directory / f"{prefix}server.crt"
    key_file = directory / f"{prefix}server.key"
    chain_file = directory / f"{prefix}server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_file))
    chain_file.write_bytes(key_file.read_bytes() + cert_file.read_bytes())
    # Dovecot as root reads these before dropping privileges, but a server
    # started as another user (or a non-root run) must still open them.
    for path in (ca_file, cert_file, chain_file, key_file):
        path.chmod(0o644)
    return Certs(ca, ca_file, cert_file, key_file, chain_file)


def make_certs(directory: Path) -> Certs:
    """Create a fresh CA and a server certificate for :data:`SERVER_NAMES`."""
    return _write(trustme.CA(), Path(directory), prefix="")


def make_other_ca_certs(directory: Path) -> Certs:
    """Like :func:`make_certs` but from a different CA: for wrong-certificate tests."""
    return _write(trustme.CA(), Path(directory), prefix="other-")
