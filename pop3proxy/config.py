"""The configuration file: YAML in, frozen dataclasses out.

Every key has a default (docs/configuration.md lists them), written once:
as the dataclass field's default. The readers below take it from there
(``LimitsConfig().max_errors``), so the two cannot drift apart. All
problems are reported at once, each with its key path, by
:class:`ConfigError`.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from pop3proxy import tlspolicy
from pop3proxy.logs import LOG_HASH_KEY_ENV, USER_FORMS, read_hash_key
from pop3proxy.protocol import sasl
from pop3proxy.schema import TLS_MODES, Reader, SchemaError, parse_address

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text", "auto")


class ConfigError(SchemaError):
    """The configuration is invalid; ``problems`` has one line per mistake."""


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    host: str
    port: int
    tls: str = "starttls"
    require_tls: bool = True
    proxy_protocol: bool = False
    """Expect a PROXY v1/v2 header first (behind a load balancer)."""
    proxy_protocol_trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Peers allowed to send it; any other peer is disconnected."""
    proxy_protocol_timeout: float = 5.0
    tls_profile: str | None = None
    """This listener's Mozilla TLS profile; ``None``: ``tls.profile``."""


@dataclass(frozen=True)
class SNIEntry:
    """A certificate for one TLS server name (``tls.sni``), and the tenant it may pick."""

    name: str
    cert: str
    key: str
    tenant: str | None = None


@dataclass(frozen=True)
class TLSConfig:
    cert: str | None = None
    key: str | None = None
    profile: str = "intermediate"
    """Mozilla's ``modern``, ``intermediate`` or ``old`` (:mod:`pop3proxy.tlspolicy`)."""
    min_version: str | None = None
    """Overrides the profile's lowest TLS version."""
    ciphers: str | None = None
    """Overrides the profile's TLS 1.2 (and older) suites: an OpenSSL cipher string."""
    groups: tuple[str, ...] | None = None
    """Overrides the profile's key exchange groups."""
    sni: tuple[SNIEntry, ...] = ()
    sni_dir: str | None = None
    watch_interval: float = 1.0

    def policy(self, listener_profile: str | None = None) -> tlspolicy.TLSPolicy:
        """The effective settings of a listener with ``tls_profile: listener_profile``."""
        return tlspolicy.policy(
            listener_profile or self.profile,
            min_version=self.min_version,
            ciphers=self.ciphers,
            groups=self.groups,
        )


@dataclass(frozen=True)
class SentinelConfig:
    master: str
    addresses: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class DirectoryConfig:
    store: str = "redis"
    redis_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    """May hold a password (``redis://:pw@host``), so never in a repr."""
    key_prefix: str = "pop3proxy"
    cache_ttl: float = 30.0
    negative_ttl: float = 5.0
    stale_ttl: float = 3600.0
    cache_size: int = 10000
    redis_timeout: float = 1.0
    redis_pool_size: int = 50
    redis_username: str | None = None
    redis_password_file: str | None = None
    redis_ca_file: str | None = None
    sentinel: SentinelConfig | None = None
    cluster: bool = False
    file: str | None = None


def _without_user_info(url: str) -> str:
    """``url`` with whatever stands before an ``@`` in its authority (a user
    name and password) replaced, for error messages."""
    scheme, sep, rest = url.partition("//")
    authority, at, tail = rest.partition("@")
    if not sep or not at or "/" in authority:
        return url
    return f"{scheme}//***@{tail}"


@dataclass(frozen=True)
class TenancyConfig:
    separator: str = "@"
    default_tenant: str | None = None
    sni_tenant: bool = False


@dataclass(frozen=True)
class TimeoutsConfig:
    auth: float = 60.0
    idle: float = 600.0
    backend_connect: float = 5.0
    tls_handshake: float = 10.0
    drain: float = 30.0


@dataclass(frozen=True)
class LimitsConfig:
    max_connections: int = 10000
    max_line_length: int = 2048
    max_errors: int = 10
    max_connections_per_address: int = 100
    """Open connections from one client address, all replicas together; 0: no limit."""
    max_sessions_per_user: int = 10
    """Logged-in sessions of one user at once, as many as Dovecot allows per user
    and address (a phone and a desktop polling one mailbox); 1: RFC 1939's
    exclusive maildrop; 0: no limit."""
    lease_ttl: float = 60.0
    """How soon a crashed replica's connection and session slots come back."""
    login_history: int = 50
    """Logins remembered per user for ``pop3proxy user history``; 0: none."""
    login_history_ttl: float = 30 * 86400.0
    """A user's history goes this long after their last login."""
    download_per_user_day: int = 0
    """Bytes a user may download (backend to client, every replica together)
    per UTC day; 0: no budget (:mod:`pop3proxy.downloads`)."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class IPv6Budget:
    """Failures from all of one IPv6 network of ``prefix`` bits, wider than one client."""

    prefix: int
    block_after: int


@dataclass(frozen=True)
class AuthConfig:
    """Failed-login budgets (shared through Redis) and local password hashing."""

    failure_delay: float = 1.0
    """Every refusal waits at least this long after PASS, so that which
    check failed (tenant, user, password) cannot be told by timing."""
    failure_window: float = 900.0
    delay_after: int = 3
    block_after: int = 10
    block_after_per_address: int = 50
    """Failures from one client: one IPv4 address, or one IPv6 network of ``ipv6_prefix``."""
    ipv6_prefix: int = 64
    """An IPv6 client is its /64: one host or household holds all of it."""
    ipv6_networks: tuple[IPv6Budget, ...] = (IPv6Budget(56, 200), IPv6Budget(48, 500))
    """A /56 is a typical home or small site, a /48 a whole site: an attacker
    who rotates through the /64s of its allocation meets these."""
    block_after_names_per_address: int = 20
    """Distinct user names failing from one client (a password spray); 0: off."""
    known_address_ttl: float = 30 * 86400.0
    """A client that logged in as a user within this time is not held back by
    that user's failure budget (someone else's guessing); 0: off."""
    known_addresses_per_user: int = 10
    """The newest clients remembered per user (Redis holds no more)."""
    max_delay: float = 8.0
    allow: tuple[Network, ...] = ()
    argon2_time_cost: int = 3
    """argon2id passes: with 64 MiB, RFC 9106's second recommended option."""
    argon2_memory_cost: int = 65536
    """KiB."""
    argon2_parallelism: int = 1
    mechanisms: tuple[str, ...] = ("PLAIN",)
    """The SASL mechanisms CAPA advertises and AUTH takes; ``OAUTHBEARER`` and
    ``XOAUTH2`` take tokens of the tenant's issuer (its ``oauth:`` field)."""
    oauth_keys_max_age: float = 300.0
    """How long an issuer's signing keys (JWKS) are used before they are
    fetched again: a key the issuer removed stops working after this."""
    oauth_keys_refetch_cooldown: float = 30.0
    """A token signed by a key not in the cache fetches the keys again, at most
    once per this time per issuer (so forged ``kid`` values cannot make the
    proxy hammer the issuer)."""
    oauth_http_timeout: float = 5.0
    """Each request to an issuer (discovery, keys, introspection)."""


@dataclass(frozen=True)
class BackendsConfig:
    """Health and failover settings shared by every tenant's backends."""

    failure_threshold: int = 3
    failure_window: float = 30.0
    cooldown: float = 30.0
    health_check_interval: float = 0.0
    """0: no active checks (passive health only)."""
    max_attempts: int = 3
    """Backends tried per login before giving up with -ERR [SYS/TEMP]."""


@dataclass(frozen=True)
class MetricsConfig:
    host: str | None = "0.0.0.0"
    port: int = 9110
    max_tenant_labels: int = 100
    flush_interval: float = 5.0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "json"
    user: str = "plain"
    """How the user appears on session and login lines: ``plain``, ``hash`` or ``off``."""
    user_hash_key_file: str | None = None
    """The key of ``user: hash``: the same on every replica. Without it, the
    environment variable :data:`~pop3proxy.logs.LOG_HASH_KEY_ENV` holds the key."""


@dataclass(frozen=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    tls: TLSConfig = field(default_factory=TLSConfig)
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)
    tenancy: TenancyConfig = field(default_factory=TenancyConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    backends: BackendsConfig = field(default_factory=BackendsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    workers: int = 1
    source: Path | None = None


DEFAULT_LISTENERS = [
    {"name": "pop3", "address": "0.0.0.0:110", "tls": "starttls"},
    {"name": "pop3s", "address": "0.0.0.0:995", "tls": "implicit"},
]


def default_config_path() -> Path:
    """``$POP3PROXY_CONFIG``, then ``./pop3proxy.yaml``: the CLI's default."""
    return Path(os.environ.get("POP3PROXY_CONFIG") or "pop3proxy.yaml")


def load_config(path: Path) -> Config:
    """Read and validate a configuration file; raises :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"{path}: not valid YAML: {error}"]) from None
    config = parse_config(data, base=path.parent)
    return replace(config, source=path)


def parse_config(data: object, base: Path | None = None) -> Config:
    """Validate a parsed YAML document; relative file paths resolve against ``base``."""
    problems: list[str] = []
    top = Reader(data, "", problems)
    listeners = tuple(_listener(item) for item in top.items("listeners") or _default_listeners(top))
    _check_unique_names(listeners, problems)
    config = Config(
        listeners=listeners,
        tls=_tls(top.section("tls"), base),
        directory=_directory(top.section("directory"), base),
        tenancy=_tenancy(top.section("tenancy")),
        timeouts=_timeouts(top.section("timeouts")),
        limits=_limits(top.section("limits")),
        auth=_auth(top.section("auth")),
        backends=_backends(top.section("backends")),
        metrics=_metrics(top.section("metrics")),
        logging=_logging(top.section("logging"), base),
        workers=_workers(top),
    )
    top.finish()
    _check_tls_files(config, problems)
    if problems:
        raise ConfigError(problems)
    return config


def _default_listeners(top: Reader) -> list[Reader]:
    if top.has("listeners"):
        top.problem("listeners", "expected at least one listener")
    return [Reader(item, f"listeners[{i}]", []) for i, item in enumerate(DEFAULT_LISTENERS)]


def _listener(r: Reader) -> ListenerConfig:
    name = r.string("name", None, required=True) or "?"
    host, port = r.address("address", "0.0.0.0:110")
    tls = r.choice("tls", ListenerConfig.tls, TLS_MODES)
    require_tls = r.boolean("require_tls", tls != "none")
    if tls == "none" and require_tls:
        r.problem("require_tls", "cannot be true with tls: none (no login could ever succeed)")
    proxy_protocol = r.boolean("proxy_protocol", ListenerConfig.proxy_protocol)
    trusted = _networks(r, "proxy_protocol_trusted")
    if proxy_protocol and not trusted:
        r.problem(
            "proxy_protocol_trusted",
            "required with proxy_protocol: true (the load balancers' networks, e.g. [10.0.0.0/8])",
        )
    header_timeout = r.duration("proxy_protocol_timeout", ListenerConfig.proxy_protocol_timeout)
    if header_timeout <= 0:
        r.problem("proxy_protocol_timeout", "expected a duration greater than zero")
    profile = r.raw("tls_profile")
    if profile is not None:
        profile = r.choice("tls_profile", TLSConfig.profile, tlspolicy.PROFILES)
        if tls == "none":
            r.problem("tls_profile", "has no effect with tls: none")
    r.finish()
    return ListenerConfig(
        name=name,
        host=host,
        port=port,
        tls=tls,
        require_tls=require_tls,
        proxy_protocol=proxy_protocol,
        proxy_protocol_trusted=trusted,
        proxy_protocol_timeout=header_timeout,
        tls_profile=profile,
    )


def _networks(r: Reader, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    value = r.raw(key, [])
    if value is None:
        return ()
    if not isinstance(value, list):
        r.problem(key, f"expected a list of networks such as [10.0.0.0/8], got {value!r}")
        return ()
    networks = []
    for i, item in enumerate(value):
        try:
            networks.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError:
            r.problem(f"{key}[{i}]", f"expected a network such as 10.0.0.0/8, got {item!r}")
    return tuple(networks)


def _backends(r: Reader) -> BackendsConfig:
    defaults = BackendsConfig()
    config = BackendsConfig(
        failure_threshold=r.integer("failure_threshold", defaults.failure_threshold, minimum=1),
        failure_window=r.duration("failure_window", defaults.failure_window),
        cooldown=r.duration("cooldown", defaults.cooldown),
        health_check_interval=r.duration("health_check_interval", defaults.health_check_interval),
        max_attempts=r.integer("max_attempts", defaults.max_attempts, minimum=1),
    )
    for key in ("failure_window", "cooldown"):
        if getattr(config, key) <= 0:
            r.problem(key, "expected a duration greater than zero")
    r.finish()
    return config


def _check_unique_names(listeners: tuple[ListenerConfig, ...], problems: list[str]) -> None:
    seen: set[str] = set()
    for i, listener in enumerate(listeners):
        if listener.name in seen:
            problems.append(f"listeners[{i}].name: duplicate listener name {listener.name!r}")
        seen.add(listener.name)


def _resolve(path: str | None, base: Path | None) -> str | None:
    if path is None or base is None:
        return path
    return str((base / path).resolve()) if not os.path.isabs(path) else path


def _tls(r: Reader, base: Path | None) -> TLSConfig:
    defaults = TLSConfig()
    config = TLSConfig(
        cert=_resolve(r.string("cert", defaults.cert), base),
        key=_resolve(r.string("key", defaults.key), base),
        profile=r.choice("profile", defaults.profile, tlspolicy.PROFILES),
        min_version=_optional_choice(r, "min_version", tlspolicy.VERSIONS),
        ciphers=_ciphers(r),
        groups=_groups(r),
        sni=_sni(r.section("sni"), base),
        sni_dir=_resolve(r.string("sni_dir", defaults.sni_dir), base),
        watch_interval=r.duration("watch_interval", defaults.watch_interval),
    )
    if config.sni_dir is not None and not os.path.isdir(config.sni_dir):
        r.problem("sni_dir", f"no such directory: {config.sni_dir}")
    r.finish()
    return config


def _optional_choice(r: Reader, key: str, choices: tuple[str, ...]) -> str | None:
    if r.raw(key) is None:
        return None
    return r.choice(key, choices[0], choices)


def _ciphers(r: Reader) -> str | None:
    ciphers = r.string("ciphers", TLSConfig.ciphers)
    if ciphers is not None:
        problem = tlspolicy.cipher_string_problem(ciphers)
        if problem:
            r.problem("ciphers", problem)
            return None
    return ciphers


def _groups(r: Reader) -> tuple[str, ...] | None:
    value = r.raw("groups")
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        r.problem("groups", f"expected a list such as [X25519, prime256v1], got {value!r}")
        return None
    groups = []
    for i, group in enumerate(value):
        if group not in tlspolicy.GROUPS:
            expected = ", ".join(tlspolicy.GROUPS)
            r.problem(f"groups[{i}]", f"expected one of {expected}, got {group!r}")
        else:
            groups.append(group)
    return tuple(groups) or None


def _sni(r: Reader, base: Path | None) -> tuple[SNIEntry, ...]:
    """``tls.sni``: ``{hostname: {cert, key, tenant}}``; ``*.example.com`` matches one label."""
    entries = []
    for name in r.data:
        item = r.section(str(name))
        cert = _resolve(item.string("cert", None, required=True), base)
        key = _resolve(item.string("key", None, required=True), base)
        tenant = item.string("tenant", SNIEntry.tenant)
        item.finish()
        for label, path in (("cert", cert), ("key", key)):
            if path is not None and not os.path.isfile(path):
                item.problem(label, f"no such file: {path}")
        if cert and key:
            entries.append(
                SNIEntry(str(name).lower(), cert, key, tenant.lower() if tenant else None)
            )
    return tuple(entries)


def _check_tls_files(config: Config, problems: list[str]) -> None:
    needs_tls = [listener.name for listener in config.listeners if listener.tls != "none"]
    if not needs_tls:
        return
    for key in ("cert", "key"):
        value = getattr(config.tls, key)
        if value is None:
            problems.append(f"tls.{key}: required by listener {needs_tls[0]!r} (tls is not none)")
        elif not os.path.isfile(value):
            problems.append(f"tls.{key}: no such file: {value}")


def _directory(r: Reader, base: Path | None) -> DirectoryConfig:
    defaults = DirectoryConfig()
    store = r.choice("store", defaults.store, ("redis", "file"))
    config = DirectoryConfig(
        store=store,
        redis_url=r.string("redis_url", defaults.redis_url) or defaults.redis_url,
        key_prefix=r.string("key_prefix", defaults.key_prefix) or defaults.key_prefix,
        cache_ttl=r.duration("cache_ttl", defaults.cache_ttl),
        negative_ttl=r.duration("negative_ttl", defaults.negative_ttl),
        stale_ttl=r.duration("stale_ttl", defaults.stale_ttl),
        cache_size=r.integer("cache_size", defaults.cache_size, minimum=1),
        redis_timeout=r.duration("redis_timeout", defaults.redis_timeout),
        redis_pool_size=r.integer(
            "redis_pool_size", defaults.redis_pool_size, minimum=2, maximum=10000
        ),
        redis_username=r.string("redis_username", defaults.redis_username),
        redis_password_file=_resolve(
            r.string("redis_password_file", defaults.redis_password_file), base
        ),
        redis_ca_file=_resolve(r.string("redis_ca_file", defaults.redis_ca_file), base),
        sentinel=_sentinel(r) if r.raw("sentinel") is not None else defaults.sentinel,
        cluster=r.boolean("cluster", defaults.cluster),
        file=_resolve(r.string("file", defaults.file), base),
    )
    if not config.redis_url.startswith(("redis://", "rediss://", "unix://")):
        r.problem(
            "redis_url",
            "expected a redis://, rediss:// or unix:// URL, "
            f"got {_without_user_info(config.redis_url)!r}",
        )
    if config.redis_timeout <= 0:
        r.problem("redis_timeout", "expected a duration greater than zero")
    if config.cluster and config.sentinel is not None:
        r.problem("cluster", "cannot be true together with sentinel (choose one)")
    if (config.cluster or config.sentinel) and config.redis_url.startswith("unix://"):
        r.problem("redis_url", "unix:// cannot be used with cluster or sentinel")
    for key in ("redis_password_file", "redis_ca_file"):
        value = getattr(config, key)
        if value is not None and not os.path.isfile(value):
            r.problem(key, f"no such file: {value}")
    if store == "file" and config.file is None:
        r.problem("file", "is required when store is file")
    r.finish()
    return config


def _sentinel(parent: Reader) -> SentinelConfig:
    r = parent.section("sentinel")
    master = r.string("master", None, required=True) or "?"
    addresses: list[tuple[str, int]] = []
    raw = r.raw("addresses", [])
    if not isinstance(raw, list) or not raw:
        r.problem("addresses", "expected a list of HOST:PORT, at least one")
    else:
        for i, item in enumerate(raw):
            try:
                host, port = parse_address(item, default_host="127.0.0.1")
            except ValueError as error:
                r.problem(f"addresses[{i}]", str(error))
                continue
            addresses.append((host, port))
    r.finish()
    return SentinelConfig(master=master, addresses=tuple(addresses))


def _tenancy(r: Reader) -> TenancyConfig:
    defaults = TenancyConfig()
    separator = r.string("separator", defaults.separator, required=True) or defaults.separator
    default_tenant = r.string("default_tenant", defaults.default_tenant)
    config = TenancyConfig(
        separator=separator,
        default_tenant=default_tenant.lower() if default_tenant else None,
        sni_tenant=r.boolean("sni_tenant", defaults.sni_tenant),
    )
    r.finish()
    return config


def _timeouts(r: Reader) -> TimeoutsConfig:
    defaults = TimeoutsConfig()
    config = TimeoutsConfig(
        auth=r.duration("auth", defaults.auth),
        idle=r.duration("idle", defaults.idle),
        backend_connect=r.duration("backend_connect", defaults.backend_connect),
        tls_handshake=r.duration("tls_handshake", defaults.tls_handshake),
        drain=r.duration("drain", defaults.drain),
    )
    for key in ("auth", "idle", "backend_connect", "tls_handshake"):
        if getattr(config, key) <= 0:
            r.problem(key, "expected a duration greater than zero")
    r.finish()
    return config


def _limits(r: Reader) -> LimitsConfig:
    defaults = LimitsConfig()
    config = LimitsConfig(
        max_connections=r.integer("max_connections", defaults.max_connections, minimum=1),
        max_line_length=r.integer(
            "max_line_length", defaults.max_line_length, minimum=255, maximum=65536
        ),
        max_errors=r.integer("max_errors", defaults.max_errors, minimum=1),
        max_connections_per_address=r.integer(
            "max_connections_per_address", defaults.max_connections_per_address
        ),
        max_sessions_per_user=r.integer("max_sessions_per_user", defaults.max_sessions_per_user),
        lease_ttl=r.duration("lease_ttl", defaults.lease_ttl),
        login_history=r.integer("login_history", defaults.login_history, minimum=0, maximum=10000),
        login_history_ttl=r.duration("login_history_ttl", defaults.login_history_ttl),
        download_per_user_day=r.size("download_per_user_day", defaults.download_per_user_day),
    )
    if config.lease_ttl < 3:
        r.problem("lease_ttl", "expected at least 3s (leases are renewed every third of it)")
    r.finish()
    return config


def _auth(r: Reader) -> AuthConfig:
    defaults = AuthConfig()
    ipv6_prefix = r.integer("ipv6_prefix", defaults.ipv6_prefix, minimum=1, maximum=128)
    config = AuthConfig(
        failure_delay=r.duration("failure_delay", defaults.failure_delay),
        failure_window=r.duration("failure_window", defaults.failure_window),
        delay_after=r.integer("delay_after", defaults.delay_after, minimum=1),
        block_after=r.integer("block_after", defaults.block_after, minimum=1),
        block_after_per_address=r.integer(
            "block_after_per_address", defaults.block_after_per_address, minimum=1
        ),
        ipv6_prefix=ipv6_prefix,
        ipv6_networks=_ipv6_networks(r, ipv6_prefix),
        block_after_names_per_address=r.integer(
            "block_after_names_per_address", defaults.block_after_names_per_address
        ),
        known_address_ttl=r.duration("known_address_ttl", defaults.known_address_ttl),
        known_addresses_per_user=r.integer(
            "known_addresses_per_user", defaults.known_addresses_per_user, minimum=1
        ),
        max_delay=r.duration("max_delay", defaults.max_delay),
        allow=_networks(r, "allow"),
        argon2_time_cost=r.integer("argon2_time_cost", defaults.argon2_time_cost, minimum=1),
        argon2_memory_cost=r.integer("argon2_memory_cost", defaults.argon2_memory_cost, minimum=8),
        argon2_parallelism=r.integer("argon2_parallelism", defaults.argon2_parallelism, minimum=1),
        mechanisms=_mechanisms(r),
        oauth_keys_max_age=r.duration("oauth_keys_max_age", defaults.oauth_keys_max_age),
        oauth_keys_refetch_cooldown=r.duration(
            "oauth_keys_refetch_cooldown", defaults.oauth_keys_refetch_cooldown
        ),
        oauth_http_timeout=r.duration("oauth_http_timeout", defaults.oauth_http_timeout),
    )
    if config.oauth_http_timeout <= 0:
        r.problem("oauth_http_timeout", "expected a duration greater than zero")
    if config.failure_window < 1:
        r.problem("failure_window", "expected at least 1s")
    r.finish()
    return config


def _mechanisms(r: Reader) -> tuple[str, ...]:
    """``[PLAIN, OAUTHBEARER, XOAUTH2]``, any of them, in the order CAPA lists them."""
    raw = r.raw("mechanisms")
    if raw is None:
        return AuthConfig.mechanisms
    expected = "expected a non-empty list of " + ", ".join(sasl.MECHANISMS)
    if not isinstance(raw, list) or not raw:
        r.problem("mechanisms", expected)
        return AuthConfig.mechanisms
    names = [str(item).upper() for item in raw]
    unknown = [name for name in names if name not in sasl.MECHANISMS]
    if unknown or len(set(names)) != len(names):
        r.problem("mechanisms", f"{expected}, each once; got {raw!r}")
        return AuthConfig.mechanisms
    return tuple(names)


def _ipv6_networks(r: Reader, ipv6_prefix: int) -> tuple[IPv6Budget, ...]:
    """``[{prefix: 56, block_after: 200}, ...]``: each wider than one client."""
    if not r.has("ipv6_networks"):
        r.raw("ipv6_networks")
        return AuthConfig.ipv6_networks
    budgets = []
    for item in r.items("ipv6_networks"):
        prefix = item.integer("prefix", 0, minimum=1, maximum=128)
        if prefix >= ipv6_prefix:
            item.problem("prefix", f"expected a network wider than ipv6_prefix /{ipv6_prefix}")
        budgets.append(IPv6Budget(prefix, item.integer("block_after", 0, minimum=1)))
        item.finish()
    return tuple(budgets)


def _metrics(r: Reader) -> MetricsConfig:
    """``address: null`` turns the metrics listener off (``host`` ``None``)."""
    defaults = MetricsConfig()
    default_address = f"{defaults.host}:{defaults.port}"
    value = r.raw("address", default_address)
    max_tenant_labels = r.integer("max_tenant_labels", defaults.max_tenant_labels, minimum=1)
    flush_interval = r.duration("flush_interval", defaults.flush_interval)
    if flush_interval <= 0:
        r.problem("flush_interval", "expected a duration greater than zero")
    r.finish()
    host: str | None = None
    port = defaults.port
    if value is not None:
        reader = Reader({"address": value}, r.path, r.problems)
        host, port = reader.address("address", default_address)
    return MetricsConfig(
        host=host, port=port, max_tenant_labels=max_tenant_labels, flush_interval=flush_interval
    )


def _workers(top: Reader) -> int:
    """``workers: N`` processes (default 1); ``auto`` is one per CPU this process may use."""
    value = top.raw("workers", Config.workers)
    if value == "auto":
        return cpu_count()
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        top.problem("workers", f"expected an integer 1-1024 or auto, got {value!r}")
        return Config.workers
    return value


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask, as a container's cpuset sets it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _logging(r: Reader, base: Path | None) -> LoggingConfig:
    config = LoggingConfig(
        level=r.choice("level", LoggingConfig.level, LOG_LEVELS),
        format=r.choice("format", LoggingConfig.format, LOG_FORMATS),
        user=r.choice("user", LoggingConfig.user, USER_FORMS),
        user_hash_key_file=_resolve(
            r.string("user_hash_key_file", LoggingConfig.user_hash_key_file), base
        ),
    )
    key_file = config.user_hash_key_file
    if config.user == "hash" and key_file is None and not os.environ.get(LOG_HASH_KEY_ENV):
        r.problem(
            "user_hash_key_file", f"is required when user is hash (or set {LOG_HASH_KEY_ENV})"
        )
    elif key_file is not None and not os.path.isfile(key_file):
        r.problem("user_hash_key_file", f"no such file: {key_file}")
    elif config.user == "hash" and key_file is not None and not read_hash_key(key_file):
        r.problem("user_hash_key_file", f"is empty: {key_file}")
    r.finish()
    return config
