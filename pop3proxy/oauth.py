"""OAuth bearer tokens: checked against each tenant's own issuer.

A token login (OAUTHBEARER or XOAUTH2) names a user; the user's tenant names
its issuer (:class:`pop3proxy.tenants.OAuth`). :class:`TokenChecker` decides
whether the token proves that user:

* a JWT is verified with PyJWT against a key of the issuer's JWKS, found by
  ``kid``: signature, ``iss``, ``aud``, ``exp``/``nbf``/``iat`` (with the
  tenant's leeway), the required scopes, and the name claim;
* an opaque token is asked about at the tenant's introspection endpoint
  (RFC 7662), and a positive answer is remembered no longer than the token
  lives.

Keys are cached per JWKS URL (:class:`KeyCache`): fetched again when older
than ``auth.oauth_keys_max_age`` (so a key the issuer removed stops working),
and on an unknown ``kid`` at most once per ``auth.oauth_keys_refetch_cooldown``
(so the issuer's key rotation works at once, and forged ``kid`` values cannot
make the proxy hammer the issuer). A failed fetch keeps the cached keys.

HTTP to the issuer: HTTPS verified (the system's CAs, or the tenant's
``ca_file``), a short timeout, no redirects, a bounded body. ``urllib`` on
gevent's patched sockets, so a fetch waits only the login that needs it.

A token never reaches a log line, metric, reply or exception message here:
refusals carry a fixed reason word (``expired``, ``audience``, ...).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from pop3proxy.tenants import MasterPasswordMissing, OAuth, issuer_url_allowed

log = logging.getLogger("pop3proxy.oauth")

MAX_DOCUMENT = 1024 * 1024
"""The largest discovery, JWKS or introspection answer read (a JWKS is a few KB)."""

INTROSPECTION_CACHE_SECONDS = 60.0
"""A positive introspection answer is reused at most this long (and never past
the token's ``exp``): a revoked token stops working within this time."""

MAX_INTROSPECTION_CACHE = 10_000
"""Entries kept; past it, expired ones go, then the oldest."""


class TokenRejected(Exception):
    """The token does not prove the user. ``reason`` is a fixed word for logs
    (never the token or its claims); ``temporary`` when the issuer could not
    be asked (the client should retry, not ask its user for a new login)."""

    def __init__(self, reason: str, *, temporary: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.temporary = temporary


class IssuerUnreachable(Exception):
    """An HTTP request to the issuer failed; the message says how, without secrets."""


def discovery_url(oauth: OAuth) -> str:
    """OpenID Connect Discovery 1.0 section 4: what a client reads to find
    the issuer's endpoints (sent in the RFC 7628 error as ``openid-configuration``)."""
    return oauth.issuer.rstrip("/") + "/.well-known/openid-configuration"


def metadata_url(oauth: OAuth) -> str:
    """RFC 8414 section 3: the well-known part goes between host and path."""
    parts = urllib.parse.urlsplit(oauth.issuer)
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{path}"


def error_challenge(oauth: OAuth | None) -> bytes:
    """RFC 7628 section 3.2.2: the base64 JSON error sent after ``+ `` for a
    refused token, with the scopes a token needs and where to read about the
    issuer when the tenant is known (an unknown tenant tells nothing more)."""
    error: dict[str, str] = {"status": "invalid_token"}
    if oauth is not None:
        error["scope"] = " ".join(oauth.scopes)
        error["openid-configuration"] = discovery_url(oauth)
    return base64.b64encode(json.dumps(error, separators=(",", ":")).encode())


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """An issuer's endpoints answer where they are: a redirect could lead the
    proxy to keys of someone else's choosing."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass
class Http:
    """Small JSON requests to issuers."""

    timeout: float = 5.0
    _contexts: dict[str | None, ssl.SSLContext] = field(default_factory=dict)

    def get_json(self, url: str, ca_file: str | None) -> dict[str, Any]:
        request = urllib.request.Request(url, headers=_ACCEPT_JSON)  # noqa: S310 (checked in _request)
        return self._request(request, ca_file)

    def post_form(
        self, url: str, form: dict[str, str], credentials: tuple[str, bytes], ca_file: str | None
    ) -> dict[str, Any]:
        """RFC 7662 section 2.1: a form POST with the client's HTTP Basic credentials
        (each part form-encoded first, RFC 6749 section 2.3.1)."""
        client_id, secret = credentials
        basic = (
            urllib.parse.quote(client_id, safe="")
            + ":"
            + urllib.parse.quote(secret.decode("utf-8", "replace"), safe="")
        )
        headers = {
            **_ACCEPT_JSON,
            "Authorization": "Basic " + base64.b64encode(basic.encode()).decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        body = urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(url, body, headers, method="POST")  # noqa: S310 (as above)
        return self._request(request, ca_file)

    def _request(self, request: urllib.request.Request, ca_file: str | None) -> dict[str, Any]:
        where = urllib.parse.urlsplit(request.full_url)._replace(query="").geturl()
        if not issuer_url_allowed(request.full_url):
            raise IssuerUnreachable(f"{where}: not https (nor http to a loopback host)")
        context = self._contexts.get(ca_file)
        if context is None:
            context = self._contexts[ca_file] = _tls_context(ca_file)
        # Only HTTP(S), and no redirects: not build_opener's file:, ftp: and data: handlers.
        opener = urllib.request.OpenerDirector()
        for handler in (
            urllib.request.HTTPHandler(),
            urllib.request.HTTPSHandler(context=context),
            _NoRedirects(),
            urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPErrorProcessor(),
        ):
            opener.add_handler(handler)
        try:
            with opener.open(request, timeout=self.timeout) as response:
                body = response.read(MAX_DOCUMENT + 1)
        except urllib.error.HTTPError as error:
            raise IssuerUnreachable(f"{where}: HTTP {error.code}") from None
        except (OSError, ValueError) as error:
            raise IssuerUnreachable(f"{where}: {type(error).__name__}") from None
        if len(body) > MAX_DOCUMENT:
            raise IssuerUnreachable(f"{where}: answer over {MAX_DOCUMENT} bytes")
        try:
            document = json.loads(body)
        except ValueError:
            raise IssuerUnreachable(f"{where}: not JSON") from None
        if not isinstance(document, dict):
            raise IssuerUnreachable(f"{where}: not a JSON object")
        return document


_ACCEPT_JSON = {"Accept": "application/json", "User-Agent": "pop3proxy"}


@dataclass(frozen=True)
class SigningKey:
    key: jwt.PyJWK
    algorithm: str | None
    """The JWK's own ``alg``, when it names one: then only that algorithm may use it."""


@dataclass
class _Keys:
    """One JWKS URL's keys and when they were fetched."""

    by_kid: dict[str | None, list[SigningKey]] = field(default_factory=dict)
    """By ``kid``; under ``None`` every key (a token without a ``kid`` tries each)."""
    fetched: float | None = None
    """When the keys were last fetched successfully (monotonic)."""
    attempted: float | None = None
    """When a fetch was last started, successful or not."""
    failed: bool = False
    """The last fetch failed."""


class KeyCache:
    """Each issuer's signing keys, fetched when stale or when a ``kid`` is new."""

    def __init__(
        self,
        http: Http,
        max_age: float,
        refetch_cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.max_age = max_age
        self.refetch_cooldown = refetch_cooldown
        self.clock = clock
        self._keys: dict[str, _Keys] = {}
        self._jwks_uris: dict[str, tuple[str, float]] = {}

    def keys_for(self, oauth: OAuth, kid: str | None) -> list[SigningKey]:
        """The keys that may have signed a token with ``kid``; raises
        :class:`TokenRejected` (temporary when the issuer could not be asked)."""
        uri = self._jwks_uri(oauth)
        entry = self._keys.setdefault(uri, _Keys())
        now = self.clock()
        stale = entry.fetched is None or now - entry.fetched >= self.max_age
        unknown = kid not in entry.by_kid
        may_retry = entry.attempted is None or now - entry.attempted >= self.refetch_cooldown
        if (stale or unknown) and may_retry:
            self._fetch(uri, entry, oauth.ca_file)
        found = entry.by_kid.get(kid)
        if found:
            return found
        if entry.fetched is None or (entry.failed and unknown):
            raise TokenRejected("issuer_unreachable", temporary=True)
        raise TokenRejected("unknown_key")

    def _fetch(self, uri: str, entry: _Keys, ca_file: str | None) -> None:
        entry.attempted = self.clock()
        try:
            document = self.http.get_json(uri, ca_file)
            listed = document.get("keys")
            if not isinstance(listed, list):
                raise IssuerUnreachable(f"{uri}: no keys")
        except IssuerUnreachable as error:
            entry.failed = True
            log.warning(
                "issuer keys not fetched, keeping the cached ones",
                extra={"jwks_uri": uri, "error": str(error), "cached": len(entry.by_kid)},
            )
            return
        by_kid: dict[str | None, list[SigningKey]] = {}
        for data in listed:
            key = _signing_key(data)
            if key is not None:
                by_kid.setdefault(key.key.key_id, []).append(key)
                if key.key.key_id is not None:
                    by_kid.setdefault(None, []).append(key)
        entry.by_kid = by_kid
        entry.fetched = entry.attempted
        entry.failed = False
        log.info("issuer keys fetched", extra={"jwks_uri": uri, "keys": len(by_kid.get(None, []))})

    def _jwks_uri(self, oauth: OAuth) -> str:
        """The tenant's ``jwks_uri``, or the discovery document's (cached as long as keys)."""
        if oauth.jwks_uri:
            return oauth.jwks_uri
        now = self.clock()
        known = self._jwks_uris.get(oauth.issuer)
        if known is not None and now - known[1] < self.max_age:
            return known[0]
        errors = []
        for url in (discovery_url(oauth), metadata_url(oauth)):
            try:
                document = self.http.get_json(url, oauth.ca_file)
            except IssuerUnreachable as error:
                errors.append(str(error))
                continue
            uri = document.get("jwks_uri")
            if document.get("issuer") != oauth.issuer or not isinstance(uri, str):
                errors.append(f"{url}: issuer or jwks_uri missing or wrong")
                continue
            if not issuer_url_allowed(uri):
                errors.append(f"{url}: jwks_uri is not https")
                continue
            self._jwks_uris[oauth.issuer] = (uri, now)
            return uri
        if known is not None:
            return known[0]  # the issuer is down: keep what it said before
        log.warning("issuer metadata not fetched", extra={"issuer": oauth.issuer, "error": errors})
        raise TokenRejected("issuer_unreachable", temporary=True)


def _signing_key(data: object) -> SigningKey | None:
    """One JWK fit to verify signatures; ``None`` for anything else (an
    encryption key, a symmetric key, a type PyJWT does not know)."""
    if not isinstance(data, dict) or data.get("use", "sig") != "sig":
        return None
    if data.get("kty") == "oct":
        return None  # a shared secret has no place in a public key set
    algorithm = data.get("alg")
    try:
        return SigningKey(jwt.PyJWK(data), algorithm if isinstance(algorithm, str) else None)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
        return None


@dataclass(slots=True)
class _Introspected:
    claims: dict[str, Any]
    until: float
    """Wall-clock time after which the answer is asked for again."""


class TokenChecker:
    """Whether a token proves a user of a tenant (JWT or, with introspection, opaque)."""

    def __init__(
        self,
        keys: KeyCache,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.wall_clock = wall_clock
        self._introspected: dict[bytes, _Introspected] = {}
        self._digest_key = os.urandom(32)

    @classmethod
    def from_settings(cls, max_age: float, cooldown: float, timeout: float) -> TokenChecker:
        return cls(KeyCache(Http(timeout), max_age, cooldown))

    def user(self, oauth: OAuth, token: bytes) -> str:
        """The user the token was issued to (its ``username_claim``), once every
        check passed; raises :class:`TokenRejected`."""
        claims = self._claims(oauth, token)
        _check_scopes(oauth, claims)
        user = claims.get(oauth.username_claim)
        if not isinstance(user, str) or not user:
            raise TokenRejected("no_user_claim")
        return user

    def _claims(self, oauth: OAuth, token: bytes) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            if oauth.introspection_url:
                return self._introspect(oauth, token)
            raise TokenRejected("not_a_jwt") from None
        algorithm = header.get("alg")
        if algorithm not in oauth.algorithms:
            raise TokenRejected("algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed")
        failure = "signature"
        for signing in self.keys.keys_for(oauth, kid):
            if signing.algorithm not in (algorithm, None):
                continue
            try:
                return jwt.decode(
                    token,
                    key=signing.key.key,
                    algorithms=[algorithm],
                    audience=oauth.audience,
                    issuer=oauth.issuer,
                    leeway=oauth.leeway,
                    options={"require": ["exp", "iss", "aud"]},
                )
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError):
                continue  # another key of the same kid (or of none) may fit
            except jwt.ExpiredSignatureError:
                failure = "expired"
            except jwt.ImmatureSignatureError:
                failure = "not_yet_valid"
            except jwt.InvalidAudienceError:
                failure = "audience"
            except jwt.InvalidIssuerError:
                failure = "issuer"
            except jwt.MissingRequiredClaimError:
                failure = "missing_claim"
            except (jwt.InvalidTokenError, ValueError, TypeError):
                failure = "malformed"
            break
        raise TokenRejected(failure)

    def _introspect(self, oauth: OAuth, token: bytes) -> dict[str, Any]:
        """RFC 7662; a positive answer is reused until the token's ``exp``
        (at most :data:`INTROSPECTION_CACHE_SECONDS`)."""
        assert oauth.introspection_url and oauth.client_id
        now = self.wall_clock()
        digest = hmac.new(self._digest_key, token, hashlib.sha256).digest()
        cached = self._introspected.get(digest)
        if cached is not None and cached.until > now:
            return cached.claims
        try:
            secret = oauth.client_secret()
        except MasterPasswordMissing as error:
            log.error("introspection client secret unavailable", extra={"error": str(error)})
            raise TokenRejected("introspection_secret", temporary=True) from None
        try:
            answer = self.keys.http.post_form(
                oauth.introspection_url,
                # The hint is RFC 7662's name of a token type, not a secret.
                {"token": token.decode("ascii"), "token_type_hint": "access_token"},  # nosec B105
                (oauth.client_id, secret),
                oauth.ca_file,
            )
        except IssuerUnreachable as error:
            log.warning("token introspection failed", extra={"error": str(error)})
            raise TokenRejected("issuer_unreachable", temporary=True) from None
        if answer.get("active") is not True:
            raise TokenRejected("inactive")
        _check_introspected(oauth, answer, now)
        expires = answer.get("exp")
        until = now + INTROSPECTION_CACHE_SECONDS
        if isinstance(expires, int | float):
            until = min(until, float(expires))
        self._remember(digest, _Introspected(answer, until), now)
        return answer

    def _remember(self, digest: bytes, answer: _Introspected, now: float) -> None:
        cache = self._introspected
        if len(cache) >= MAX_INTROSPECTION_CACHE:
            for key in [key for key, value in cache.items() if value.until <= now]:
                del cache[key]
            while len(cache) >= MAX_INTROSPECTION_CACHE:
                del cache[next(iter(cache))]
        cache[digest] = answer


def _check_introspected(oauth: OAuth, answer: dict[str, Any], now: float) -> None:
    """What the issuer said of an opaque token, held to the tenant's rules:
    ``iss``, ``aud``, ``exp`` and ``nbf`` when given."""
    if "iss" in answer and answer["iss"] != oauth.issuer:
        raise TokenRejected("issuer")
    audience = answer.get("aud")
    if audience is not None:
        audiences = audience if isinstance(audience, list) else [audience]
        if oauth.audience not in audiences:
            raise TokenRejected("audience")
    expires = answer.get("exp")
    if isinstance(expires, int | float) and expires + oauth.leeway < now:
        raise TokenRejected("expired")
    not_before = answer.get("nbf")
    if isinstance(not_before, int | float) and not_before - oauth.leeway > now:
        raise TokenRejected("not_yet_valid")


def _check_scopes(oauth: OAuth, claims: dict[str, Any]) -> None:
    """``scope`` (RFC 8693 section 4.2: space-separated) or ``scp`` (a list,
    as Entra and Okta send it) must hold every scope the tenant requires."""
    if not oauth.scopes:
        return
    granted: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            granted.update(value.split())
        elif isinstance(value, list):
            granted.update(item for item in value if isinstance(item, str))
    if not set(oauth.scopes) <= granted:
        raise TokenRejected("scope")
