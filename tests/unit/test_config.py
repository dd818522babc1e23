"""parse_config / load_config: defaults, durations, problems with key paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pop3proxy.config import (
    AuthConfig,
    BackendsConfig,
    Config,
    ConfigError,
    DirectoryConfig,
    IPv6Budget,
    LimitsConfig,
    LoggingConfig,
    MetricsConfig,
    TenancyConfig,
    TimeoutsConfig,
    TLSConfig,
    load_config,
    parse_config,
)
from pop3proxy.schema import parse_duration


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    cert = tmp_path / "tls.crt"
    key = tmp_path / "tls.key"
    cert.write_text("cert")
    key.write_text("key")
    return {"cert": str(cert), "key": str(key)}


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


PLAIN_LISTENER = {"listeners": [{"name": "pop3", "address": "127.0.0.1:1110", "tls": "none"}]}


@pytest.mark.parametrize("document", [{}, None])
def test_defaults_need_tls_files(document: object) -> None:
    found = problems(document)
    assert any(p.startswith("tls.cert: required") for p in found)
    assert any(p.startswith("tls.key: required") for p in found)
    assert len(found) == 2


def test_defaults_with_tls_files(tls_files: dict[str, str]) -> None:
    config = parse_config({"tls": tls_files})
    assert [(lst.name, lst.port, lst.tls, lst.require_tls) for lst in config.listeners] == [
        ("pop3", 110, "starttls", True),
        ("pop3s", 995, "implicit", True),
    ]
    assert config.directory.store == "redis"
    assert config.directory.cache_ttl == 30.0
    assert config.tenancy.separator == "@"
    assert config.tenancy.default_tenant is None
    assert config.timeouts.idle == 600.0  # RFC 1939: at least 10 minutes
    assert config.limits.max_line_length == 2048
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9110)
    assert config.logging.format == "json"


def test_plaintext_listener_needs_no_tls_files() -> None:
    config = parse_config(PLAIN_LISTENER)
    assert config.listeners[0].require_tls is False
    assert config.tls.cert is None


def test_missing_tls_file_is_named(tmp_path: Path) -> None:
    found = problems({"tls": {"cert": str(tmp_path / "nope.crt"), "key": str(tmp_path / "k")}})
    assert any(p.startswith("tls.cert: no such file") for p in found)
    assert any(p.startswith("tls.key: no such file") for p in found)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("10m", 600.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
        (" 7 s ", 7.0),
        ("45", 45.0),
        (45, 45.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    config = parse_config({**PLAIN_LISTENER, "timeouts": {"drain": text}})
    assert config.timeouts.drain == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["30x", "-5s", "soon", "", True, -1, "1h30m", [1]])
def test_bad_durations_name_the_key(bad: object) -> None:
    found = problems({**PLAIN_LISTENER, "timeouts": {"idle": bad}})
    assert len(found) == 1
    assert found[0].startswith("timeouts.idle: ")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_infinite_durations_are_refused(bad: float) -> None:
    found = problems({**PLAIN_LISTENER, "timeouts": {"idle": bad}})
    assert found[0].startswith("timeouts.idle: ")


def test_zero_timeout_is_refused() -> None:
    assert problems({**PLAIN_LISTENER, "timeouts": {"auth": "0s"}}) == [
        "timeouts.auth: expected a duration greater than zero"
    ]


def test_bad_tls_mode_names_listener_index(tls_files: dict[str, str]) -> None:
    data = {
        "tls": tls_files,
        "listeners": [
            {"name": "a", "address": ":110"},
            {"name": "b", "address": ":995", "tls": "tsl"},
        ],
    }
    assert problems(data) == [
        "listeners[1].tls: expected one of none, starttls, implicit, got 'tsl'"
    ]


def test_several_problems_reported_at_once() -> None:
    data = {
        "listeners": [
            {"name": "a", "address": "nowhere", "tls": "none", "require_tls": "yes"},
            {"address": ":99999", "tls": "none"},
        ],
        "directory": {"store": "sql", "redis_url": "http://x", "cache_size": 0},
        "limits": {"max_line_length": 100, "max_errors": "ten"},
        "logging": {"level": "loud"},
        "metrics": {"address": "nope"},
    }
    found = problems(data)
    prefixes = [p.split(":")[0] for p in found]
    for path in (
        "listeners[0].address",
        "listeners[0].require_tls",
        "listeners[1].name",
        "listeners[1].address",
        "directory.store",
        "directory.redis_url",
        "directory.cache_size",
        "limits.max_line_length",
        "limits.max_errors",
        "logging.level",
        "metrics.address",
    ):
        assert path in prefixes, (path, found)
    assert str(ConfigError(found)).count("\n") == len(found) - 1


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({**PLAIN_LISTENER, "listners": []}, "listners"),
        ({**PLAIN_LISTENER, "tls": {"cert_file": "x"}}, "tls.cert_file"),
        ({**PLAIN_LISTENER, "timeouts": {"idel": "5m"}}, "timeouts.idel"),
        ({**PLAIN_LISTENER, "metrics": {"adress": ":1"}}, "metrics.adress"),
        ({**PLAIN_LISTENER, "directory": {"ttl": "5s"}}, "directory.ttl"),
        (
            {"listeners": [{"name": "a", "address": ":1", "tls": "none", "requre_tls": False}]},
            "listeners[0].requre_tls",
        ),
    ],
)
def test_unknown_keys_are_errors_at_any_depth(data: dict[str, object], path: str) -> None:
    assert problems(data) == [f"{path}: unknown key"]


def test_require_tls_with_tls_none_is_an_error() -> None:
    data = {"listeners": [{"name": "a", "address": ":1", "tls": "none", "require_tls": True}]}
    found = problems(data)
    assert len(found) == 1
    assert found[0].startswith("listeners[0].require_tls: cannot be true")


def test_empty_listener_list_is_an_error() -> None:
    assert "listeners: expected at least one listener" in problems({"listeners": []})


def test_duplicate_listener_names() -> None:
    data = {
        "listeners": [
            {"name": "a", "address": ":1", "tls": "none"},
            {"name": "a", "address": ":2", "tls": "none"},
        ]
    }
    assert problems(data) == ["listeners[1].name: duplicate listener name 'a'"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("just text", "(top level): expected a mapping, got str"),
        ({**PLAIN_LISTENER, "tls": [1]}, "tls: expected a mapping, got list"),
        ({"listeners": "pop3"}, "listeners: expected a list, got str"),
    ],
)
def test_wrong_shapes(data: object, expected: str) -> None:
    assert expected in problems(data)


def test_addresses() -> None:
    data = {
        "listeners": [
            {"name": "v4", "address": "127.0.0.1:1110", "tls": "none"},
            {"name": "v6", "address": "[::1]:1111", "tls": "none"},
            {"name": "any", "address": ":1112", "tls": "none"},
        ],
        "metrics": {"address": None},
    }
    config = parse_config(data)
    assert [(lst.host, lst.port) for lst in config.listeners] == [
        ("127.0.0.1", 1110),
        ("::1", 1111),
        ("0.0.0.0", 1112),
    ]
    assert config.metrics.host is None


def test_empty_separator_is_an_error() -> None:
    assert any(
        p.startswith("tenancy.separator")
        for p in problems({**PLAIN_LISTENER, "tenancy": {"separator": ""}})
    )


def test_file_store_needs_a_file() -> None:
    found = problems({**PLAIN_LISTENER, "directory": {"store": "file"}})
    assert found == ["directory.file: is required when store is file"]


def test_load_config_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "c.crt").write_text("x")
    (tmp_path / "c.key").write_text("x")
    path = tmp_path / "pop3proxy.yaml"
    path.write_text(
        "tls:\n  cert: c.crt\n  key: c.key\ndirectory:\n  store: file\n  file: t.yaml\n"
    )
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.source == path
    assert config.tls.cert == str((tmp_path / "c.crt").resolve())
    assert config.directory.file == str((tmp_path / "t.yaml").resolve())


def test_load_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    assert str(path) in info.value.problems[0]
    assert "cannot read" in info.value.problems[0]
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_load_config_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listeners: [\n  - name: a\n tls: :\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid YAML" in info.value.problems[0]
    assert info.value.__suppress_context__


def test_load_config_empty_file_is_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [p.split(":")[0] for p in info.value.problems] == ["tls.cert", "tls.key"]


def test_session_and_abuse_defaults(tls_files: dict[str, str]) -> None:
    """The dataclasses' defaults are what a file that sets nothing gets."""
    config = parse_config({"tls": tls_files})
    assert config.limits == LimitsConfig()
    assert config.auth == AuthConfig()
    assert config.limits.max_sessions_per_user == 10, "as many as Dovecot allows"
    assert config.auth.ipv6_prefix == 64
    assert config.auth.ipv6_networks == (IPv6Budget(56, 200), IPv6Budget(48, 500))
    assert config.auth.block_after_names_per_address == 20
    assert config.auth.known_address_ttl == 30 * 86400


def test_a_file_that_sets_nothing_reads_to_every_dataclass_default(
    tls_files: dict[str, str],
) -> None:
    """Each default is written once, as the field's default: every section
    of a file that sets nothing equals its dataclass built with no arguments."""
    config = parse_config({"tls": tls_files})
    assert dataclasses.replace(config.tls, cert=None, key=None) == TLSConfig()
    assert config.directory == DirectoryConfig()
    assert config.tenancy == TenancyConfig()
    assert config.timeouts == TimeoutsConfig()
    assert config.limits == LimitsConfig()
    assert config.auth == AuthConfig()
    assert config.backends == BackendsConfig()
    assert config.metrics == MetricsConfig()
    assert config.logging == LoggingConfig()
    assert config.workers == Config.workers


def test_abuse_budgets_are_configurable() -> None:
    auth = {
        "ipv6_prefix": 60,
        "ipv6_networks": [{"prefix": 52, "block_after": 7}],
        "block_after_names_per_address": 0,
        "known_address_ttl": "7d",
        "known_addresses_per_user": 3,
    }
    config = parse_config({**PLAIN_LISTENER, "auth": auth})
    assert config.auth.ipv6_networks == (IPv6Budget(52, 7),)
    assert config.auth.known_address_ttl == 7 * 86400
    assert parse_config({**PLAIN_LISTENER, "auth": {"ipv6_networks": []}}).auth.ipv6_networks == ()


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"ipv6_prefix": 129}, "auth.ipv6_prefix: expected an integer >= 1 and <= 128, got 129"),
        (
            {"ipv6_networks": [{"prefix": 64, "block_after": 5}]},
            "auth.ipv6_networks[0].prefix: expected a network wider than ipv6_prefix /64",
        ),
        (
            {"ipv6_networks": [{"prefix": 48, "block_after": 0}]},
            "auth.ipv6_networks[0].block_after: expected an integer >= 1, got 0",
        ),
        (
            {"ipv6_networks": [{"prefix": 48, "block_after": 5, "limit": 1}]},
            "auth.ipv6_networks[0].limit: unknown key",
        ),
        ({"ipv6_networks": "56"}, "auth.ipv6_networks: expected a list, got str"),
        ({"known_address_ttl": "forever"}, "auth.known_address_ttl: expected a duration"),
    ],
)
def test_bad_abuse_budgets_name_the_key(auth: dict, expected: str) -> None:
    assert any(p.startswith(expected) for p in problems({**PLAIN_LISTENER, "auth": auth}))


def test_a_hashed_log_user_needs_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POP3PROXY_LOG_HASH_KEY", raising=False)
    hashed = {**PLAIN_LISTENER, "logging": {"user": "hash"}}
    assert problems(hashed) == [
        "logging.user_hash_key_file: is required when user is hash (or set POP3PROXY_LOG_HASH_KEY)"
    ]
    missing = tmp_path / "absent"
    with_file = {**PLAIN_LISTENER, "logging": {"user": "hash", "user_hash_key_file": str(missing)}}
    assert problems(with_file) == [f"logging.user_hash_key_file: no such file: {missing}"]
    assert problems({**PLAIN_LISTENER, "logging": {"user": "name"}})[0].startswith("logging.user:")
    monkeypatch.setenv("POP3PROXY_LOG_HASH_KEY", "a key")
    assert parse_config(hashed).logging.user == "hash"


def test_auth_mechanisms_default_to_plain_and_take_the_token_mechanisms() -> None:
    assert parse_config(PLAIN_LISTENER).auth.mechanisms == ("PLAIN",)
    mechanisms = {"mechanisms": ["plain", "OAUTHBEARER", "XOAUTH2"]}
    config = parse_config({**PLAIN_LISTENER, "auth": mechanisms})
    assert config.auth.mechanisms == ("PLAIN", "OAUTHBEARER", "XOAUTH2")


@pytest.mark.parametrize("value", [[], "PLAIN", ["CRAM-MD5"], ["PLAIN", "PLAIN"]])
def test_auth_mechanisms_refuse_what_the_proxy_cannot_do(value: object) -> None:
    with pytest.raises(ConfigError, match=r"auth\.mechanisms: expected a non-empty list of"):
        parse_config({**PLAIN_LISTENER, "auth": {"mechanisms": value}})
