"""Lessons from other mail proxies' security advisories, each as a regression test.

- Dovecot CVE-2025-30189: a cache keyed on something users share let later
  users in as the first. Here no login result of one user ever shows for
  another, in any cache on the login path.
- Dovecot CVE-2025-59028: one malformed SASL message took down other logins.
  Here a storm of bad base64 in AUTH PLAIN touches only its own session.
- Zimbra CVE-2022-27924: CR LF in a user name poisoned the route cache. Here
  a name (or SNI server name) with a control character is refused before any
  cache or Redis key is built from it.
- nginx CVE-2026-1642: bytes a backend sent before its TLS handshake were
  read as if protected. Here they fail the attempt (STLS and implicit TLS).
- nginx CVE-2025-23419: TLS sessions resumed across SNI certificates. Here a
  session made under one certificate never resumes under another.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from harness.certs import Certs
from harness.proxy import ProxyProcess
from harness.wire import Pop3Wire

TLS_VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]

# -- no TLS session resumed across SNI certificates ---------------------------------


def issue(ca: trustme.CA, directory: Path, name: str) -> tuple[dict[str, str], int]:
    leaf = ca.issue_cert(name)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    serial = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
    return {"cert": str(cert), "key": str(key)}, serial


@pytest.fixture
def two_certificates(make_proxy, certs: Certs, tmp_path: Path):
    """A proxy with a certificate of its own for ``a.example`` and ``b.example``."""
    a_files, a_serial = issue(certs.ca, tmp_path, "a.example")
    b_files, b_serial = issue(certs.ca, tmp_path, "b.example")
    proxy = make_proxy({"tls": {"sni": {"a.example": a_files, "b.example": b_files}}})
    return proxy, {"a.example": a_serial, "b.example": b_serial}


class Handshake:
    """One verified TLS connection to the proxy: which certificate, resumed or not."""

    def __init__(
        self,
        proxy: ProxyProcess,
        context: ssl.SSLContext,
        name: str,
        listener: str,
        session: ssl.SSLSession | None = None,
    ) -> None:
        raw = socket.create_connection((proxy.host, proxy.ports[listener]), timeout=10)
        if listener == "pop3":
            stream = raw.makefile("rb")
            assert stream.readline().startswith(b"+OK")
            raw.sendall(b"STLS\r\n")
            assert stream.readline().startswith(b"+OK")
        self.sock = context.wrap_socket(raw, server_hostname=name, session=session)
        with self.sock.makefile("rb") as stream:
            if listener == "pop3s":
                assert stream.readline().startswith(b"+OK")
            self.sock.sendall(b"NOOP\r\n")  # TLS 1.3 tickets come after the handshake
            assert stream.readline().startswith(b"+OK")
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        self.serial = x509.load_der_x509_certificate(der).serial_number
        self.reused = self.sock.session_reused
        self.session = self.sock.session
        self.sock.close()


@pytest.mark.parametrize("listener", ["pop3s", "pop3"], ids=["implicit", "stls"])
@pytest.mark.parametrize("version", TLS_VERSIONS, ids=["tls1.2", "tls1.3"])
def test_no_session_resumed_across_sni_certificates(two_certificates, certs, version, listener):
    proxy, serials = two_certificates
    context = certs.ssl_client_context()
    context.minimum_version = context.maximum_version = version

    first = Handshake(proxy, context, "a.example", listener)
    assert first.serial == serials["a.example"] and not first.reused
    again = Handshake(proxy, context, "a.example", listener, first.session)
    assert again.reused, "resumption under the same certificate still works"

    other = Handshake(proxy, context, "b.example", listener, first.session)
    assert not other.reused, "a.example's session resumed for b.example"
    assert other.serial == serials["b.example"]

    default = Handshake(proxy, context, "localhost", listener, first.session)
    assert not default.reused and default.serial not in serials.values()
