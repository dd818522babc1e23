"""Pure parts of live reload, TLS name matching, log levels and the new config keys."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from pop3proxy import logs
from pop3proxy.config import ConfigError, SNIEntry, TLSConfig, parse_config
from pop3proxy.names import match_name
from pop3proxy.net import tls
from pop3proxy.reload import changes, live_config

PLAIN = {"listeners": [{"name": "pop3", "address": "127.0.0.1:1110", "tls": "none"}]}


def test_changes_split_live_parts_from_restart_parts() -> None:
    old = parse_config(PLAIN)
    new = parse_config(
        {
            "listeners": [{"name": "pop3", "address": "127.0.0.1:2110", "tls": "none"}],
            "timeouts": {"auth": "5s"},
            "limits": {"max_connections": 5, "max_errors": 3},
            "metrics": {"address": "127.0.0.1:9999", "max_tenant_labels": 7},
            "logging": {"level": "debug"},
            "workers": 2,
        }
    )
    live, restart = changes(old, new)
    assert live == ["timeouts", "limits", "metrics", "logging"]
    assert restart == ["listeners", "limits.max_connections", "metrics.address", "workers"]
    merged = live_config(old, new)
    assert merged.listeners == old.listeners and merged.workers == 1
    assert (merged.metrics.host, merged.metrics.port) == (old.metrics.host, old.metrics.port)
    assert merged.metrics.max_tenant_labels == 7
    assert merged.limits == dataclasses.replace(new.limits, max_connections=10000)
    assert merged.timeouts.auth == 5.0
    assert changes(old, old) == ([], [])


def test_new_keys_parse_and_explain_problems(tmp_path: Path) -> None:
    cert, key = tmp_path / "a.crt", tmp_path / "a.key"
    cert.write_text("x")
    key.write_text("x")
    config = parse_config(
        {
            **PLAIN,
            "workers": "auto",
            "tls": {"sni": {"POP.Acme.Example": {"cert": str(cert), "key": str(key)}}},
            "tenancy": {"sni_tenant": True},
            "metrics": {"max_tenant_labels": 3, "flush_interval": "2s"},
            "logging": {"format": "auto"},
        }
    )
    assert config.workers >= 1
    assert config.tls.sni == (SNIEntry("pop.acme.example", str(cert), str(key)),)
    assert config.metrics.max_tenant_labels == 3 and config.metrics.flush_interval == 2.0
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                **PLAIN,
                "workers": 0,
                "tls": {"sni": {"x.example": {"cert": "/nope.crt"}}, "sni_dir": "/nope"},
                "metrics": {"max_tenant_labels": 0},
            }
        )
    found = "\n".join(info.value.problems)
    for expected in (
        "workers: expected an integer 1-1024 or auto, got 0",
        "tls.sni.x.example.key: is required",
        "tls.sni.x.example.cert: no such file: /nope.crt",
        "tls.sni_dir: no such directory: /nope",
        "metrics.max_tenant_labels: expected an integer >= 1",
    ):
        assert expected in found


def test_match_name_exact_then_one_label_wildcard() -> None:
    names = {"pop.acme.example": 1, "*.other.example": 2}
    assert match_name(names, "POP.acme.example.") == "pop.acme.example"
    assert match_name(names, "mail.other.example") == "*.other.example"
    assert match_name(names, "a.mail.other.example") is None
    assert match_name(names, "other.example") is None


def test_sni_dir_pairs_and_fingerprint_follows_symlinks(tmp_path: Path) -> None:
    sni = tmp_path / "sni"
    sni.mkdir()
    for name in ("a.example.crt", "a.example.key", "b.example.crt", ".hidden.crt"):
        (sni / name).write_text(name)
    config = TLSConfig(sni_dir=str(sni))
    assert [e.name for e in tls.sni_entries(config)] == ["a.example"]  # b has no key
    target1, target2 = tmp_path / "v1", tmp_path / "v2"
    target1.write_text("one")
    target2.write_text("two!")
    link = tmp_path / "tls.crt"
    link.symlink_to(target1)
    watched = TLSConfig(cert=str(link), key=str(link))
    before = tls.fingerprint(watched)
    assert before == tls.fingerprint(watched)
    tmp = tmp_path / "tmp"
    tmp.symlink_to(target2)
    tmp.replace(link)
    assert tls.fingerprint(watched) != before


def test_bad_certificate_error_names_the_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    with pytest.raises(tls.CertificateError, match=str(cert)):
        tls.server_context(TLSConfig(cert=str(cert), key=str(key)))


def test_log_level_steps_are_clamped() -> None:
    root = logging.getLogger()
    saved = root.level
    try:
        logs.set_level("info")
        assert logs.step_level(-1) == "debug"
        assert logs.step_level(-1) == "debug"
        assert logs.step_level(+2) == "warning"
        assert logs.step_level(+5) == "error"
    finally:
        root.setLevel(saved)
