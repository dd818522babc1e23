"""Users moved off another server: their hashes (made by Dovecot's own
``doveadm pw``) imported with ``pop3proxy user import``, a real login through
the proxy to a real Dovecot as its master user, and the hash replaced by
argon2id on the first good login."""

from __future__ import annotations

import json
import poplib
import time
from pathlib import Path

import pytest
from harness.doveadm import dovecot_hash, write_passwd_file
from harness.mailbox import sample_messages
from harness.ports import wait_until
from harness.proxy import LOCAL_TENANT, ProxyProcess, run_cli
from harness.proxy import attempt_login as attempt
from harness.users import USERS, WRONG_PASSWORD

from pop3proxy.directory import RedisStore
from pop3proxy.legacyhashes import ACCEPTED_SCHEMES

SCHEME_USERS = {scheme: scheme.lower().replace("-", "") for scheme in ACCEPTED_SCHEMES}
"""One migrated user per scheme: ``sha512crypt``, ``blfcrypt``, ..."""


def password_of(user: str) -> str:
    return f"old {user} pässword"


@pytest.fixture
def migration(make_dovecot, make_local_tenant, certs):
    """A Dovecot holding the migrated users' mailboxes (the proxy logs in as its
    master user) and a proxy whose tenant ``local.example`` judges passwords."""
    users = {**USERS, **{user: "unused" for user in SCHEME_USERS.values()}}
    dovecot = make_dovecot(users=users, master_users={"proxymaster": "master-secret"})
    for user in SCHEME_USERS.values():
        dovecot.reset_mailbox(user, sample_messages())
    return dovecot, make_local_tenant(dovecot)


def stored_hash(redis_server, proxy: ProxyProcess, local: str) -> str | None:
    store = RedisStore(redis_server.client(), proxy.config["directory"]["key_prefix"])
    try:
        record = store.get_user(LOCAL_TENANT, local)
    finally:
        store.client.close()
    return record.password_hash if record else None


def import_file(proxy: ProxyProcess, path: Path, *options: str):
    return run_cli(
        proxy.config_path, "user", "import", str(path), "--tenant", LOCAL_TENANT, *options
    )


def user_list(proxy: ProxyProcess) -> dict[str, dict]:
    result = run_cli(proxy.config_path, "user", "list", "--tenant", LOCAL_TENANT, "--json")
    assert result.returncode == 0, result.stderr
    return {entry["user"].split("@")[0]: entry for entry in json.loads(result.stdout)}


def poplib_login(proxy: ProxyProcess, certs, user: str, password: str) -> int:
    """Log in over implicit TLS with poplib; the mailbox's message count."""
    client = poplib.POP3_SSL(proxy.host, proxy.ports["pop3s"], context=certs.ssl_client_context())
    try:
        client.user(f"{user}@{LOCAL_TENANT}")
        client.pass_(password)
        return client.stat()[0]
    finally:
        client.quit()


def test_every_scheme_imports_logs_in_and_becomes_argon2id(migration, redis_server, certs):
    dovecot, proxy = migration
    hashes = {
        scheme: dovecot_hash(scheme, password_of(user)) for scheme, user in SCHEME_USERS.items()
    }
    # A passwd-file as the old Dovecot kept it: uid, gid, home and extra fields;
    # half the names carry the domain.
    lines = [
        f"{user}{'@' + LOCAL_TENANT if index % 2 else ''}:{hashes[scheme]}:1000:1000::"
        f"/home/{user}::userdb_quota_rule=*:storage=1G"
        for index, (scheme, user) in enumerate(SCHEME_USERS.items())
    ]
    passwd = write_passwd_file(proxy.config_path.parent / "passwd", lines)
    result = import_file(proxy, passwd, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["unreadable"] == [] and report["skipped"] == []
    assert {entry["user"]: entry["scheme"] for entry in report["imported"]} == {
        f"{user}@{LOCAL_TENANT}": scheme for scheme, user in SCHEME_USERS.items()
    }
    listed = user_list(proxy)
    for scheme, user in SCHEME_USERS.items():
        assert listed[user]["password_scheme"] == scheme
        assert listed[user]["legacy_hash"] == (scheme != "ARGON2ID")
        assert stored_hash(redis_server, proxy, user) == hashes[scheme].removeprefix("{ARGON2ID}")
    table = run_cli(proxy.config_path, "user", "list", "--tenant", LOCAL_TENANT).stdout
    assert "legacy SHA512-CRYPT" in table
    assert f"{len(SCHEME_USERS) - 1} of {len(SCHEME_USERS) + 1} user(s)" in table

    messages = len(sample_messages())
    for scheme, user in SCHEME_USERS.items():
        assert attempt(proxy, f"{user}@{LOCAL_TENANT}", WRONG_PASSWORD).startswith(
            b"-ERR [AUTH]"
        ), scheme
        assert stored_hash(redis_server, proxy, user) == hashes[scheme].removeprefix("{ARGON2ID}")
        assert poplib_login(proxy, certs, user, password_of(user)) == messages, scheme
        rehashed = wait_until(
            lambda user=user: (stored_hash(redis_server, proxy, user) or "").startswith(
                "$argon2id$v=19$m=1024,t=1,"
            ),
            10,
            message=f"{scheme} hash replaced by the proxy's argon2id",
        )
        assert rehashed
        assert poplib_login(proxy, certs, user, password_of(user)) == messages, scheme
        assert attempt(proxy, f"{user}@{LOCAL_TENANT}", WRONG_PASSWORD).startswith(b"-ERR [AUTH]")
    assert not any(entry["legacy_hash"] for entry in user_list(proxy).values())

    log = proxy.read_log() + dovecot.log_path.read_text(errors="replace")
    for scheme, line in hashes.items():
        payload = line.split("}", 1)[1]
        assert payload not in log, f"a {scheme} hash reached a log"
    for user in SCHEME_USERS.values():
        assert password_of(user) not in log


BAD_AND_GOOD = """\
# users of the old server
alice:{SHA512-CRYPT}HASH_ALICE:1000:1000::/home/alice::
bob@local.example:{SSHA256}HASH_BOB::::::

carol {PLAIN-MD5}HASH_CAROL
dave $6$not$a-valid-hash
erin@other.example:{SSHA}HASH_ERIN
frank:{PLAIN}cleartext-secret::
grace:{CLEARTEXT}
alice:{SSHA}HASH_ERIN
two words and more
heidi:{BLF-CRYPT}$2y$05$short
ivan@local.example@local.example {SSHA}HASH_ERIN
"""


def test_a_file_with_good_and_bad_lines_reports_each_without_hashes(migration, redis_server):
    _, proxy = migration
    hashes = {
        "HASH_ALICE": dovecot_hash("SHA512-CRYPT", "a-pass").split("}", 1)[1],
        "HASH_BOB": dovecot_hash("SSHA256", "b-pass").split("}", 1)[1],
        "HASH_CAROL": dovecot_hash("PLAIN-MD5", "c-pass").split("}", 1)[1],
        "HASH_ERIN": dovecot_hash("SSHA", "e-pass").split("}", 1)[1],
    }
    text = BAD_AND_GOOD
    for marker, value in hashes.items():
        text = text.replace(marker, value)
    path = proxy.config_path.parent / "mixed.txt"
    path.write_bytes(text.encode() + b"judy:{SSHA}\xff\xfe\n")

    dry = import_file(proxy, path, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    imported = [(entry["line"], entry["user"], entry["scheme"]) for entry in report["imported"]]
    # alice already has a password (make_local_tenant set one): skipped, not overwritten.
    assert imported == [
        (3, "bob@local.example", "SSHA256"),
        (5, "carol@local.example", "PLAIN-MD5"),
    ]
    assert report["skipped"] == [
        {
            "line": 2,
            "user": "alice@local.example",
            "reason": "already has a password (--replace overwrites it)",
        }
    ]
    reasons = {problem["line"]: problem["reason"] for problem in report["unreadable"]}
    assert reasons == {
        6: "user dave: SHA512-CRYPT hash is malformed",
        7: "user erin@other.example belongs to other.example, not to tenant local.example",
        8: "user frank: scheme {PLAIN} is not accepted (accepted: "
        + ", ".join(ACCEPTED_SCHEMES)
        + ")",
        9: "user grace: scheme {CLEARTEXT} is not accepted (accepted: "
        + ", ".join(ACCEPTED_SCHEMES)
        + ")",
        10: "user alice@local.example already on line 2",
        11: "expected USER:{SCHEME}HASH:... (passwd-file) or USER HASH (two columns)",
        12: "user heidi: BLF-CRYPT hash is malformed",
        13: "user name 'ivan@local.example@local.example': expected USER or USER@DOMAIN",
        14: "not UTF-8",
    }
    assert stored_hash(redis_server, proxy, "bob") is None, "a dry run stores nothing"
    assert stored_hash(redis_server, proxy, "carol") is None
    assert set(user_list(proxy)) == {"alice"}

    alice_before = stored_hash(redis_server, proxy, "alice")
    result = import_file(proxy, path)
    assert result.returncode == 0, result.stderr
    assert "imported 2 user(s) into local.example (SSHA256 1, PLAIN-MD5 1)" in result.stdout
    assert "1 skipped, 9 line(s) not read" in result.stdout
    assert f"{path}: line 12: user heidi: BLF-CRYPT hash is malformed" in result.stderr
    assert "alice@local.example skipped" in result.stdout
    for output in (result.stdout, result.stderr, dry.stdout, dry.stderr):
        for value in [*hashes.values(), "cleartext-secret", "$2y$05$short", "not$a-valid"]:
            assert value not in output
    assert stored_hash(redis_server, proxy, "bob") == f"{{SSHA256}}{hashes['HASH_BOB']}"
    assert stored_hash(redis_server, proxy, "alice") == alice_before
    assert attempt(proxy, f"alice@{LOCAL_TENANT}", "local-pass").startswith(b"+OK")

    replaced = import_file(proxy, path, "--replace", "--json")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads(replaced.stdout)["skipped"] == []
    assert stored_hash(redis_server, proxy, "alice") == f"{{SHA512-CRYPT}}{hashes['HASH_ALICE']}"
    assert attempt(proxy, f"alice@{LOCAL_TENANT}", "local-pass").startswith(b"-ERR [AUTH]")
    assert attempt(proxy, f"alice@{LOCAL_TENANT}", "a-pass").startswith(b"+OK")


def test_nothing_readable_or_no_file_fails(migration, tmp_path):
    _, proxy = migration
    garbage = tmp_path / "garbage"
    garbage.write_text("alice:{PLAIN}secret\n\n# only a comment\n")
    result = import_file(proxy, garbage)
    assert result.returncode == 1
    assert "line 1: user alice: scheme {PLAIN} is not accepted" in result.stderr
    assert "nothing imported" in result.stderr
    assert "secret" not in result.stdout + result.stderr.replace("{PLAIN}", "")

    missing = import_file(proxy, tmp_path / "missing")
    assert missing.returncode == 1
    assert "cannot read" in missing.stderr and "No such file" in missing.stderr
    assert "Traceback" not in missing.stderr

    unknown = run_cli(
        proxy.config_path, "user", "import", str(garbage), "--tenant", "nowhere.example"
    )
    assert unknown.returncode == 1
    assert "no tenant named 'nowhere.example'" in unknown.stderr


def test_a_legacy_user_is_refused_no_faster_than_an_unknown_one(make_local_tenant, dovecot):
    """A salted SHA is checked in microseconds, argon2id for an unknown user in
    milliseconds: the dummy check and the refusal clock make both refusals alike.
    (The hash comes in on standard input, ``FILE`` ``-``.)"""
    proxy = make_local_tenant(dovecot, failure_delay="0.5s")
    two_columns = f"bob\t{dovecot_hash('SSHA', 'b')}\n"
    imported = run_cli(
        proxy.config_path, "user", "import", "-", "--tenant", LOCAL_TENANT, stdin=two_columns
    )
    assert "imported 1 user(s) into local.example (SSHA 1)" in imported.stdout, imported.stderr

    def refusal(user: str) -> float:
        started = time.monotonic()
        assert attempt(proxy, f"{user}@{LOCAL_TENANT}", WRONG_PASSWORD).startswith(b"-ERR [AUTH]")
        return time.monotonic() - started

    legacy = [refusal("bob") for _ in range(2)]
    unknown = [refusal(f"nobody{n}") for n in range(2)]
    for took in legacy + unknown:
        assert 0.5 <= took < 0.9, (legacy, unknown)


def test_a_tenants_file_keeps_no_user_records_so_import_is_refused(tmp_path):
    (tmp_path / "tenants.yaml").write_text(
        "tenants: [{name: acme.example, backends: [{host: 127.0.0.1, port: 1110}]}]\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        "listeners: [{name: plain, address: '127.0.0.1:1110', tls: none}]\n"
        "directory: {store: file, file: tenants.yaml}\n"
    )
    line = f"alice {dovecot_hash('SSHA', 'a')}\n"
    for options in ((), ("--dry-run",)):
        result = run_cli(
            config, "user", "import", "-", "--tenant", "acme.example", *options, stdin=line
        )
        assert result.returncode == 2
        assert "user records (backend pins, local passwords) are kept in Redis only" in (
            result.stderr
        )
        assert "Traceback" not in result.stderr
