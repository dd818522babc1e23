"""The listeners' TLS policy as an auditor and an old client see it.

sslyze scans both listeners (POP3S, and STLS through its POP3 StartTLS
support) of a running proxy and checks them against Mozilla's profile with
sslyze's own checker. The certificate checks are left out: they judge the
test CA (untrusted, a lifespan of its own choosing), not the proxy.
"""

from __future__ import annotations

import datetime
import re
import ssl
import warnings
from pathlib import Path

import pytest
import yaml
from harness.certs import SERVER_NAMES, Certs
from harness.ports import LOOPBACK, free_port, wait_until
from harness.proxy import TENANT, ProxyProcess, run_cli
from harness.users import USERS
from harness.wire import Pop3Wire

sslyze = pytest.importorskip("sslyze")
from sslyze.mozilla_tls_profile.tls_config_checker import (  # noqa: E402
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

CERTIFICATE_ISSUES = {
    "certificate_path_validation",
    "certificate_curves",
    "rsa_key_size",
    "maximum_certificate_lifespan",
    "certificate_types",
    "certificate_signatures",
}


def with_listener_profiles(proxy: ProxyProcess, profiles: dict[str, str]) -> ProxyProcess:
    """Start ``proxy`` (made with ``start=False``) with a ``tls_profile`` per listener."""
    for listener in proxy.config["listeners"]:
        if listener["name"] in profiles:
            listener["tls_profile"] = profiles[listener["name"]]
    proxy.config_path.write_text(yaml.safe_dump(proxy.config))
    return proxy.start()


def scan_issues(scans: list[tuple[ProxyProcess, str, str]]) -> dict[tuple[str, str], dict]:
    """Scan each (proxy, listener, profile) at once; the issues other than the
    certificate's, by (listener, profile)."""
    from sslyze import (
        ProtocolWithOpportunisticTlsEnum,
        Scanner,
        ServerNetworkConfiguration,
        ServerNetworkLocation,
        ServerScanRequest,
    )

    requests = {}
    for proxy, listener, profile in scans:
        starttls = ProtocolWithOpportunisticTlsEnum.POP3 if listener == "pop3" else None
        request = ServerScanRequest(
            server_location=ServerNetworkLocation(
                "localhost", proxy.ports[listener], ip_address=LOOPBACK
            ),
            network_configuration=ServerNetworkConfiguration(
                "localhost", tls_opportunistic_encryption=starttls
            ),
            scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
        )
        requests[(request.server_location.port, profile)] = (listener, profile, request)
    scanner = Scanner()
    scanner.queue_scans([request for _, _, request in requests.values()])
    found = {}
    for result in scanner.get_results():
        port = result.server_location.port
        listener, profile, _ = next(v for k, v in requests.items() if k[0] == port)
        expected = MozillaTlsConfiguration.get(TlsConfigurationEnum(profile))
        try:
            check_server_against_tls_configuration(result, expected)
            issues: dict = {}
        except ServerNotCompliantWithTlsConfiguration as error:
            issues = {k: v for k, v in error.issues.items() if k not in CERTIFICATE_ISSUES}
        found[(listener, profile)] = issues
    assert len(found) == len(scans)
    return found


@pytest.mark.timeout(300)
# sslyze's bundled trust stores hold a root with a serial number cryptography warns about.
@pytest.mark.filterwarnings("ignore:Parsed a serial number")
def test_intermediate_and_modern_profiles_pass_mozillas_checks_on_both_listeners(make_proxy):
    """What an auditor's scan reports: no CBC suites, no P-521 or X448 in
    ``intermediate`` (the default), TLS 1.3 alone in ``modern``."""
    intermediate = make_proxy()
    modern = make_proxy({"tls": {"profile": "modern"}})
    scans = [
        (proxy, listener, profile)
        for proxy, profile in ((intermediate, "intermediate"), (modern, "modern"))
        for listener in ("pop3s", "pop3")
    ]
    assert scan_issues(scans) == {(listener, profile): {} for _, listener, profile in scans}


def tls10_client(certs: Certs) -> ssl.SSLContext:
    """A client that speaks TLS 1.0 alone, as a Windows XP-era mail program does."""
    context = certs.ssl_client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS 1.0 only at level 0
    return context


def handshake_metrics(proxy: ProxyProcess) -> dict[tuple[str, str, str], float]:
    pattern = re.compile(
        r'^pop3proxy_tls_handshakes_total\{cipher="([^"]+)",listener="([^"]+)",'
        r'version="([^"]+)"\} (\S+)$',
        re.M,
    )
    return {
        (listener, version, cipher): float(value)
        for cipher, listener, version, value in pattern.findall(proxy.metrics())
    }


def test_old_profile_serves_tls10_clients_where_intermediate_refuses_them(
    make_proxy, certs, fresh_mailbox
):
    """A listener's own ``tls_profile``: ``old`` on POP3S lets a TLS 1.0 client log
    in, and the handshake metric shows who still needs it; the STLS listener
    keeps ``intermediate`` and refuses that client."""
    proxy = with_listener_profiles(make_proxy(start=False), {"pop3s": "old"})
    fresh_mailbox("alice")
    with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=tls10_client(certs)) as wire:
        assert wire.sock.version() == "TLSv1"
        cipher = wire.sock.cipher()[0]
        wire.login(f"alice@{TENANT}", USERS["alice"])
        assert wire.command("QUIT").startswith(b"+OK")
    with Pop3Wire(proxy.host, proxy.ports["pop3"]) as wire:
        assert wire.command("STLS").startswith(b"+OK")
        with pytest.raises(ssl.SSLError):
            tls10_client(certs).wrap_socket(wire.sock, server_hostname="localhost")
    counted = wait_until(
        lambda: handshake_metrics(proxy).get(("pop3s", "TLSv1", cipher)), 10, message="metric"
    )
    assert counted == 1
    assert not [key for key in handshake_metrics(proxy) if key[0] == "pop3"]
    failure = 'pop3proxy_tls_handshake_failures_total{listener="pop3",reason="protocol"} 1.0'
    assert failure in proxy.metrics()


def test_handshake_metric_counts_each_version_and_cipher(make_proxy, certs):
    """One series per listener, protocol version and suite, each counting its handshakes."""
    proxy = make_proxy()
    tls12 = certs.ssl_client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    tls12.set_ciphers("ECDHE-ECDSA-CHACHA20-POLY1305")
    for context, times in ((tls12, 2), (certs.ssl_client_context(), 1)):
        for _ in range(times):
            with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=context) as wire:
                assert wire.command("QUIT").startswith(b"+OK")
    expected = {
        ("pop3s", "TLSv1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"): 2.0,
        ("pop3s", "TLSv1.3", "TLS_AES_256_GCM_SHA384"): 1.0,
    }
    assert wait_until(lambda: handshake_metrics(proxy) == expected, 10, message="metrics")


def test_groups_outside_the_profile_are_refused_unless_configured(make_proxy, certs):
    """P-521 is not in Mozilla's groups: a client that offers only it is refused,
    until ``tls.groups`` names it."""

    def p521_handshake(proxy: ProxyProcess) -> str:
        context = certs.ssl_client_context()
        context.set_ecdh_curve("secp521r1")
        with Pop3Wire(proxy.host, proxy.ports["pop3s"], context=context) as wire:
            return wire.sock.version() or ""

    with pytest.raises(ssl.SSLError):
        p521_handshake(make_proxy())
    widened = make_proxy({"tls": {"groups": ["X25519", "prime256v1", "secp521r1"]}})
    assert p521_handshake(widened) == "TLSv1.3"


def write_leaf(certs: Certs, directory: Path, name: str, days: int) -> float:
    """A certificate for ``name`` valid for ``days`` more days; returns its expiry."""
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    expires = now + datetime.timedelta(days=days)
    leaf = certs.ca.issue_cert(name, not_before=now - datetime.timedelta(days=1), not_after=expires)
    staging = directory / f".{name}.tmp"
    staging.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(directory / f"{name}.key"))
    staging.rename(directory / f"{name}.crt")
    return expires.timestamp()


def expiry_metrics(proxy: ProxyProcess) -> dict[str, float]:
    pattern = re.compile(
        r'^pop3proxy_tls_certificate_expiry_timestamp_seconds\{name="([^"]+)"\} (\S+)$', re.M
    )
    return {name: float(value) for name, value in pattern.findall(proxy.metrics())}


def test_expiry_metric_follows_certificates_swapped_on_disk(make_proxy, certs, tmp_path):
    """The default certificate and each SNI certificate by name; an SNI certificate
    replaced on disk shows its new expiry without a restart."""
    sni_dir = tmp_path / "sni"
    sni_dir.mkdir()
    first = write_leaf(certs, sni_dir, TENANT, days=30)
    proxy = make_proxy({"tls": {"sni_dir": str(sni_dir), "watch_interval": "100ms"}})
    expiries = expiry_metrics(proxy)
    assert expiries[TENANT] == first
    assert set(expiries) == {TENANT, "default"}  # trustme's leaf has no common name
    assert expiries["default"] > first
    second = write_leaf(certs, sni_dir, TENANT, days=5)
    assert wait_until(lambda: expiry_metrics(proxy).get(TENANT) == second, 10, message="reload")


def test_check_config_shows_the_effective_policy_and_warns_of_expiry(certs, tmp_path):
    """Each TLS listener's versions, suites and groups; a warning for a certificate
    that expires within 14 days; an error for a key that is not the certificate's."""
    sni_dir = tmp_path / "sni"
    sni_dir.mkdir()
    write_leaf(certs, sni_dir, "soon.example", days=3)
    config = ProxyProcess(
        tmp_path / "p",
        certs,
        {"tls": {"sni_dir": str(sni_dir), "min_version": "TLSv1.3"}},
    )
    result = run_cli(config.config_path, "check-config")
    assert result.returncode == 0, result.stderr
    assert "listener pop3s: " in result.stdout
    assert "profile=intermediate versions=TLSv1.3-TLSv1.3" in result.stdout
    assert "groups=X25519:prime256v1:secp384r1 preference=client" in result.stdout
    assert re.search(r"warning: certificate soon.example expires in [23]\.\d days", result.stderr)
    assert "default" not in result.stderr

    other = certs.ca.issue_cert(*SERVER_NAMES)
    other.private_key_pem.write_to_path(str(sni_dir / "soon.example.key"))
    result = run_cli(config.config_path, "check-config")
    assert result.returncode == 2
    assert "the key does not belong to the certificate" in result.stderr
    assert "soon.example" in result.stderr


def test_bad_tls_settings_name_their_key(tmp_path, certs):
    config = ProxyProcess(
        tmp_path / "p",
        certs,
        {
            "tls": {"profile": "strict", "groups": ["X25519", "P-999"], "ciphers": "NOPE"},
            "listeners": [
                {
                    "name": "plain",
                    "address": f"{LOOPBACK}:{free_port()}",
                    "tls": "none",
                    "require_tls": False,
                    "tls_profile": "old",
                },
            ],
        },
    )
    result = run_cli(config.config_path, "check-config")
    assert result.returncode == 2
    assert "tls.profile: expected one of modern, intermediate, old, got 'strict'" in result.stderr
    assert "tls.groups[1]: expected one of X25519" in result.stderr
    assert "tls.ciphers: expected an OpenSSL cipher string" in result.stderr
    assert "listeners[0].tls_profile: has no effect with tls: none" in result.stderr
