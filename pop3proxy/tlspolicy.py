"""What the listeners' TLS accepts: Mozilla's server-side profiles, and overrides.

Mozilla's server-side TLS guidelines (version 5.7, the one auditors and
scanners such as sslyze check against) define three profiles:

- ``modern``: TLS 1.3 only. For fleets where every client is from 2019 or
  later (Firefox 63, Android 10, Java 11, OpenSSL 1.1.1).
- ``intermediate`` (the default): TLS 1.2 with AEAD suites and forward
  secrecy, and TLS 1.3. Almost every client of the last ten years.
- ``old``: TLS 1.0 and 1.1 too, with CBC and RSA key exchange suites. Only
  for clients that cannot do better (Windows XP-era mail programs, old
  phones and appliances); it is weaker against downgrade and padding-oracle
  attacks.

TLS 1.3 suites are OpenSSL's defaults, which are the three each profile
lists. The finite-field DHE suites of the profiles are not offered: they need
DH parameters the proxy does not load, and every client that has them also
has ECDHE. Explicit ``tls.min_version``, ``tls.ciphers`` and ``tls.groups``
override the profile's value for that one setting.

Pure data and validation (``ssl`` is used only to check a cipher string),
so ``check-config`` can show what a listener will accept without opening it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

PROFILES = ("modern", "intermediate", "old")

VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
"""In the order of their age; names as ``ssl.SSLSocket.version()`` reports them."""

GROUPS = (
    "X25519",
    "X448",
    "prime256v1",
    "secp384r1",
    "secp521r1",
    "ffdhe2048",
    "ffdhe3072",
    "ffdhe4096",
    "ffdhe6144",
    "ffdhe8192",
)
"""Key exchange groups ``tls.groups`` may name (OpenSSL's names)."""

_MOZILLA_GROUPS = ("X25519", "prime256v1", "secp384r1")

_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)

_OLD_CIPHERS = (
    *_INTERMEDIATE_CIPHERS,
    "ECDHE-ECDSA-AES128-SHA256",
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES256-SHA384",
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-SHA256",
    "AES256-SHA256",
    "AES128-SHA",
    "AES256-SHA",
    "DES-CBC3-SHA",
)

OLD_SECURITY_LEVEL = "@SECLEVEL=0"
"""OpenSSL 3 refuses TLS 1.0 and 1.1 (their handshake signs with SHA-1) above
security level 0; Mozilla's ``old`` configuration for OpenSSL 3 says the same."""


@dataclass(frozen=True)
class TLSPolicy:
    """The effective TLS settings of one listener."""

    profile: str
    min_version: str
    ciphers: str
    """OpenSSL cipher string for TLS 1.2 and older (TLS 1.3 keeps OpenSSL's three)."""
    groups: tuple[str, ...]
    server_preference: bool
    """The server's cipher order wins. Mozilla asks for it only in ``old``, where
    a client's first choice may be a weak suite; elsewhere every offered suite
    is strong and the client knows best what its hardware does fast."""

    def describe(self) -> str:
        """One line for ``check-config``."""
        order = "server" if self.server_preference else "client"
        return (
            f"profile={self.profile} versions={self.min_version}-TLSv1.3 "
            f"ciphers={self.ciphers} groups={':'.join(self.groups)} preference={order}"
        )


_BASE = {
    "modern": TLSPolicy(
        "modern", "TLSv1.3", ":".join(_INTERMEDIATE_CIPHERS), _MOZILLA_GROUPS, False
    ),
    "intermediate": TLSPolicy(
        "intermediate", "TLSv1.2", ":".join(_INTERMEDIATE_CIPHERS), _MOZILLA_GROUPS, False
    ),
    "old": TLSPolicy(
        "old", "TLSv1", ":".join((*_OLD_CIPHERS, OLD_SECURITY_LEVEL)), _MOZILLA_GROUPS, True
    ),
}


def policy(
    profile: str,
    *,
    min_version: str | None = None,
    ciphers: str | None = None,
    groups: tuple[str, ...] | None = None,
) -> TLSPolicy:
    """``profile``'s settings, each explicit one taking the profile's place."""
    base = _BASE[profile]
    return TLSPolicy(
        profile=profile,
        min_version=min_version or base.min_version,
        ciphers=ciphers or base.ciphers,
        groups=groups or base.groups,
        server_preference=base.server_preference,
    )


def cipher_string_problem(ciphers: str) -> str | None:
    """Why OpenSSL refuses ``ciphers`` (no suite matches), or ``None``."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
    except ssl.SSLError:
        return f"expected an OpenSSL cipher string that names at least one suite, got {ciphers!r}"
    return None
