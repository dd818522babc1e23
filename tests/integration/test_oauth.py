"""OAuth logins end to end: real issuers on loopback ports (keys minted here,
discovery, JWKS and introspection served over HTTP), the proxy, a real
Dovecot behind it logged in to with the master user, and real clients
(curl, mpop, poplib, and the raw wire for the byte-for-byte exchanges)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import poplib
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.certs import Certs
from harness.dovecot import Dovecot
from harness.issuer import (
    INTROSPECTION_CLIENT,
    Issuer,
    hs256_with_public_key,
    mint_key,
    unsigned_token,
)
from harness.ports import wait_until
from harness.proxy import ProxyProcess, run_cli
from harness.redis import RedisServer
from harness.users import MASTER_USERS, USERS
from harness.wire import Pop3Wire

ACME = "acme.example"
"""Trusts issuer A."""
OTHER = "other.example"
"""Trusts issuer B."""
SHARED = "shared.example"
"""Trusts issuer A too: a token of an acme user must still not open its mailboxes."""
OPAQUE = "opaque.example"
"""Issuer A with introspection, for opaque tokens."""
ALICE = f"alice@{ACME}"
MASTER_ENV = "POP3PROXY_TEST_OAUTH_MASTER"
SECRET_ENV = "POP3PROXY_TEST_OAUTH_CLIENT_SECRET"
COOLDOWN = 1.0
MAX_AGE = 3.0
TOKEN_MECHANISMS = ["PLAIN", "OAUTHBEARER", "XOAUTH2"]


@dataclasses.dataclass
class Setup:
    proxy: ProxyProcess
    a: Issuer
    b: Issuer
    certs: Certs
    tokens: list[str]
    """Every token the tests sent: none may show in the proxy's log."""
    messages: int = 0
    """How many messages alice's mailbox holds."""

    def token(self, user: str = ALICE, *, issuer: Issuer | None = None, **kwargs: Any) -> str:
        token = (issuer or self.a).token(user, **kwargs)
        self.tokens.append(token)
        return token


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
    certs: Certs,
    redis_server: RedisServer,
    dovecot: Dovecot,
) -> Iterator[Setup]:
    a, b = Issuer().start(), Issuer().start()
    saved = {name: os.environ.get(name) for name in (MASTER_ENV, SECRET_ENV)}
    os.environ[MASTER_ENV] = MASTER_USERS["proxymaster"]
    os.environ[SECRET_ENV] = INTROSPECTION_CLIENT[1]
    workdir = tmp_path_factory.mktemp("oauth")
    proxy = ProxyProcess(
        workdir,
        certs,
        {
            "directory": {"store": "redis", "redis_url": redis_server.url, "key_prefix": "oauth"},
            "auth": {
                "mechanisms": TOKEN_MECHANISMS,
                "oauth_keys_refetch_cooldown": f"{COOLDOWN}s",
                "oauth_keys_max_age": f"{MAX_AGE}s",
            },
        },
    )
    store_tenants(proxy, tenant_records(a, b, dovecot), workdir)
    with proxy:
        yield Setup(proxy, a, b, certs, [])
    a.stop()
    b.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def tenant_records(a: Issuer, b: Issuer, dovecot: Dovecot) -> list[dict[str, Any]]:
    """The four tenants, all on ``dovecot`` with its master user."""
    backend = [{"host": dovecot.host, "port": dovecot.port}]
    master = {"master_user": "proxymaster", "master_password_env": MASTER_ENV}
    oauth_a = {"issuer": a.url, "audience": "pop3", "scopes": ["pop3"]}
    records = [
        {"name": ACME, "backends": backend, **master, "oauth": oauth_a},
        {"name": SHARED, "backends": backend, **master, "oauth": oauth_a},
        {
            "name": OTHER,
            "backends": backend,
            **master,
            "oauth": {"issuer": b.url, "audience": "pop3", "jwks_uri": b.jwks_uri},
        },
        {
            "name": OPAQUE,
            "backends": backend,
            **master,
            "oauth": {
                **oauth_a,
                "introspection_url": a.introspection_url,
                "client_id": INTROSPECTION_CLIENT[0],
                "client_secret_env": SECRET_ENV,
            },
        },
    ]
    return records


def store_tenants(proxy: ProxyProcess, records: list[dict[str, Any]], workdir: Path) -> None:
    """Through ``tenant set --from-file``, which validates the oauth field."""
    for number, record in enumerate(records):
        path = workdir / f"tenant{number}.json"
        path.write_text(json.dumps(record))
        result = run_cli(proxy.config_path, "tenant", "set", "--from-file", str(path))
        assert result.returncode == 0, result.stderr


@pytest.fixture
def oauth(setup: Setup, fresh_mailbox: Callable[[str], list[bytes]]) -> Iterator[Setup]:
    """The module's proxy, with issuer A as it was (keys, up) after each test."""
    setup.messages = len(fresh_mailbox("alice"))
    keys = list(setup.a.keys)
    yield setup
    setup.a.keys = keys
    setup.a.down = False


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def oauthbearer(user: str, token: str) -> str:
    return b64(f"n,a={user},\x01host=127.0.0.1\x01port=995\x01auth=Bearer {token}\x01\x01".encode())


def xoauth2(user: str, token: str) -> str:
    return b64(f"user={user}\x01auth=Bearer {token}\x01\x01".encode())


RESPONSES = {"OAUTHBEARER": oauthbearer, "XOAUTH2": xoauth2}


def wire(setup: Setup) -> Pop3Wire:
    connection = Pop3Wire(
        setup.proxy.host, setup.proxy.ports["pop3s"], context=setup.certs.ssl_client_context()
    )
    assert connection.greeting.startswith(b"+OK")
    return connection


def token_login(
    setup: Setup, token: str, user: str = ALICE, mechanism: str = "OAUTHBEARER"
) -> list[bytes]:
    """AUTH with an initial response; the lines the proxy answered (after a
    challenge, the client's AQ== and the final reply)."""
    with wire(setup) as connection:
        reply = connection.command(f"AUTH {mechanism} {RESPONSES[mechanism](user, token)}")
        lines = [reply]
        if reply.startswith(b"+ "):
            lines.append(connection.command("AQ=="))
        if lines[-1].startswith(b"+OK"):
            assert connection.command("STAT").startswith(b"+OK")
            connection.command("QUIT")
        return lines


def refused_with_challenge(lines: list[bytes]) -> dict[str, str]:
    """RFC 7628 section 3.2.2: ``+ <base64 JSON>``, then after AQ== the -ERR."""
    assert len(lines) == 2, lines
    assert lines[0].startswith(b"+ ") and lines[0].endswith(b"\r\n"), lines
    assert lines[1] == b"-ERR [AUTH] Authentication failed\r\n", lines
    return json.loads(base64.b64decode(lines[0][2:-2]))


# -- logging in ------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_a_good_token_logs_in_with_the_master_user(
    oauth: Setup, dovecot: Dovecot, mechanism: str
) -> None:
    mark = dovecot.log_mark()
    assert token_login(oauth, oauth.token(), mechanism=mechanism) == [b"+OK Logged in.\r\n"]
    dovecot.wait_for_log(r"auth: Info: Master user logging in as alice", since=mark)


@pytest.mark.parametrize("mechanism", ["OAUTHBEARER", "XOAUTH2"])
def test_the_two_line_form(oauth: Setup, mechanism: str) -> None:
    with wire(oauth) as connection:
        assert connection.command(f"AUTH {mechanism}") == b"+ \r\n"
        reply = connection.command(RESPONSES[mechanism](ALICE, oauth.token()))
        assert reply == b"+OK Logged in.\r\n"
        assert connection.command("STAT").startswith(f"+OK {oauth.messages} ".encode())


def test_poplib_two_line_xoauth2(oauth: Setup) -> None:
    """As Microsoft's clients do it: AUTH XOAUTH2, then the response on its own line."""
    client = poplib.POP3_SSL(
        oauth.proxy.host, oauth.proxy.ports["pop3s"], context=oauth.certs.ssl_client_context()
    )
    try:
        assert client.capa()["SASL"] == TOKEN_MECHANISMS
        assert client._shortcmd("AUTH XOAUTH2") == b"+ "
        assert client._shortcmd(xoauth2(ALICE, oauth.token())).startswith(b"+OK")
        assert client.stat()[0] == oauth.messages
    finally:
        client.quit()


def curl(
    setup: Setup, token: str, proxy: ProxyProcess | None = None
) -> subprocess.CompletedProcess[str]:
    proxy = proxy or setup.proxy
    url = f"pop3s://{proxy.host}:{proxy.ports['pop3s']}/"
    argv = ["curl", "-sS", "-v", "--cacert", str(setup.certs.ca_file), "--max-time", "20"]
    argv += ["--user", f"{ALICE}:", "--oauth2-bearer", token, url]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_curl_oauth2_bearer_over_pop3s(oauth: Setup) -> None:
    """curl picks OAUTHBEARER when offered (curl 7.88 ignores ``AUTH=XOAUTH2``
    for a bearer token: only a server without OAUTHBEARER gets XOAUTH2)."""
    result = curl(oauth, oauth.token())
    assert result.returncode == 0, result.stderr
    assert re.findall(r"^> AUTH (\S+)", result.stderr, re.M) == ["OAUTHBEARER"]
    assert len(result.stdout.splitlines()) == oauth.messages  # the LIST of alice's mailbox


def test_auth_mechanisms_decide_what_is_offered_and_curl_uses_xoauth2(
    oauth: Setup, make_proxy: Callable[..., ProxyProcess], dovecot: Dovecot, tmp_path: Path
) -> None:
    proxy = make_proxy({"auth": {"mechanisms": ["PLAIN", "XOAUTH2"]}}, tenants=False)
    store_tenants(proxy, tenant_records(oauth.a, oauth.b, dovecot)[:1], tmp_path)
    result = curl(oauth, oauth.token(), proxy)
    assert result.returncode == 0, result.stderr
    assert "< SASL PLAIN XOAUTH2\n" in result.stderr
    assert re.findall(r"^> AUTH (\S+)", result.stderr, re.M) == ["XOAUTH2"]
    assert len(result.stdout.splitlines()) == oauth.messages
    here = dataclasses.replace(oauth, proxy=proxy)
    with wire(here) as connection:
        reply = connection.command(f"AUTH OAUTHBEARER {oauthbearer(ALICE, oauth.token())}")
        assert reply == b"-ERR Unsupported mechanism; use PLAIN or XOAUTH2\r\n"


def test_curl_refused_token(oauth: Setup) -> None:
    result = curl(oauth, oauth.token(aud="someone-else"))
    assert result.returncode == 67, result.stderr  # CURLE_LOGIN_DENIED
    assert "< -ERR [AUTH] Authentication failed" in result.stderr


def test_mpop_oauthbearer(oauth: Setup, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(oauth.token())
    delivered = tmp_path / "mail.mbox"
    config = tmp_path / "mpoprc"
    config.write_text(
        "\n".join(
            [
                "account default",
                f"host {oauth.proxy.host}",
                f"port {oauth.proxy.ports['pop3s']}",
                "tls on",
                "tls_starttls off",
                f"tls_trust_file {oauth.certs.ca_file}",
                f"user {ALICE}",
                "auth oauthbearer",
                f"passwordeval cat {token_file}",
                f"delivery mbox {delivered}",
                f"uidls_file {tmp_path / 'uidls'}",
                "keep on",
                "",
            ]
        )
    )
    config.chmod(0o600)
    result = subprocess.run(
        ["mpop", "-C", str(config), "-q"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"^From ", delivered.read_text(), re.M)) == oauth.messages


def test_opaque_token_through_introspection(oauth: Setup) -> None:
    opaque = "opaque-" + os.urandom(8).hex()
    oauth.tokens.append(opaque)
    oauth.a.opaque[opaque] = {
        "active": True,
        "iss": oauth.a.url,
        "aud": "pop3",
        "scope": "pop3",
        "email": f"alice@{OPAQUE}",
        "exp": int(time.time()) + 300,
    }
    before = oauth.a.requests["/introspect"]
    for _ in range(2):
        assert token_login(oauth, opaque, f"alice@{OPAQUE}") == [b"+OK Logged in.\r\n"]
    assert oauth.a.requests["/introspect"] == before + 1  # the second from the cache
    refused_with_challenge(token_login(oauth, "opaque-unknown", f"alice@{OPAQUE}"))


def test_a_16_kib_auth_line_is_taken_and_a_1_mib_line_is_refused(oauth: Setup) -> None:
    padding = "x" * 8_500
    token = oauth.token(padding=padding)
    line = f"AUTH XOAUTH2 {xoauth2(ALICE, token)}\r\n"
    assert 15_000 < len(line) <= 16 * 1024
    with wire(oauth) as connection:
        connection.send(line.encode())
        assert connection.read_line() == b"+OK Logged in.\r\n"
    with wire(oauth) as connection:
        connection.send(b"AUTH XOAUTH2 " + b"A" * (1024 * 1024) + b"\r\n")
        assert connection.read_line() == b"-ERR Line too long\r\n"
        assert connection.command("NOOP") == b"+OK\r\n"
        assert connection.command("NOOP " + "x" * 3000) == b"-ERR Line too long\r\n"


# -- refusals ----------------------------------------------------------------------


def test_the_rfc_7628_error_exchange_byte_for_byte(oauth: Setup) -> None:
    with wire(oauth) as connection:
        bad = oauth.token(aud="someone-else")
        challenge = connection.command(f"AUTH OAUTHBEARER {oauthbearer(ALICE, bad)}")
        expected = {
            "status": "invalid_token",
            "scope": "pop3",
            "openid-configuration": f"{oauth.a.url}/.well-known/openid-configuration",
        }
        body = json.dumps(expected, separators=(",", ":")).encode()
        assert challenge == b"+ " + base64.b64encode(body) + b"\r\n"
        assert connection.command("AQ==") == b"-ERR [AUTH] Authentication failed\r\n"
        assert connection.command("NOOP") == b"+OK\r\n"  # the session goes on


def claims_of(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


@pytest.mark.parametrize(
    "bad",
    [
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "missing_scope",
        "alg_none",
        "hs256_with_public_key",
        "unknown_signer",
        "authzid_not_the_claim",
    ],
)
def test_bad_tokens_are_refused(oauth: Setup, bad: str) -> None:
    now = int(time.time())
    token = {
        "expired": lambda: oauth.token(exp=now - 600),
        "not_yet_valid": lambda: oauth.token(nbf=now + 600),
        "wrong_audience": lambda: oauth.token(aud="someone-else"),
        "wrong_issuer": lambda: oauth.token(iss=oauth.b.url),
        "missing_scope": lambda: oauth.token(scope="openid email"),
        "alg_none": lambda: unsigned_token(claims_of(oauth.token())),
        "hs256_with_public_key": lambda: hs256_with_public_key(
            claims_of(oauth.token()), oauth.a.keys[0]
        ),
        "unknown_signer": lambda: oauth.token(key=dataclasses.replace(mint_key(), kid="x")),
        "authzid_not_the_claim": lambda: oauth.token(f"bob@{ACME}"),
    }[bad]()
    oauth.tokens.append(token)
    for mechanism in ("OAUTHBEARER", "XOAUTH2"):
        error = refused_with_challenge(token_login(oauth, token, mechanism=mechanism))
        assert error["status"] == "invalid_token"


def test_a_token_of_tenant_a_never_opens_a_mailbox_of_tenant_b(oauth: Setup) -> None:
    # signed by A, for a user of B (whose issuer is B): the signature is not B's
    refused_with_challenge(token_login(oauth, oauth.token(f"alice@{OTHER}"), f"alice@{OTHER}"))
    # A's token of an acme user, presented for the same user name at B
    refused_with_challenge(token_login(oauth, oauth.token(), f"alice@{OTHER}"))
    # a tenant that trusts the same issuer: the claim names acme, not shared
    refused_with_challenge(token_login(oauth, oauth.token(), f"alice@{SHARED}"))
    # while B's own token for its user works
    good = oauth.token(f"alice@{OTHER}", issuer=oauth.b)
    assert token_login(oauth, good, f"alice@{OTHER}") == [b"+OK Logged in.\r\n"]


def test_password_logins_still_work_and_plain_is_the_default(oauth: Setup) -> None:
    with wire(oauth) as connection:
        connection.login(ALICE, USERS["alice"])  # passthrough: the backend's own password
        assert connection.command("STAT").startswith(f"+OK {oauth.messages} ".encode())


# -- keys ----------------------------------------------------------------------------


def test_key_rotation_while_the_proxy_runs(oauth: Setup) -> None:
    old = oauth.a.keys[0]
    assert token_login(oauth, oauth.token()) == [b"+OK Logged in.\r\n"]
    new = mint_key()
    oauth.a.keys = [old, new]
    # a token of the new key works as soon as the refetch cooldown allows
    wait_until(
        lambda: token_login(oauth, oauth.token(key=new)) == [b"+OK Logged in.\r\n"],
        COOLDOWN + 5,
        message="a token of the new key logs in",
    )
    oauth.a.keys = [new]
    # the removed key stops working after the cache window
    wait_until(
        lambda: token_login(oauth, oauth.token(key=old))[0].startswith(b"+ "),
        MAX_AGE + COOLDOWN + 5,
        message="the removed key is refused",
    )
    assert token_login(oauth, oauth.token(key=new)) == [b"+OK Logged in.\r\n"]


def logs_in_soon(oauth: Setup) -> None:
    """A good token of the issuer's first key logs in, once the proxy had the
    chance to fetch the keys again (another test may have rotated them)."""
    wait_until(
        lambda: token_login(oauth, oauth.token()) == [b"+OK Logged in.\r\n"],
        COOLDOWN + 5,
        message="a good token logs in",
    )


def test_unknown_kids_fetch_the_keys_at_most_once_per_cooldown(oauth: Setup) -> None:
    logs_in_soon(oauth)
    forger = mint_key()
    time.sleep(COOLDOWN)  # the time itself is the subject: the last fetch's cooldown is over
    before = oauth.a.requests["/keys"]
    started = time.monotonic()
    for number in range(8):
        forged = oauth.token(key=dataclasses.replace(forger, kid=f"forged-{number}"))
        refused_with_challenge(token_login(oauth, forged))
    elapsed = time.monotonic() - started
    fetched = oauth.a.requests["/keys"] - before
    assert 1 <= fetched <= 1 + int(elapsed / COOLDOWN), (fetched, elapsed)


def test_issuer_down_keeps_serving_cached_keys(oauth: Setup) -> None:
    logs_in_soon(oauth)
    oauth.a.down = True
    time.sleep(MAX_AGE + 0.2)  # past the cache window: the refetch fails, the keys stay
    assert token_login(oauth, oauth.token()) == [b"+OK Logged in.\r\n"]
    unknown = oauth.token(key=dataclasses.replace(mint_key(), kid="new-while-down"))
    wait_until(
        lambda: (
            token_login(oauth, unknown)
            == [b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n"]
        ),
        COOLDOWN + 5,
        message="a new kid while the issuer is down is a temporary failure",
    )


# -- budgets and secrecy ---------------------------------------------------------------


def test_failed_tokens_count_in_the_failure_budget(
    make_proxy: Callable[..., ProxyProcess], oauth: Setup, tmp_path: Path
) -> None:
    budget = {"allow": [], "block_after": 2, "delay_after": 1, "max_delay": "0s"}
    proxy = make_proxy({"auth": {**budget, "mechanisms": TOKEN_MECHANISMS}}, tenants=False)
    record = {
        "name": ACME,
        "backends": [{"host": "127.0.0.1", "port": 1}],
        "master_user": "proxymaster",
        "master_password_env": MASTER_ENV,
        "oauth": {"issuer": oauth.a.url, "audience": "pop3"},
    }
    path = tmp_path / "acme.json"
    path.write_text(json.dumps(record))
    assert run_cli(proxy.config_path, "tenant", "set", "--from-file", str(path)).returncode == 0
    bad = oauth.token(aud="someone-else")
    here = dataclasses.replace(oauth, proxy=proxy)
    for _ in range(2):
        refused_with_challenge(token_login(here, bad))
    assert token_login(here, bad) == [
        b"-ERR [LOGIN-DELAY] Too many failed logins, try again later\r\n"
    ]
    counted = (
        'pop3proxy_auth_total{mechanism="oauth",result="bad_credentials",tenant="acme.example"}'
    )
    metrics = proxy.metrics()
    assert counted + " 2.0" in metrics, [m for m in metrics.splitlines() if "auth_total" in m]


def test_no_token_reaches_the_log_metrics_or_redis(oauth: Setup, redis_server: RedisServer) -> None:
    # some of everything: a good login, refusals, a temporary failure
    token_login(oauth, oauth.token())
    refused_with_challenge(token_login(oauth, oauth.token(exp=int(time.time()) - 900)))
    wait_until(lambda: "login failed" in oauth.proxy.read_log(), 5)
    log = oauth.proxy.read_log()
    metrics = oauth.proxy.metrics()
    stored = redis_values(redis_server, "oauth:*")
    assert oauth.tokens
    for token in oauth.tokens:
        signature = token.rsplit(".", 1)[-1]
        for where, text in (("log", log), ("metrics", metrics)):
            assert token not in text, where
            assert token.encode() not in stored, where
            assert not signature or signature not in text, where
            assert not signature or signature.encode() not in stored
    assert 'mechanism="oauth"' in metrics


def redis_values(redis_server: RedisServer, pattern: str) -> bytes:
    """Every key and value under ``pattern``, whatever the type, as one text."""
    client = redis_server.client()
    parts: list[bytes] = []
    for key in client.scan_iter(pattern):
        kind = client.type(key)
        if kind == b"string":
            parts.append(client.get(key) or b"")
        elif kind == b"list":
            parts += client.lrange(key, 0, -1)
        elif kind == b"hash":
            for field, value in client.hgetall(key).items():
                parts += [field, value]
        elif kind == b"set":
            parts += list(client.smembers(key))
        elif kind == b"zset":
            parts += client.zrange(key, 0, -1)
        parts.append(key)
    client.close()
    return b"\n".join(parts)


def test_a_reload_turns_the_token_mechanisms_on(
    make_proxy: Callable[..., ProxyProcess],
) -> None:
    proxy = make_proxy(tenants=False)
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as connection:
        connection.send(b"CAPA\r\n")
        assert b"SASL PLAIN\r\n" in connection.read_multiline()
    config = dict(proxy.config)
    config["auth"] = {**config["auth"], "mechanisms": TOKEN_MECHANISMS}
    proxy.config_path.write_text(json.dumps(config))
    proxy.signal(signal.SIGHUP)

    def offered() -> bool:
        with Pop3Wire(proxy.host, proxy.ports["plain"]) as connection:
            connection.send(b"CAPA\r\n")
            return b"SASL PLAIN OAUTHBEARER XOAUTH2\r\n" in connection.read_multiline()

    wait_until(offered, 10, message="new connections are offered the token mechanisms")
