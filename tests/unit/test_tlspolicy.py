"""Mozilla's TLS profiles and the settings that override them."""

from __future__ import annotations

from pathlib import Path

import pytest

from pop3proxy import tlspolicy
from pop3proxy.config import ConfigError, parse_config


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("pem")
    return {"cert": str(tmp_path / "tls.crt"), "key": str(tmp_path / "tls.key")}


def test_profiles_follow_mozilla() -> None:
    modern, intermediate, old = (tlspolicy.policy(name) for name in tlspolicy.PROFILES)
    assert (modern.min_version, intermediate.min_version, old.min_version) == (
        "TLSv1.3",
        "TLSv1.2",
        "TLSv1",
    )
    assert "CBC" not in intermediate.ciphers and "-SHA:" not in intermediate.ciphers + ":"
    assert intermediate.ciphers.split(":")[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert {"ECDHE-RSA-AES128-SHA", "DES-CBC3-SHA"} <= set(old.ciphers.split(":"))
    assert old.ciphers.endswith(":@SECLEVEL=0")  # OpenSSL 3 refuses TLS 1.0 above it
    for policy in (modern, intermediate, old):
        assert policy.groups == ("X25519", "prime256v1", "secp384r1")
    assert (modern.server_preference, intermediate.server_preference) == (False, False)
    assert old.server_preference is True


def test_explicit_settings_override_only_their_own_part() -> None:
    policy = tlspolicy.policy("old", min_version="TLSv1.2", groups=("X25519",))
    assert (policy.min_version, policy.groups) == ("TLSv1.2", ("X25519",))
    assert policy.ciphers == tlspolicy.policy("old").ciphers
    assert policy.server_preference is True


def test_listener_profile_wins_over_the_top_level(tls_files: dict[str, str]) -> None:
    config = parse_config(
        {
            "tls": {**tls_files, "profile": "modern", "ciphers": "ECDHE-RSA-AES128-SHA"},
            "listeners": [
                {"name": "a", "address": ":995", "tls": "implicit", "tls_profile": "old"},
                {"name": "b", "address": ":996", "tls": "implicit"},
            ],
        }
    )
    first, second = (config.tls.policy(item.tls_profile) for item in config.listeners)
    assert (first.profile, first.min_version, first.ciphers) == (
        "old",
        "TLSv1",
        "ECDHE-RSA-AES128-SHA",
    )
    assert (second.profile, second.min_version) == ("modern", "TLSv1.3")


def test_default_is_intermediate(tls_files: dict[str, str]) -> None:
    config = parse_config({"tls": tls_files})
    assert config.tls.policy() == tlspolicy.policy("intermediate")
    assert config.tls.policy().describe() == (
        "profile=intermediate versions=TLSv1.2-TLSv1.3 "
        f"ciphers={tlspolicy.policy('intermediate').ciphers} "
        "groups=X25519:prime256v1:secp384r1 preference=client"
    )


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"min_version": "SSLv3"}, "tls.min_version: expected one of TLSv1, TLSv1.1"),
        ({"groups": "X25519"}, "tls.groups: expected a list such as [X25519, prime256v1]"),
        ({"groups": []}, "tls.groups: expected a list such as"),
        ({"groups": ["X25519", "P-256"]}, "tls.groups[1]: expected one of X25519, X448"),
        ({"ciphers": "NOTHING-REAL"}, "tls.ciphers: expected an OpenSSL cipher string"),
    ],
)
def test_bad_settings_name_their_key(tls_files: dict[str, str], tls: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"tls": {**tls_files, **tls}})
    assert [p for p in info.value.problems if p.startswith(expected)], info.value.problems
