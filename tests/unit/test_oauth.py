"""Token checks against a real issuer on a loopback port (tests/harness/issuer.py):
signature, claims, scopes, key rotation and its cooldown, an issuer down,
discovery, and introspection of opaque tokens."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Iterator

import pytest
from harness.certs import Certs
from harness.issuer import (
    INTROSPECTION_CLIENT,
    Issuer,
    hs256_with_public_key,
    mint_key,
    unsigned_token,
)

from pop3proxy.oauth import Http, KeyCache, TokenChecker, TokenRejected, error_challenge
from pop3proxy.tenants import OAuth, RecordError, parse_tenant

USER = "alice@acme.example"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    running = Issuer().start()
    yield running
    running.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def settings(issuer: Issuer, **changes: object) -> OAuth:
    fields: dict[str, object] = {"issuer": issuer.url, "audience": "pop3", "scopes": ("pop3",)}
    fields.update(changes)
    return OAuth(**fields)  # type: ignore[arg-type]


def checker(clock: Clock, max_age: float = 300, cooldown: float = 30) -> TokenChecker:
    return TokenChecker(KeyCache(Http(timeout=2), max_age, cooldown, clock))


def rejection(check: TokenChecker, oauth: OAuth, token: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as refused:
        check.user(oauth, token.encode())
    assert token not in str(refused.value)
    return refused.value


def test_a_good_token_names_its_user(issuer: Issuer, clock: Clock) -> None:
    check = checker(clock)
    assert check.user(settings(issuer), issuer.token(USER).encode()) == USER
    # discovery once, keys once; the second login asks nothing
    assert check.user(settings(issuer), issuer.token(USER).encode()) == USER
    assert issuer.requests["/keys"] == 1
    assert issuer.requests["/realms/mail/.well-known/openid-configuration"] == 1


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "PS256", "EdDSA"])
def test_every_default_algorithm(issuer: Issuer, clock: Clock, algorithm: str) -> None:
    issuer.keys = [mint_key(algorithm)]
    assert checker(clock).user(settings(issuer), issuer.token(USER).encode()) == USER


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": -120}, "expired"),
        ({"nbf": 600}, "not_yet_valid"),
        ({"iat": 600}, "not_yet_valid"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "http://127.0.0.1:1/other"}, "issuer"),
        ({"scope": "openid email"}, "scope"),
        ({"exp": None}, "missing_claim"),
        ({"email": None}, "no_user_claim"),
    ],
)
def test_bad_claims_are_refused(issuer: Issuer, clock: Clock, claims: dict, reason: str) -> None:
    """The time claims are given as seconds from now, taken when the test
    runs: a time taken at collection goes stale in a long run."""
    now = int(time.time())
    claims = {
        key: now + value if key in ("exp", "nbf", "iat") and value is not None else value
        for key, value in claims.items()
    }
    token = issuer.token(USER, **claims)
    assert rejection(checker(clock), settings(issuer), token).reason == reason


def test_leeway_lets_a_just_expired_token_in(issuer: Issuer, clock: Clock) -> None:
    token = issuer.token(USER, exp=int(time.time()) - 30)
    assert checker(clock).user(settings(issuer), token.encode()) == USER
    assert rejection(checker(clock), settings(issuer, leeway=0), token).reason == "expired"


def test_scp_list_counts_as_scopes(issuer: Issuer, clock: Clock) -> None:
    token = issuer.token(USER, scope=None, scp=["pop3", "email"])
    assert checker(clock).user(settings(issuer), token.encode()) == USER


def test_alg_none_and_hs256_with_the_public_key_are_refused(issuer: Issuer, clock: Clock) -> None:
    claims = json.loads(base64.urlsafe_b64decode(issuer.token(USER).split(".")[1] + "=="))
    check = checker(clock)
    assert rejection(check, settings(issuer), unsigned_token(claims)).reason == "algorithm"
    forged = hs256_with_public_key(claims, issuer.keys[0])
    assert rejection(check, settings(issuer), forged).reason == "algorithm"


def test_a_token_signed_by_another_key_is_refused(issuer: Issuer, clock: Clock) -> None:
    stranger = mint_key(kid=issuer.keys[0].kid)
    token = issuer.token(USER, key=stranger)
    assert rejection(checker(clock), settings(issuer), token).reason == "signature"


def test_an_algorithm_the_tenant_does_not_allow(issuer: Issuer, clock: Clock) -> None:
    issuer.keys = [mint_key("ES256")]
    oauth = settings(issuer, algorithms=("RS256",))
    assert rejection(checker(clock), oauth, issuer.token(USER)).reason == "algorithm"


def test_rotation_fetches_once_per_cooldown(issuer: Issuer, clock: Clock) -> None:
    check = checker(clock, cooldown=30)
    oauth = settings(issuer)
    check.user(oauth, issuer.token(USER).encode())
    assert issuer.requests["/keys"] == 1
    new_key = mint_key()
    issuer.keys.append(new_key)
    clock.now += 31
    # a new kid: fetched again at once, and the token works without a restart
    assert check.user(oauth, issuer.token(USER, key=new_key).encode()) == USER
    assert issuer.requests["/keys"] == 2
    # kids nobody publishes: no more fetches within the cooldown
    stranger = mint_key()
    for number in range(5):
        unknown = dataclasses.replace(stranger, kid=f"forged-{number}")
        assert rejection(check, oauth, issuer.token(USER, key=unknown)).reason == "unknown_key"
    assert issuer.requests["/keys"] == 2
    clock.now += 29
    rejection(check, oauth, issuer.token(USER, key=stranger))
    assert issuer.requests["/keys"] == 2
    clock.now += 2  # the cooldown is over: one more fetch
    rejection(check, oauth, issuer.token(USER, key=stranger))
    assert issuer.requests["/keys"] == 3


def test_a_removed_key_stops_working_after_the_cache_window(issuer: Issuer, clock: Clock) -> None:
    check = checker(clock, max_age=300, cooldown=30)
    oauth = settings(issuer)
    old = issuer.keys[0]
    check.user(oauth, issuer.token(USER).encode())
    issuer.keys = [mint_key()]
    clock.now += 299
    assert check.user(oauth, issuer.token(USER, key=old).encode()) == USER
    clock.now += 2
    assert rejection(check, oauth, issuer.token(USER, key=old)).reason == "unknown_key"


def test_issuer_down_keeps_the_cached_keys_and_a_new_kid_is_temporary(
    issuer: Issuer, clock: Clock
) -> None:
    check = checker(clock, max_age=300, cooldown=30)
    oauth = settings(issuer)
    check.user(oauth, issuer.token(USER).encode())
    issuer.down = True
    clock.now += 400  # stale: fetched again, which fails
    assert check.user(oauth, issuer.token(USER).encode()) == USER
    refused = rejection(check, oauth, issuer.token(USER, key=mint_key()))
    assert (refused.reason, refused.temporary) == ("issuer_unreachable", True)


def test_issuer_down_from_the_start_is_temporary(issuer: Issuer, clock: Clock) -> None:
    issuer.down = True
    refused = rejection(checker(clock), settings(issuer), issuer.token(USER))
    assert refused.temporary


def test_rfc_8414_metadata_when_there_is_no_openid_discovery(issuer: Issuer, clock: Clock) -> None:
    issuer.discovery = "rfc8414"
    assert checker(clock).user(settings(issuer), issuer.token(USER).encode()) == USER
    assert issuer.requests["/.well-known/oauth-authorization-server/realms/mail"] == 1


def test_a_configured_jwks_uri_skips_discovery(issuer: Issuer, clock: Clock) -> None:
    oauth = settings(issuer, jwks_uri=issuer.jwks_uri)
    assert checker(clock).user(oauth, issuer.token(USER).encode()) == USER
    assert issuer.requests["/realms/mail/.well-known/openid-configuration"] == 0


def test_opaque_tokens_are_introspected_and_cached_until_exp(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_INTROSPECTION_SECRET", INTROSPECTION_CLIENT[1])
    oauth = settings(
        issuer,
        introspection_url=issuer.introspection_url,
        client_id=INTROSPECTION_CLIENT[0],
        client_secret_env="TEST_INTROSPECTION_SECRET",
    )
    wall = Clock()
    wall.now = time.time()
    check = TokenChecker(KeyCache(Http(timeout=2), 300, 30), wall)
    issuer.opaque["opaque-1"] = {
        "active": True,
        "iss": issuer.url,
        "aud": ["pop3"],
        "scope": "pop3",
        "email": USER,
        "exp": int(wall.now) + 20,
    }
    assert check.user(oauth, b"opaque-1") == USER
    assert check.user(oauth, b"opaque-1") == USER
    assert issuer.requests["/introspect"] == 1
    wall.now += 21  # past its exp: asked again, and the issuer says it is over
    issuer.opaque["opaque-1"] = {"active": False}
    assert rejection(check, oauth, "opaque-1").reason == "inactive"
    assert issuer.requests["/introspect"] == 2
    assert rejection(check, oauth, "unknown-opaque").reason == "inactive"
    issuer.opaque["wrong-aud"] = {**issuer.opaque.get("x", {}), "active": True, "aud": "x"}
    assert rejection(check, oauth, "wrong-aud").reason == "audience"


def test_https_issuer_is_verified_with_the_configured_ca(certs: Certs, clock: Clock) -> None:
    issuer = Issuer(tls=certs.ssl_server_context()).start()
    try:
        oauth = settings(issuer, ca_file=str(certs.ca_file))
        assert checker(clock).user(oauth, issuer.token(USER).encode()) == USER
        # the system's CAs do not know the test CA: no keys, a temporary failure
        refused = rejection(checker(clock), settings(issuer), issuer.token(USER))
        assert (refused.reason, refused.temporary) == ("issuer_unreachable", True)
    finally:
        issuer.stop()


def test_redirects_are_not_followed(issuer: Issuer, clock: Clock) -> None:
    """A redirect could lead the proxy to keys of someone else's choosing."""
    elsewhere = Issuer(keys=issuer.keys).start()
    try:
        issuer.redirects["/keys"] = elsewhere.jwks_uri
        refused = rejection(checker(clock), settings(issuer), issuer.token(USER))
        assert refused.temporary
        assert issuer.requests["/keys"] == 1
        assert elsewhere.requests["/keys"] == 0
    finally:
        elsewhere.stop()


def test_an_opaque_token_without_introspection_is_refused(issuer: Issuer, clock: Clock) -> None:
    assert rejection(checker(clock), settings(issuer), "opaque-token").reason == "not_a_jwt"


def test_the_error_challenge() -> None:
    oauth = OAuth("https://id.acme.example/realms/mail", "pop3", scopes=("pop3", "email"))
    decoded = json.loads(base64.b64decode(error_challenge(oauth)))
    assert decoded == {
        "status": "invalid_token",
        "scope": "pop3 email",
        "openid-configuration": "https://id.acme.example/realms/mail/.well-known/openid-configuration",
    }
    assert json.loads(base64.b64decode(error_challenge(None))) == {"status": "invalid_token"}


# -- the tenant record's oauth field ---------------------------------------------

RECORD = {
    "name": "acme.example",
    "backends": [{"host": "127.0.0.1", "port": 110}],
    "master_user": "proxy",
    "master_password_env": "MASTER",
}


def test_the_oauth_field_round_trips() -> None:
    record = {
        **RECORD,
        "oauth": {"issuer": "https://id.acme.example", "audience": "pop3", "scopes": ["pop3"]},
    }
    tenant = parse_tenant(record)
    assert tenant.oauth == OAuth("https://id.acme.example", "pop3", scopes=("pop3",))
    assert parse_tenant(tenant.to_dict()) == tenant
    assert "oauth" not in parse_tenant(RECORD).to_dict()


@pytest.mark.parametrize(
    ("oauth", "problem"),
    [
        ({"audience": "pop3"}, "oauth.issuer: is required"),
        ({"issuer": "http://id.acme.example", "audience": "a"}, "oauth.issuer: expected an https"),
        ({"issuer": "https://x", "audience": "a", "algorithms": ["HS256"]}, "never none or HS*"),
        ({"issuer": "https://x", "audience": "a", "algorithms": ["none"]}, "oauth.algorithms"),
        ({"issuer": "https://x"}, "oauth.audience: is required"),
        ({"issuer": "https://x", "audience": "a", "leeway": "1h"}, "oauth.leeway"),
        (
            {"issuer": "https://x", "audience": "a", "introspection_url": "https://x/i"},
            "oauth.introspection_url: needs client_id",
        ),
        ({"issuer": "https://x", "audience": "a", "scopes": "pop3"}, "oauth.scopes"),
        ({"issuer": "https://x", "audience": "a", "typo": 1}, "oauth.typo: unknown key"),
        (
            {"issuer": "https://x", "audience": "a", "jwks_uri": "file:///etc/keys"},
            "oauth.jwks_uri",
        ),
    ],
)
def test_tenant_set_refuses_a_bad_oauth_field(oauth: dict, problem: str) -> None:
    with pytest.raises(RecordError, match=problem.replace("*", r"\*")):
        parse_tenant({**RECORD, "oauth": oauth})


def test_oauth_needs_master_credentials_or_token_backends() -> None:
    oauth = {"issuer": "https://x", "audience": "a"}
    with pytest.raises(RecordError, match="oauth: a token login needs master credentials"):
        parse_tenant({"name": "acme.example", "backends": [{"host": "h"}], "oauth": oauth})
    token_backend = [{"host": "h", "login_command": "xoauth2"}]
    assert parse_tenant({"name": "a.example", "backends": token_backend, "oauth": oauth}).oauth


def test_http_to_a_loopback_issuer_is_allowed() -> None:
    oauth = {"issuer": "http://127.0.0.1:8080/realm", "audience": "a"}
    assert parse_tenant({**RECORD, "oauth": oauth}).oauth
