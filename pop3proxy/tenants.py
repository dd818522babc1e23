"""The tenant record: its shape, validation, and the user-name rules.

The same record lives in Redis as JSON (``<prefix>:tenant:<name>``) and in a
tenants YAML file under ``tenants:``. It is validated when written (the CLI
refuses a bad record with the field path) and when read (a corrupt record
fails only that tenant). ``version`` lets the shape evolve: a reader refuses
records newer than it understands instead of misreading them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pop3proxy.config import TLS_MODES
from pop3proxy.schema import Reader, SchemaError

RECORD_VERSION = 1
POLICIES = ("failover", "round_robin", "hash")
AUTH_MODES = ("passthrough",)
FORWARD_CLIENT = ("none", "xclient", "proxy_v1", "proxy_v2")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")
_TEMPLATE_FIELDS = re.compile(r"\{([^{}]*)\}")
TEMPLATE_NAMES = ("user", "local", "domain")


class RecordError(SchemaError):
    """A tenant record is invalid; ``problems`` names each field."""


@dataclass(frozen=True)
class Backend:
    host: str
    port: int = 110
    tls: str = "none"
    verify: bool = True
    ca_file: str | None = None
    server_name: str | None = None
    forward_client: str = "none"
    connect_timeout: float | None = None
    """Seconds to connect (and for each login step); ``None``: ``timeouts.backend_connect``."""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Tenant:
    name: str
    backends: tuple[Backend, ...]
    enabled: bool = True
    policy: str = "failover"
    auth: str = "passthrough"
    login: str = "{local}"
    max_sessions: int = 200
    version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backends"] = [_backend_dict(b) for b in self.backends]
        return data

    def backend_login(self, name: UserName) -> str:
        """The user name the backend sees, from the ``login`` template."""
        return self.login.format(user=name.full, local=name.local, domain=name.tenant or self.name)


def _backend_dict(backend: Backend) -> dict[str, Any]:
    data = asdict(backend)
    if data["connect_timeout"] is None:
        # Left out when unset, so records stay readable by proxies that
        # predate the field (they refuse unknown keys) during an upgrade.
        del data["connect_timeout"]
    return data


@dataclass(frozen=True)
class UserName:
    """A client's login name split into the part the backend knows and the tenant."""

    full: str
    local: str
    tenant: str | None = field(default=None)


def split_user(user: str, separator: str, default_tenant: str | None) -> UserName:
    """``alice@acme.example`` -> local ``alice``, tenant ``acme.example``.

    The last separator wins, so a local part may itself contain it. With no
    separator the tenant is ``default_tenant`` (which may be ``None``).
    """
    local, sep, tenant = user.rpartition(separator)
    if not sep or not local or not tenant:
        return UserName(full=user, local=user, tenant=default_tenant and default_tenant.lower())
    return UserName(full=user, local=local, tenant=tenant.lower())


def valid_tenant_name(name: str) -> bool:
    return bool(_TENANT_NAME.match(name))


def parse_tenant(data: object, path: str = "") -> Tenant:
    """Validate one record; raises :class:`RecordError` listing every problem."""
    problems: list[str] = []
    r = Reader(data, path, problems)
    version = r.integer("version", RECORD_VERSION, minimum=1)
    if version > RECORD_VERSION:
        r.problem(
            "version", f"record version {version} is newer than this proxy ({RECORD_VERSION})"
        )
    name = r.string("name", None, required=True) or ""
    if name and not valid_tenant_name(name):
        r.problem(
            "name", f"expected a DNS-like name (letters, digits, '.', '-', '_'), got {name!r}"
        )
    backends = tuple(_backend(item) for item in r.items("backends"))
    if not backends:
        r.problem("backends", "expected at least one backend")
    login = r.string("login", "{local}") or "{local}"
    try:
        login.format(user="u", local="l", domain="d")
    except (ValueError, KeyError, IndexError, AttributeError):
        r.problem("login", f"not a valid template: {login!r} (use {{user}}, {{local}}, {{domain}})")
    for used in _TEMPLATE_FIELDS.findall(login):
        if used not in TEMPLATE_NAMES:
            r.problem(
                "login", f"unknown placeholder {{{used}}}; use {{user}}, {{local}} or {{domain}}"
            )
    tenant = Tenant(
        name=name.lower(),
        backends=backends,
        enabled=r.boolean("enabled", True),
        policy=r.choice("policy", "failover", POLICIES),
        auth=r.choice("auth", "passthrough", AUTH_MODES),
        login=login,
        max_sessions=r.integer("max_sessions", 200, minimum=1),
        version=version,
    )
    r.finish()
    if problems:
        raise RecordError(problems)
    return tenant


def _backend(r: Reader) -> Backend:
    host = r.string("host", None, required=True) or ""
    tls = r.choice("tls", "none", TLS_MODES)
    backend = Backend(
        host=host,
        port=r.integer("port", 995 if tls == "implicit" else 110, minimum=1, maximum=65535),
        tls=tls,
        verify=r.boolean("verify", True),
        ca_file=r.string("ca_file", None),
        server_name=r.string("server_name", None),
        forward_client=r.choice("forward_client", "none", FORWARD_CLIENT),
        connect_timeout=_optional_timeout(r, "connect_timeout"),
    )
    r.finish()
    return backend


def _optional_timeout(r: Reader, key: str) -> float | None:
    if r.raw(key) is None:
        return None
    before = len(r.problems)
    seconds = r.duration(key, 0.0)
    if seconds <= 0:
        if len(r.problems) == before:
            r.problem(key, "expected a duration greater than zero")
        return None
    return seconds


def parse_backend_address(text: str) -> dict[str, Any]:
    """``HOST:PORT`` from the CLI into a backend mapping."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return {"host": host.strip("[]"), "port": int(port)}
