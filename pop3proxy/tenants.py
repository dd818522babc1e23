"""The tenant record: its shape, validation, and the user-name rules.

The same record lives in Redis as JSON (``<prefix>:tenant:<name>``) and in a
tenants YAML file under ``tenants:``. It is validated when written (the CLI
refuses a bad record with the field path) and when read (a corrupt record
fails only that tenant). ``version`` lets the shape evolve: a reader refuses
records newer than it understands instead of misreading them.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from pop3proxy.names import valid_host_name
from pop3proxy.schema import TLS_MODES, Reader, SchemaError

RECORD_VERSION = 1
POLICIES = ("failover", "round_robin", "hash")
AUTH_MODES = ("passthrough", "local")
FORWARD_CLIENT = ("none", "xclient", "proxy_v1", "proxy_v2")
LOGIN_COMMANDS = ("user_pass", "auth_plain", "xoauth2")
APP_PASSWORD_MODES = ("off", "allowed", "required")
_TEMPLATE_FIELDS = re.compile(r"\{([^{}]*)\}")
TEMPLATE_NAMES = ("user", "local", "domain")


class RecordError(SchemaError):
    """A tenant record is invalid; ``problems`` names each field."""


_MASTER_FIELDS = ("master_user", "master_login", "master_password_env", "master_password_file")
MASTER_TEMPLATE_NAMES = (*TEMPLATE_NAMES, "login", "master")


POP3_PORT = 110
"""RFC 1939."""
POP3S_PORT = 995
"""POP3 over implicit TLS (RFC 8314): a backend's port when it has ``tls: implicit``."""


@dataclass(frozen=True)
class Backend:
    host: str
    port: int = POP3_PORT
    tls: str = "none"
    verify: bool = True
    ca_file: str | None = None
    server_name: str | None = None
    forward_client: str = "none"
    connect_timeout: float | None = None
    """Seconds to connect (and for each login step); ``None``: ``timeouts.backend_connect``."""
    login_command: str = "user_pass"
    """``auth_plain``: log in with one AUTH PLAIN (RFC 5034) instead of USER and
    PASS. ``xoauth2``: a client's OAuth token goes on to this backend (AUTH
    XOAUTH2), which checks it itself; passwords still use USER and PASS."""

    @functools.cached_property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


OAUTH_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
"""The signature algorithms a tenant may accept: public-key ones only. Never
``none``, and never an HMAC one (``HS256``): with HMAC the issuer's public
key would be the secret, and anyone could sign with it."""


@dataclass(frozen=True)
class OAuth:
    """A tenant's identity provider: whose tokens its users may log in with."""

    issuer: str
    """The ``iss`` every token must carry; its discovery documents live below it."""
    audience: str
    """The ``aud`` a token must be for: the API registered for mail, not the IdP's own."""
    username_claim: str = "email"
    """The claim that names the user; it must equal the name the client logs in as."""
    scopes: tuple[str, ...] = ()
    """Scopes a token must all have (``scope`` or ``scp``)."""
    jwks_uri: str | None = None
    """The signing keys; unset: from the issuer's discovery document."""
    introspection_url: str | None = None
    """RFC 7662: opaque (non-JWT) tokens are asked about here."""
    client_id: str | None = None
    client_secret_env: str | None = None
    client_secret_file: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256", "EdDSA")
    leeway: float = 60.0
    """Seconds of clock difference allowed on ``exp``, ``nbf`` and ``iat``."""
    ca_file: str | None = None
    """CA bundle for the issuer's HTTPS; unset: the system's."""

    def client_secret(self) -> bytes:
        """The introspection client's secret, read at each use (so a rotated
        Secret applies); the value never reaches an error message."""
        return _read_secret(self.client_secret_env, self.client_secret_file, "client secret")


_OAUTH_URLS = ("issuer", "jwks_uri", "introspection_url")


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
    master_user: str | None = None
    """The backend's master user the proxy logs in as (``auth: local``, app passwords)."""
    master_login: str = "{login}*{master}"
    """The backend user name as the master user, Dovecot style ``user*master``."""
    master_password_env: str | None = None
    """The environment variable holding the master password."""
    master_password_file: str | None = None
    """Or the file holding it (a mounted Secret)."""
    case_sensitive_users: bool = False
    """The backends tell ``Bob`` from ``bob``: local parts keep their case.
    By default they are folded to lower case, so every spelling is one user."""
    app_passwords: str = "off"
    """``off``, ``allowed`` (app passwords besides the mailbox password) or
    ``required`` (only app passwords): see :mod:`pop3proxy.apppasswords`."""
    oauth: OAuth | None = None
    """Users may log in with tokens of this issuer (OAUTHBEARER, XOAUTH2)."""

    @property
    def has_master(self) -> bool:
        """The proxy may log in to the backend as the master user: it judges
        the client's credential itself (``auth: local`` or app passwords)."""
        return self.auth == "local" or self.app_passwords != "off"

    @property
    def has_master_credentials(self) -> bool:
        """Master credentials are configured: the proxy can log any user in to
        the backend itself, after checking a local password or a token."""
        return bool(self.master_user and (self.master_password_env or self.master_password_file))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["backends"] = [_backend_dict(b) for b in self.backends]
        if not self.has_master and not self.master_user:
            # Left out when unused, so records stay readable by proxies
            # that predate local authentication (they refuse unknown keys).
            for key in _MASTER_FIELDS:
                del data[key]
        if not self.case_sensitive_users:
            del data["case_sensitive_users"]  # readable by proxies that predate it
        if self.app_passwords == "off":
            del data["app_passwords"]  # readable by proxies that predate app passwords
        if self.oauth is None:
            del data["oauth"]  # readable by proxies that predate it
        else:
            data["oauth"] = {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in data["oauth"].items()
                if value is not None
            }
        return data

    def identity(self, name: UserName) -> Identity:
        """The one user behind however ``name`` was typed: this tenant, and the
        local part case-folded unless :attr:`case_sensitive_users`."""
        return Identity(self.canonical_local(name.local), self.name, name.separator)

    def canonical_local(self, local: str) -> str:
        return local if self.case_sensitive_users else local.lower()

    def backend_login(self, identity: Identity, as_master: bool | None = None) -> str:
        """The user name the backend sees: the ``login`` template, or logging
        in as the master user (``as_master``; by default with ``auth: local``)
        the ``master_login`` template around it. Built from the canonical
        identity, so every spelling of a name logs in to the same mailbox."""
        fields = {"user": identity.full, "local": identity.local, "domain": identity.tenant}
        login = self.login.format(**fields)
        if not (self.auth == "local" if as_master is None else as_master):
            return login
        return self.master_login.format(**fields, login=login, master=self.master_user)

    def master_password(self) -> bytes:
        """Read where the record says, at each login (so a rotated Secret applies).

        A file's one trailing line end (``echo pw > file``) is not part of the
        password. Raises :class:`MasterPasswordMissing` (or
        :class:`MasterPasswordInvalid`) without saying more than where it
        looked: the value itself never reaches an error message.
        """
        return _read_secret(self.master_password_env, self.master_password_file, "master password")


def _read_secret(env: str | None, path: str | None, what: str) -> bytes:
    """A secret from an environment variable or a file; see :meth:`Tenant.master_password`."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise MasterPasswordMissing(f"${env} is not set")
        return _usable(value.encode(), f"${env}")
    if path:
        try:
            with open(path, "rb") as file:
                content = file.read()
        except OSError as error:
            raise MasterPasswordMissing(f"{path}: {error.strerror}") from None
        content = content.removesuffix(b"\n").removesuffix(b"\r")
        return _usable(content, path)
    raise MasterPasswordMissing(f"no {what} environment variable or file")


class MasterPasswordMissing(Exception):
    """``auth: local`` cannot log in to the backend: its master password is unreadable."""


class MasterPasswordInvalid(MasterPasswordMissing):
    """The master password holds a byte that would end the PASS line (or split
    the AUTH PLAIN response) it is sent in: CR, LF or NUL. Refused rather
    than sent, so no secret file can put a command of its own on the wire."""


_LINE_BREAKERS = re.compile(b"[\x00\r\n]").search


def _usable(password: bytes, where: str) -> bytes:
    if not password:
        raise MasterPasswordMissing(f"{where} is empty")
    if _LINE_BREAKERS(password):
        raise MasterPasswordInvalid(f"{where} holds a CR, LF or NUL; expected one line")
    return password


def _backend_dict(backend: Backend) -> dict[str, Any]:
    data = asdict(backend)
    # Left out when unset, so records stay readable by proxies that predate
    # these fields (they refuse unknown keys) during an upgrade.
    if data["connect_timeout"] is None:
        del data["connect_timeout"]
    if data["login_command"] == Backend.login_command:
        del data["login_command"]
    return data


# Slotted, not frozen: made for every login (see limits.Verdict for the cost).
@dataclass(slots=True)
class UserName:
    """A client's login name split into the part the backend knows and the tenant.

    ``local`` is as typed; ``tenant`` is lower case (tenant names are DNS
    names, which are case-insensitive), filled in from the SNI name or the
    default tenant when the name had none.
    """

    full: str
    local: str
    tenant: str | None = None
    separator: str = "@"

    @property
    def folded(self) -> str:
        """``local@tenant`` in lower case, whatever was typed and wherever the
        tenant came from: the failure budgets' key.

        Budgets are checked before the tenant record is read (a blocked
        guesser costs no directory lookup), so before its case rule is
        known. Folding is the safe side: on a case-insensitive backend
        ``Alice`` and ``alice`` are one mailbox and must share one budget,
        or each spelling would bring ten more guesses; on a case-sensitive
        one the two users share a budget, which only makes it stricter.
        """
        return f"{self.local.lower()}{self.separator}{self.tenant or ''}"


@dataclass(frozen=True, slots=True)
class Identity:
    """One user of one tenant: what every check, key, slot, pin, log line and
    backend login name is built from (:meth:`Tenant.identity`)."""

    local: str
    """Case-folded unless the tenant's backends are case-sensitive."""
    tenant: str
    separator: str = "@"

    @property
    def full(self) -> str:
        return f"{self.local}{self.separator}{self.tenant}"

    def __str__(self) -> str:
        return self.full


class MalformedName(ValueError):
    """A login name with the separator more than once, or nothing on one side of it."""


def split_user(user: str, separator: str, default_tenant: str | None) -> UserName:
    """``alice@acme.example`` -> local ``alice``, tenant ``acme.example``.

    With no separator the tenant is ``default_tenant`` (which may be
    ``None``), so ``alice`` and ``alice@acme.example`` are the same user
    when ``acme.example`` is the default (or the SNI tenant).

    A name with the separator more than once (``alice@acme.example@acme.example``)
    or with nothing before or after it (``alice@``) raises
    :class:`MalformedName`. Read either way, such a name would be a second
    spelling of some user: a local part ``alice@acme.example`` is ``alice``
    to a backend that drops the domain, and ``alice@`` is ``alice`` to one
    that ignores an empty one. Each spelling would bring its own failure
    budget and session slots, so none is accepted.
    """
    local, sep, tenant = user.partition(separator)
    if not sep:
        return UserName(user, user, default_tenant and default_tenant.lower(), separator)
    if not local or not tenant or separator in tenant:
        raise MalformedName(f"expected USER or USER{separator}TENANT, got {user!r}")
    return UserName(user, local, tenant.lower(), separator)


_NOT_ONE_WORD = "expected one word: no spaces or control characters (it is sent in USER)"


def one_word(text: str) -> bool:
    """Fit to be a USER argument: no space, no control or format character."""
    return text.isprintable() and " " not in text


def parse_tenant(data: object, path: str = "") -> Tenant:
    """Validate one record; raises :class:`RecordError` listing every problem.

    A field left out gets the dataclass field's default (``Tenant.policy``),
    the one place each default is written.
    """
    problems: list[str] = []
    r = Reader(data, path, problems)
    version = r.integer("version", RECORD_VERSION, minimum=1)
    if version > RECORD_VERSION:
        r.problem(
            "version", f"record version {version} is newer than this proxy ({RECORD_VERSION})"
        )
    name = r.string("name", None, required=True) or ""
    if name and not valid_host_name(name):
        r.problem(
            "name", f"expected a DNS-like name (letters, digits, '.', '-', '_'), got {name!r}"
        )
    backends = tuple(_backend(item) for item in r.items("backends"))
    if not backends:
        r.problem("backends", "expected at least one backend")
    login = r.string("login", Tenant.login) or Tenant.login
    try:
        login.format(user="u", local="l", domain="d")
    except (ValueError, KeyError, IndexError, AttributeError):
        r.problem("login", f"not a valid template: {login!r} (use {{user}}, {{local}}, {{domain}})")
    for used in _TEMPLATE_FIELDS.findall(login):
        if used not in TEMPLATE_NAMES:
            r.problem(
                "login", f"unknown placeholder {{{used}}}; use {{user}}, {{local}} or {{domain}}"
            )
    if not one_word(login):
        r.problem("login", _NOT_ONE_WORD)
    tenant = Tenant(
        name=name.lower(),
        backends=backends,
        enabled=r.boolean("enabled", Tenant.enabled),
        policy=r.choice("policy", Tenant.policy, POLICIES),
        auth=r.choice("auth", Tenant.auth, AUTH_MODES),
        login=login,
        max_sessions=r.integer("max_sessions", Tenant.max_sessions, minimum=1),
        version=version,
        case_sensitive_users=r.boolean("case_sensitive_users", Tenant.case_sensitive_users),
        app_passwords=r.choice("app_passwords", Tenant.app_passwords, APP_PASSWORD_MODES),
        oauth=_oauth(r.section("oauth")) if r.raw("oauth") is not None else None,
        **_master_fields(r),
    )
    token_backends = all(backend.login_command == "xoauth2" for backend in backends)
    if tenant.oauth is not None and not (tenant.has_master_credentials or token_backends):
        r.problem(
            "oauth",
            "a token login needs master credentials (master_user and master_password_env"
            " or master_password_file) or backends with login_command: xoauth2",
        )
    if tenant.has_master:
        # Why the proxy needs them: it judges the credential, then logs in as master.
        why = (
            "auth: local"
            if tenant.auth == "local"
            else f"app_passwords: {tenant.app_passwords} (after an app password the proxy "
            "logs in to the backend as the master user)"
        )
        if not tenant.master_user:
            r.problem("master_user", f"is required with {why}")
        if not (tenant.master_password_env or tenant.master_password_file):
            r.problem(
                "master_password_env", f"{why} needs master_password_env or master_password_file"
            )
    r.finish()
    if problems:
        raise RecordError(problems)
    return tenant


def _master_fields(r: Reader) -> dict[str, Any]:
    template = r.string("master_login", Tenant.master_login) or Tenant.master_login
    for used in _TEMPLATE_FIELDS.findall(template):
        if used not in MASTER_TEMPLATE_NAMES:
            r.problem("master_login", f"unknown placeholder {{{used}}}")
    try:
        template.format(user="u", local="l", domain="d", login="x", master="m")
    except (ValueError, KeyError, IndexError, AttributeError):
        r.problem("master_login", f"not a valid template: {template!r}")
    if not one_word(template):
        r.problem("master_login", _NOT_ONE_WORD)
    master_user = r.string("master_user", Tenant.master_user)
    if master_user is not None and not one_word(master_user):
        r.problem("master_user", _NOT_ONE_WORD)
    return {
        "master_user": master_user,
        "master_login": template,
        "master_password_env": r.string("master_password_env", Tenant.master_password_env),
        "master_password_file": r.string("master_password_file", Tenant.master_password_file),
    }


def _oauth(r: Reader) -> OAuth:
    defaults = OAuth("", "")
    urls = {key: r.string(key, None, required=key == "issuer") for key in _OAUTH_URLS}
    for key, url in urls.items():
        if url is not None and not issuer_url_allowed(url):
            r.problem(
                key, f"expected an https:// URL (http:// only on a loopback address), got {url!r}"
            )
    scopes = _words(r, "scopes", ())
    algorithms = _words(r, "algorithms", defaults.algorithms)
    refused = [name for name in algorithms if name not in OAUTH_ALGORITHMS]
    if refused or not algorithms:
        r.problem(
            "algorithms",
            f"expected some of {', '.join(OAUTH_ALGORITHMS)} (never none or HS*), got {refused}",
        )
    leeway = r.duration("leeway", defaults.leeway)
    if not 0 <= leeway <= 600:
        r.problem("leeway", "expected a duration from 0s to 10m")
    oauth = OAuth(
        issuer=urls["issuer"] or "",
        audience=r.string("audience", None, required=True) or "",
        username_claim=r.string("username_claim", defaults.username_claim) or "email",
        scopes=scopes,
        jwks_uri=urls["jwks_uri"],
        introspection_url=urls["introspection_url"],
        client_id=r.string("client_id", None),
        client_secret_env=r.string("client_secret_env", None),
        client_secret_file=r.string("client_secret_file", None),
        algorithms=algorithms,
        leeway=leeway,
        ca_file=r.string("ca_file", None),
    )
    if oauth.introspection_url and not (
        oauth.client_id and (oauth.client_secret_env or oauth.client_secret_file)
    ):
        r.problem(
            "introspection_url",
            "needs client_id and client_secret_env or client_secret_file",
        )
    r.finish()
    return oauth


def _words(r: Reader, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = r.raw(key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(
        isinstance(item, str) and item and one_word(item) for item in value
    ):
        r.problem(key, f"expected a list of words, got {value!r}")
        return default
    return tuple(value)


def issuer_url_allowed(url: str) -> bool:
    """https, or http to a loopback address (a sidecar, a test): a token's
    keys fetched over plain HTTP from elsewhere could be anyone's."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if not parts.hostname or parts.username or parts.password:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(parts.hostname).is_loopback
    except ValueError:
        return False


def _backend(r: Reader) -> Backend:
    host = r.string("host", None, required=True) or ""
    tls = r.choice("tls", Backend.tls, TLS_MODES)
    port = POP3S_PORT if tls == "implicit" else Backend.port
    backend = Backend(
        host=host,
        port=r.integer("port", port, minimum=1, maximum=65535),
        tls=tls,
        verify=r.boolean("verify", Backend.verify),
        ca_file=r.string("ca_file", Backend.ca_file),
        server_name=r.string("server_name", Backend.server_name),
        forward_client=r.choice("forward_client", Backend.forward_client, FORWARD_CLIENT),
        connect_timeout=_optional_timeout(r, "connect_timeout"),
        login_command=r.choice("login_command", Backend.login_command, LOGIN_COMMANDS),
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
