"""App passwords against a real Dovecot with a master user, with real clients.

Tenant ``apps.example`` is a passthrough tenant on the shared Dovecot: the
mailbox passwords are Dovecot's, and after an app password the proxy logs
in as Dovecot's master user ``proxymaster``. Every app password is made with
the real CLI, as an operator would.
"""

from __future__ import annotations

import json
import poplib
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from conftest import APPS
from harness.ports import wait_until
from harness.proxy import ProxyProcess, attempt_login, run_cli
from harness.users import USERS, WRONG_PASSWORD
from harness.wire import Pop3Wire
from test_observability import scrape
from test_who_kick import KICK_WITHIN, closed_within

from pop3proxy import apppasswords

AUTH_FAILED = b"-ERR [AUTH] Authentication failed\r\n"


def add_app_password(proxy: ProxyProcess, user: str, label: str, *options: str) -> dict[str, Any]:
    """``user app-password add --json``: the printed entry, password included."""
    result = run_cli(
        proxy.config_path, "user", "app-password", "add", user, "--label", label, "--json", *options
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def list_app_passwords(proxy: ProxyProcess, user: str) -> tuple[str, list[dict[str, Any]]]:
    result = run_cli(proxy.config_path, "user", "app-password", "list", user, "--json")
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(result.stdout)["app_passwords"]


def refusals(proxy: ProxyProcess) -> list[dict[str, Any]]:
    return [r for r in proxy.log_records() if r.get("message") == "login failed"]


def test_an_app_password_logs_in_with_poplib_curl_and_mpop(
    app_proxies, fresh_mailbox, dovecot, certs, tmp_path: Path
):
    (proxy,) = app_proxies("allowed")
    messages = fresh_mailbox("alice")
    user = f"alice@{APPS}"
    phone = add_app_password(proxy, user, "Alice's phone")
    password = phone["password"]
    assert apppasswords.canonical(password) == password
    assert password[: apppasswords.ID_LENGTH] == phone["id"]

    client = poplib.POP3(proxy.host, proxy.ports["plain"], timeout=10)
    client.user(user)
    assert client.pass_(password).startswith(b"+OK")
    assert client.stat()[0] == len(messages)
    client.quit()

    curl = subprocess.run(
        [
            *("curl", "-sS", "--max-time", "10", "--user", f"{user}:{password}"),
            f"pop3://{proxy.host}:{proxy.ports['plain']}/1",
        ],
        capture_output=True,
        timeout=20,
    )
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout.replace(b"\r\n", b"\n") == messages[0].replace(b"\r\n", b"\n")

    maildir = tmp_path / "mpop-maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    secret = tmp_path / "mpop-password"
    secret.write_text(password.upper().replace("-", " ") + "\n")  # typed loosely on a phone
    empty_config = tmp_path / "mpoprc"
    empty_config.write_text("")
    empty_config.chmod(0o600)
    mpop = subprocess.run(
        [
            "mpop",
            f"--file={empty_config}",
            f"--host={proxy.host}",
            f"--port={proxy.ports['pop3s']}",
            "--tls=on",
            "--tls-starttls=off",
            f"--tls-trust-file={certs.ca_file}",
            "--auth=user",
            f"--user={user}",
            f"--passwordeval=cat {secret}",
            f"--delivery=maildir,{maildir}",
            "--keep=on",
            f"--uidls-file={tmp_path / 'mpop-uidls'}",
            "--received-header=off",
            "--timeout=10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert mpop.returncode == 0, mpop.stderr + mpop.stdout
    assert len(list((maildir / "new").iterdir())) == len(messages)

    assert attempt_login(proxy, user, USERS["alice"]).startswith(b"+OK")  # allowed: both

    def ended() -> list[dict[str, Any]]:
        return [s for s in proxy.sessions() if s.get("result") == "ok"]

    sessions = wait_until(lambda: len(ended()) == 4 and ended(), 5, message="4 session lines")
    by_app = [s for s in sessions if s.get("mechanism") == "app_password"]
    assert len(by_app) == 3
    assert {(s["app_id"], s["app_label"]) for s in by_app} == {(phone["id"], "Alice's phone")}
    assert [s.get("app_id") for s in sessions if s.get("mechanism") == "password"] == [None]

    history = run_cli(proxy.config_path, "user", "history", user, "--json")
    assert history.returncode == 0, history.stderr
    logins = json.loads(history.stdout)["logins"]
    assert sum(1 for e in logins if e.get("credential") == phone["id"]) == 3
    assert {e.get("label") for e in logins if e.get("credential")} == {"Alice's phone"}
    table = run_cli(proxy.config_path, "user", "history", user).stdout
    assert table.count(f"{phone['id']} (Alice's phone)") == 3, table

    raw, listed = list_app_passwords(proxy, user)
    assert [(e["id"], e["label"]) for e in listed] == [(phone["id"], "Alice's phone")]
    assert listed[0]["last_used"]["client"] == "127.0.0.1"
    assert abs(listed[0]["last_used"]["time"] - time.time()) < 60
    assert "argon2" not in raw and "hash" not in raw and password not in raw
    shown = run_cli(proxy.config_path, "user", "show", user)
    assert shown.returncode == 0, shown.stderr
    assert "argon2" not in shown.stdout and phone["id"] in shown.stdout

    labels = frozenset({("tenant", APPS), ("result", "ok"), ("mechanism", "app_password")})
    wait_until(
        lambda: scrape(proxy).get(("pop3proxy_auth_total", labels)) == 3,
        10,
        message="app password logins counted",
    )


def test_required_refuses_the_mailbox_password_with_the_reply_and_time_of_a_wrong_one(
    app_proxies, fresh_mailbox
):
    (proxy,) = app_proxies("required", failure_delay="0.4s", delay_after=100, block_after=200)
    fresh_mailbox("carol")
    user = f"carol@{APPS}"
    good = add_app_password(proxy, user, "laptop")["password"]
    wrong_app = good[: apppasswords.ID_LENGTH] + apppasswords.generate()[apppasswords.ID_LENGTH :]
    timings: dict[str, list[float]] = {"mailbox": [], "wrong_app": [], "wrong": []}
    for _ in range(4):
        for kind, password in (
            ("mailbox", USERS["carol"]),
            ("wrong_app", wrong_app),
            ("wrong", WRONG_PASSWORD),
        ):
            started = time.monotonic()
            reply = attempt_login(proxy, user, password)
            timings[kind].append(time.monotonic() - started)
            assert reply == AUTH_FAILED, (kind, reply)
    medians = {kind: statistics.median(values) for kind, values in timings.items()}
    assert min(medians.values()) >= 0.4, medians
    assert max(medians.values()) - min(medians.values()) < 0.15, medians
    assert attempt_login(proxy, user, good).startswith(b"+OK")
    details = {r["detail"] for r in refusals(proxy)}
    assert details == {"not an app password", "wrong app password"}
    assert {r["result"] for r in refusals(proxy)} == {"bad_credentials"}

    def refused(mechanism: str) -> float:
        labels = {("tenant", APPS), ("result", "bad_credentials"), ("mechanism", mechanism)}
        return scrape(proxy).get(("pop3proxy_auth_total", frozenset(labels)), 0.0)

    # A refused attempt counts under what it offered: the mailbox and the wrong
    # password as passwords, the wrong app password as an app password.
    wait_until(
        lambda: (refused("password"), refused("app_password")) == (8, 4),
        10,
        message="refusals counted by mechanism",
    )


def test_revoke_ends_the_session_on_another_replica_and_the_next_login_fails(
    app_proxies, fresh_mailbox, dovecot
):
    first, second = app_proxies("required", replicas=2)
    messages = fresh_mailbox("dave")
    user = f"dave@{APPS}"
    tablet = add_app_password(first, user, "tablet")
    other = add_app_password(first, user, "desktop")
    # Verified twice on the first replica: the second login comes from its cache.
    assert attempt_login(first, user, tablet["password"]).startswith(b"+OK")
    with (
        Pop3Wire(first.host, first.ports["plain"]) as wire,
        Pop3Wire(first.host, first.ports["plain"]) as bystander,
    ):
        assert wire.command(f"USER {user}").startswith(b"+OK")
        assert wire.command(f"PASS {tablet['password']}").startswith(b"+OK")
        assert bystander.command(f"USER {user}").startswith(b"+OK")
        assert bystander.command(f"PASS {other['password']}").startswith(b"+OK")
        assert wire.command("DELE 1").startswith(b"+OK")
        wait_until(lambda: len(wait_for_who(second)) == 2, 10, message="both sessions registered")
        revoked = run_cli(second.config_path, "user", "app-password", "revoke", user, tablet["id"])
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout.strip() == (
            f"app password {tablet['id']} of {user} revoked; 1 session(s) ended"
        )
        assert closed_within(wire, KICK_WITHIN)
        assert bystander.command("NOOP").startswith(b"+OK")  # another app password: untouched
        assert bystander.command("QUIT").startswith(b"+OK")
    # Kicked without QUIT: the DELE never happened.
    assert dovecot.message_count("dave") == len(messages)
    for replica in (first, second):
        assert attempt_login(replica, user, tablet["password"]) == AUTH_FAILED
    assert attempt_login(first, user, other["password"]).startswith(b"+OK")
    _, listed = list_app_passwords(second, user)
    assert [e["id"] for e in listed] == [other["id"]]
    kick = [r for r in first.log_records() if r.get("message") == "kick"][-1]
    assert (kick["scope"], kick["sessions"], kick["reason"]) == (
        "credential",
        1,
        "app password revoked",
    )


def wait_for_who(proxy: ProxyProcess) -> list[dict[str, Any]]:
    result = run_cli(proxy.config_path, "who", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_expired_and_other_networks_are_refused(app_proxies, fresh_mailbox):
    (proxy,) = app_proxies("allowed")
    fresh_mailbox("erin")
    user = f"erin@{APPS}"
    elsewhere = add_app_password(proxy, user, "office", "--allow-from", "192.0.2.0/24")
    here = add_app_password(
        proxy, user, "home", "--allow-from", "192.0.2.0/24", "--allow-from", "127.0.0.0/8"
    )
    assert attempt_login(proxy, user, elsewhere["password"]) == AUTH_FAILED
    assert attempt_login(proxy, user, here["password"]).startswith(b"+OK")
    brief = add_app_password(proxy, user, "trial", "--expires", "3s")
    assert time.time() < brief["expires"], "the CLI took too long for this test"
    assert attempt_login(proxy, user, brief["password"]).startswith(b"+OK")
    wait_until(lambda: time.time() > brief["expires"] + 0.1, 5, message="expiry")
    # Verified a moment ago and cached: the expiry still applies.
    assert attempt_login(proxy, user, brief["password"]) == AUTH_FAILED
    results = [(r["result"], r["detail"]) for r in refusals(proxy)]
    assert results == [
        ("not_allowed_from", f"app password {elsewhere['id']}"),
        ("expired", f"app password {brief['id']}"),
    ]
    _, listed = list_app_passwords(proxy, user)
    assert {e["id"]: e["expired"] for e in listed}[brief["id"]] is True


def test_one_users_app_password_never_lets_another_user_in(app_proxies, fresh_mailbox):
    (proxy,) = app_proxies("required")
    fresh_mailbox("alice")
    alices = add_app_password(proxy, f"alice@{APPS}", "phone")["password"]
    assert attempt_login(proxy, f"alice@{APPS}", alices).startswith(b"+OK")  # cached now
    assert attempt_login(proxy, f"bob@{APPS}", alices) == AUTH_FAILED
    bobs = add_app_password(proxy, f"bob@{APPS}", "phone")["password"]
    assert attempt_login(proxy, f"bob@{APPS}", alices) == AUTH_FAILED
    assert attempt_login(proxy, f"alice@{APPS}", bobs) == AUTH_FAILED
    assert attempt_login(proxy, f"bob@{APPS}", bobs).startswith(b"+OK")


def test_the_cli_explains_what_is_missing_or_wrong(app_proxies, dovecot, tmp_path: Path):
    (proxy,) = app_proxies("off")
    backend = f"{dovecot.host}:{dovecot.port}"
    no_master = run_cli(
        proxy.config_path, "tenant", "set", "nomaster.example", "--backend", backend,
        "--app-passwords", "required",
    )  # fmt: skip
    assert no_master.returncode == 2
    assert "master_user: is required with app_passwords: required" in no_master.stderr
    assert "needs master_password_env or master_password_file" in no_master.stderr
    assert "Traceback" not in no_master.stderr

    user = f"alice@{APPS}"
    stored_off = run_cli(proxy.config_path, "user", "app-password", "add", user, "--label", "phone")
    assert stored_off.returncode == 0, stored_off.stderr
    assert "app_passwords: off" in stored_off.stderr
    for options, expected in (
        (("--label", "x", "--allow-from", "not-a-net"), "--allow-from: expected a network"),
        (("--label", "x", "--expires", "soon"), "--expires: expected a duration"),
        (("--label", " "), "--label: expected a name for the device"),
    ):
        bad = run_cli(proxy.config_path, "user", "app-password", "add", user, *options)
        assert (bad.returncode, "Traceback" in bad.stderr) == (2, False), bad.stderr
        assert expected in bad.stderr
    unknown = run_cli(proxy.config_path, "user", "app-password", "revoke", user, "zzzzz")
    assert unknown.returncode == 1
    assert f"{user} has no app password 'zzzzz'" in unknown.stderr
    # off: an app password is just a wrong mailbox password
    text = run_cli(proxy.config_path, "user", "app-password", "list", user)
    assert text.returncode == 0 and "phone" in text.stdout and "never" in text.stdout

    tenants = tmp_path / "tenants.yaml"
    tenants.write_text(
        "tenants:\n"
        f"  - name: filed.example\n    backends: [{{host: {dovecot.host}, port: {dovecot.port}}}]\n"
        "    app_passwords: allowed\n"
    )
    config = tmp_path / "file-config.yaml"
    filed = {**proxy.config, "directory": {"store": "file", "file": str(tenants)}}
    config.write_text(yaml.safe_dump(filed))
    checked = run_cli(config, "check-config")
    assert checked.returncode == 2
    assert "master_user: is required with app_passwords: allowed" in checked.stderr


def open_session(proxy: ProxyProcess, user: str, password: str) -> Pop3Wire:
    wire = Pop3Wire(proxy.host, proxy.ports["plain"])
    assert wire.command(f"USER {user}").startswith(b"+OK")
    assert wire.command(f"PASS {password}").startswith(b"+OK")
    return wire


def test_user_delete_ends_the_sessions_of_its_app_passwords_not_the_mailbox_passwords(
    app_proxies, fresh_mailbox, dovecot
):
    first, second = app_proxies("allowed", replicas=2)
    messages = fresh_mailbox("dave")
    user = f"dave@{APPS}"
    phone = add_app_password(first, user, "phone")
    laptop = add_app_password(first, user, "laptop")
    with (
        open_session(first, user, phone["password"]) as on_phone,
        open_session(second, user, laptop["password"]) as on_laptop,
        open_session(first, user, USERS["dave"]) as with_mailbox_password,
    ):
        assert on_phone.command("DELE 1").startswith(b"+OK")
        wait_until(lambda: len(wait_for_who(second)) == 3, 10, message="sessions registered")
        deleted = run_cli(second.config_path, "user", "delete", user)
        assert deleted.returncode == 0, deleted.stderr
        assert deleted.stdout.splitlines() == [
            f"user {user} deleted",
            f"2 app-password session(s) of {user} ended",
        ]
        assert closed_within(on_phone, KICK_WITHIN) and closed_within(on_laptop, KICK_WITHIN)
        # The mailbox password is Dovecot's: still valid, its session goes on.
        assert with_mailbox_password.command("NOOP").startswith(b"+OK")
        assert with_mailbox_password.command("QUIT").startswith(b"+OK")
    assert dovecot.message_count("dave") == len(messages), "kicked without QUIT: no DELE"
    for replica in (first, second):
        for app in (phone, laptop):
            assert attempt_login(replica, user, app["password"]) == AUTH_FAILED
    _, listed = list_app_passwords(first, user)
    assert listed == []
    kick = [r for r in first.log_records() if r.get("message") == "kick"][-1]
    assert (kick["scope"], kick["value"], kick["sessions"], kick["reason"]) == (
        "credential",
        f"{user}/*",
        1,
        "user deleted",
    )


def test_set_password_on_a_passthrough_tenant_keeps_app_passwords_and_their_sessions(
    app_proxies, fresh_mailbox
):
    (proxy,) = app_proxies("allowed")
    fresh_mailbox("erin")
    user = f"erin@{APPS}"
    phone = add_app_password(proxy, user, "phone")
    with open_session(proxy, user, phone["password"]) as on_phone:
        changed = run_cli(proxy.config_path, "user", "set-password", user, stdin="new-pass\n")
        assert changed.returncode == 0, changed.stderr
        assert "session(s)" not in changed.stdout, "nothing ended"
        assert on_phone.command("NOOP").startswith(b"+OK")
        assert on_phone.command("QUIT").startswith(b"+OK")
    assert attempt_login(proxy, user, phone["password"]).startswith(b"+OK")
    assert not [r for r in proxy.log_records() if r.get("message") == "kick"]
