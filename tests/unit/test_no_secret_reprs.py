"""No secret in a repr, a str or an error message of anything on the login path.

Tracebacks, debug logs and ``log.exception`` print objects with ``repr``: a
record that shows its password hash, or an action that shows the client's
password, leaks it the first time something goes wrong near it. Each object
that may hold a secret is built here with a known one, and every rendering of
it is searched for that secret.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from pop3proxy.apppasswords import AppPasswords, new_app_password, without_hashes
from pop3proxy.config import parse_config
from pop3proxy.login import LoginFailed
from pop3proxy.protocol import client as core
from pop3proxy.protocol.backend import BackendLogin, SendToBackend
from pop3proxy.tenants import (
    Backend,
    MasterPasswordInvalid,
    MasterPasswordMissing,
    Tenant,
    UserName,
)
from pop3proxy.userrecords import UserRecordError, decode_user_record, parse_user_record

SECRET = "Sekret-Canary-71c3"
PLAIN_LISTENER = [{"name": "pop3", "address": "127.0.0.1:1110", "tls": "none"}]
HASH = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$" + SECRET


def renderings(thing: object) -> list[str]:
    texts = [repr(thing), str(thing), f"{thing!r:>10}"]
    if isinstance(thing, BaseException):
        texts += [repr(thing.args)]
    return texts


def assert_hidden(thing: object, secret: str = SECRET) -> None:
    encoded = base64.b64encode(secret.encode()).decode()
    for text in renderings(thing):
        assert secret not in text, f"{type(thing).__name__} shows the secret: {text}"
        assert encoded not in text, f"{type(thing).__name__} shows it base64-encoded"


def test_user_record_hides_its_hash_and_its_raw_fields() -> None:
    stored = json.dumps({"version": 1, "backend": "mail2:110", "password_hash": HASH})
    record = decode_user_record("acme.example", "alice", stored.encode())
    assert record.password_hash == HASH
    assert dict(record.raw)["password_hash"] == HASH, "writers still see every field"
    assert_hidden(record)
    assert "mail2:110" in repr(record), "the rest of the record still shows"


def test_an_invalid_user_record_error_does_not_quote_the_hash() -> None:
    with pytest.raises(Exception) as error:
        parse_user_record("acme.example", "alice", {"password_hash": HASH, "pinned": SECRET})
    assert_hidden(error.value)


def test_client_actions_hide_the_password() -> None:
    machine = core.ClientConnection(core.Settings(tls_active=True, stls_offered=False))
    actions = machine.receive_data(f"USER alice\r\nPASS {SECRET}\r\n".encode())
    login = actions[-1]
    assert isinstance(login, core.Login) and login.password == SECRET.encode()
    assert_hidden(login)
    assert_hidden(actions)
    plain = base64.b64encode(f"\0alice\0{SECRET}".encode())
    machine = core.ClientConnection(core.Settings(tls_active=True, stls_offered=False))
    assert_hidden(machine.receive_data(b"AUTH PLAIN " + plain + b"\r\n"))
    forward = core.Forward(f"PASS {SECRET}\r\n".encode(), "other")
    assert_hidden(forward)


@pytest.mark.parametrize("sasl_plain", [False, True], ids=["user_pass", "auth_plain"])
def test_backend_login_hides_the_password_it_sends(sasl_plain: bool) -> None:
    machine = BackendLogin("alice", SECRET.encode(), starttls=False, sasl_plain=sasl_plain)
    sent = machine.receive_line(b"+OK ready")
    if not sasl_plain:
        sent = machine.receive_line(b"+OK")
    assert isinstance(sent[0], SendToBackend)
    assert SECRET.encode() in sent[0].data or b"AUTH PLAIN" in sent[0].data
    assert_hidden(machine)
    assert_hidden(sent)


def test_tenant_names_where_the_master_password_is_never_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ACME_MASTER", SECRET)
    tenant = Tenant(
        "acme.example",
        (Backend("mail.acme.internal"),),
        auth="local",
        master_user="proxymaster",
        master_password_env="ACME_MASTER",
    )
    assert tenant.master_password() == SECRET.encode()
    assert_hidden(tenant)
    assert_hidden(UserName("alice@acme.example", "alice", "acme.example"))


def test_a_password_in_the_redis_url_is_not_in_the_config_repr() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:6379/0"
    config = parse_config({"listeners": PLAIN_LISTENER, "directory": {"redis_url": url}})
    assert SECRET in config.directory.redis_url
    assert_hidden(config)
    assert_hidden(config.directory)


def test_a_bad_redis_url_is_quoted_without_its_password() -> None:
    with pytest.raises(Exception) as error:
        url = f"http://user:{SECRET}@127.0.0.1/0"
        parse_config({"listeners": PLAIN_LISTENER, "directory": {"redis_url": url}})
    assert "redis_url" in str(error.value)
    assert_hidden(error.value)


def test_login_failure_carries_no_password() -> None:
    failure = LoginFailed(b"-ERR [AUTH] Authentication failed\r\n", "bad_credentials", "acme")
    assert_hidden(failure)


# -- the master password: one line, refused otherwise, never quoted ---------------


def local_tenant(**where: str) -> Tenant:
    return Tenant(
        "acme.example",
        (Backend("mail.acme.internal"),),
        auth="local",
        master_user="proxymaster",
        **where,
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (SECRET.encode(), SECRET.encode()),
        (SECRET.encode() + b"\n", SECRET.encode()),  # echo pw > file
        (SECRET.encode() + b"\r\n", SECRET.encode()),
    ],
)
def test_a_master_password_file_loses_one_line_end(
    tmp_path: Path, content: bytes, expected: bytes
) -> None:
    path = tmp_path / "master"
    path.write_bytes(content)
    assert local_tenant(master_password_file=str(path)).master_password() == expected


BROKEN = [
    SECRET + "\nDELE 1",
    SECRET + "\r\nDELE 1",
    SECRET + "\rDELE 1",
    SECRET + "\x00tail",
    SECRET + "\n\n",  # a second line end is not "the" line end
]


@pytest.mark.parametrize("value", BROKEN)
def test_a_master_password_file_with_a_line_break_inside_is_refused(
    tmp_path: Path, value: str
) -> None:
    path = tmp_path / "master"
    path.write_bytes(value.encode() + b"\n")
    with pytest.raises(MasterPasswordInvalid) as error:
        local_tenant(master_password_file=str(path)).master_password()
    assert str(path) in str(error.value) and "CR, LF or NUL" in str(error.value)
    assert_hidden(error.value)


@pytest.mark.parametrize("value", [v for v in BROKEN if "\x00" not in v])
def test_a_master_password_env_with_a_line_break_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ACME_MASTER", value)
    with pytest.raises(MasterPasswordInvalid) as error:
        local_tenant(master_password_env="ACME_MASTER").master_password()
    assert "$ACME_MASTER" in str(error.value)
    assert_hidden(error.value)


def test_an_empty_master_password_file_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "master"
    path.write_bytes(b"\n")
    with pytest.raises(MasterPasswordMissing, match="empty"):
        local_tenant(master_password_file=str(path)).master_password()


# -- app passwords: neither the password nor its hash in any rendering ----------


def test_app_passwords_hide_their_hash_the_password_and_its_digest() -> None:
    password, entry = new_app_password([], "phone")
    stored = {"version": 1, "app_passwords": {entry.id: {**entry.stored(), "hash": HASH}}}
    record = decode_user_record("acme.example", "alice", json.dumps(stored).encode())
    assert record.app_passwords[0].hash == HASH
    assert_hidden(record)
    assert_hidden(record.app_passwords[0])
    assert "phone" in repr(record.app_passwords[0]), "the rest still shows"
    assert_hidden(entry, entry.hash)
    assert_hidden(without_hashes(dict(record.raw)))
    judge = AppPasswords()
    accepted = judge.check(
        "acme.example", "required", "alice", password.encode(), None, lambda: (entry,)
    )
    assert accepted is not None
    for thing in (judge, judge.verified, accepted, *judge.verified._entries.values()):
        assert_hidden(thing, password)
        assert_hidden(thing, password[6:])
        assert_hidden(thing, entry.hash)
    (key,) = judge.verified._entries
    assert password not in repr(key) and password[6:] not in repr(key)


def test_an_invalid_app_password_entry_error_does_not_quote_the_hash() -> None:
    stored = {"app_passwords": {"abcde": {"created": 1, "hash": HASH, "label": ["x"]}}}
    with pytest.raises(UserRecordError) as error:
        decode_user_record("acme.example", "alice", json.dumps(stored).encode())
    assert "app_passwords.abcde.label" in str(error.value)
    assert_hidden(error.value)


def test_a_refused_app_password_names_its_id_but_not_its_secret() -> None:
    password, entry = new_app_password([], "phone", "1s", now=0.0)
    with pytest.raises(LoginFailed) as refused:
        AppPasswords().check(
            "acme.example", "required", "alice", password.encode(), None, lambda: (entry,)
        )
    assert refused.value.result == "expired" and entry.id in refused.value.detail
    assert_hidden(refused.value, password[6:])
    assert_hidden(refused.value.detail, password[6:])
