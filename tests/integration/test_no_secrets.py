"""Rule 2: no password reaches a log line, a metric or a reply.

One test logs in every way a client can (USER/PASS, AUTH PLAIN with an initial
response and with a continuation, plain, STLS and POP3S, right and wrong,
refused by the proxy and by Dovecot, pipelined, mangled) with known passwords,
keeps every byte the proxy sent back, and then greps all of it, the proxy's
log and metrics, and every proxy log the test run has written so far.
"""

from __future__ import annotations

import base64
import contextlib
import json

from conftest import APPS
from harness.proxy import TENANT, attempt_login, run_cli, store_local_tenant
from harness.users import MASTER_USERS, USERS
from harness.wire import Pop3Wire
from test_app_passwords import add_app_password

from pop3proxy import apppasswords

CANARY = "Canary-Pw-5d2e"
"""A wrong password that appears nowhere else; any hit is a leak."""


class Recorder(Pop3Wire):
    """A Pop3Wire that keeps every byte it read."""

    def __init__(self, *args, **kwargs) -> None:
        self.transcript = bytearray()
        super().__init__(*args, **kwargs)

    def read_line(self) -> bytes:
        line = super().read_line()
        self.transcript += line
        return line


def _plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def _sessions(proxy, certs, transcripts: list[bytes]) -> None:
    login = f"alice@{TENANT}"
    good = USERS["alice"]
    contexts = {
        "plain": None,
        "pop3s": certs.ssl_client_context(),
        "pop3": "stls",
    }
    for listener, context in contexts.items():
        wire = Recorder(
            proxy.host,
            proxy.ports[listener],
            context=context if context != "stls" else None,
        )
        try:
            if context == "stls":
                assert wire.command("STLS").startswith(b"+OK")
                wire.sock = certs.ssl_client_context().wrap_socket(
                    wire.sock, server_hostname="localhost"
                )
                wire._stream = wire.sock.makefile("rb")
            for password in (CANARY, good):
                wire.command(f"USER {login}")
                wire.command(f"PASS {password}")
                if password == good:
                    wire.command("QUIT")
        finally:
            transcripts.append(bytes(wire.transcript))
            wire.drop()

    cases = [
        [f"AUTH PLAIN {_plain(login, CANARY).decode()}"],
        ["AUTH PLAIN", _plain(login, CANARY).decode()],
        [f"AUTH PLAIN {_plain(login, CANARY).decode()}x"],  # bad base64
        [f"AUTH PLAIN {base64.b64encode(CANARY.encode()).decode()}"],  # no NULs
        [f"USER nobody@{TENANT}", f"PASS {CANARY}"],
        ["USER alice@unknown.example", f"PASS {CANARY}"],
        ["USER alice@down.example", f"PASS {CANARY}"],
        ["USER alice@off.example", f"PASS {CANARY}"],
        [f"PASS {CANARY}"],  # PASS before USER
        [f"USER {login}", f"PASS {CANARY} " + "x" * 5000],  # overlong
        [f"USER {login}", f"PASS {CANARY}\0tail"],  # NUL
        [f"APOP {login} {CANARY}"],
        [f"USER alice*proxymaster@{TENANT}", f"PASS {MASTER_USERS['proxymaster']}"],
    ]
    for lines in cases:
        with Recorder(proxy.host, proxy.ports["plain"]) as wire:
            for line in lines:
                wire.command(line)
            wire.command("QUIT")
            transcripts.append(bytes(wire.transcript))
    # Pipelined: the wrong password and the right one in one packet, then the
    # password again inside TRANSACTION (it goes to Dovecot, not to our logs).
    with Recorder(proxy.host, proxy.ports["plain"]) as wire:
        wire.send(
            f"USER {login}\r\nPASS {CANARY}\r\nUSER {login}\r\nPASS {good}\r\n"
            f"NOOP {CANARY}\r\nQUIT\r\n".encode()
        )
        with contextlib.suppress(OSError):
            while wire.read_line():
                pass
        transcripts.append(bytes(wire.transcript))


def test_no_password_in_any_reply_log_or_metric(proxy, certs, fresh_mailbox, tmp_path_factory):
    fresh_mailbox("alice")
    transcripts: list[bytes] = []
    _sessions(proxy, certs, transcripts)
    assert any(b"+OK Logged in." in t for t in transcripts), "the good logins must work"
    secrets = [CANARY, *USERS.values(), *MASTER_USERS.values()]
    replies = b"".join(transcripts).decode("utf-8", "replace")
    own = proxy.read_log() + proxy.metrics()
    # Every proxy log of this test run so far (other tests' proxies included).
    others = "".join(
        path.read_text(errors="replace")
        for path in tmp_path_factory.getbasetemp().rglob("proxy.log")
    )
    for secret in secrets:
        for where, text in (("reply", replies), ("own log or metrics", own), ("logs", others)):
            assert secret not in text, f"{secret!r} leaked into a {where}"
        encoded = base64.b64encode(secret.encode()).decode()
        assert encoded not in own + others, f"{secret!r} leaked base64-encoded"


def test_a_master_password_with_a_line_break_is_refused_unquoted(
    make_proxy, dovecot, tmp_path, redis_server
):
    """``auth: local`` with a master password file holding a second line: the
    client gets ``[SYS/TEMP]``, the log says which file and why, and neither
    the password nor the stored hash of the user shows anywhere."""
    master = MASTER_USERS["proxymaster"]
    secret_file = tmp_path / "master"
    secret_file.write_text(f"{master}\nDELE 1\n")
    proxy = make_proxy({"auth": {"argon2_time_cost": 1, "argon2_memory_cost": 1024}})
    store_local_tenant(
        proxy,
        (dovecot.host, dovecot.port),
        tmp_path,
        {"alice": "local-pass"},
        master_password_file=str(secret_file),
    )
    mark = dovecot.log_mark()

    reply = attempt_login(proxy, "alice@local.example", "local-pass")

    assert reply.startswith(b"-ERR [SYS/TEMP]"), reply
    refusals = [r for r in proxy.log_records() if r.get("message") == "master password unavailable"]
    assert refusals and str(secret_file) in refusals[0]["error"]
    assert "CR, LF or NUL" in refusals[0]["error"]
    assert "proxymaster" not in dovecot.read_log()[mark:], "nothing was sent to the backend"
    prefix = proxy.config["directory"]["key_prefix"]
    with redis_server.client() as client:
        stored = json.loads(client.get(f"{prefix}:user:local.example:alice"))
    for secret in (master, stored["password_hash"], "local-pass"):
        assert secret not in proxy.read_log() + proxy.metrics()


def test_no_app_password_or_its_hash_in_any_reply_log_metric_or_listing(
    app_proxies, fresh_mailbox, redis_server
):
    """An app password logged in with, mistyped, listed, shown, used in ``who``
    and ``history``, and revoked: neither it, nor its secret part, nor its
    stored hash shows in a reply, the log, the metrics or the CLI's output."""
    first, second = app_proxies("required", replicas=2)
    fresh_mailbox("alice")
    user = f"alice@{APPS}"
    made = add_app_password(first, user, "phone")
    password = made["password"]
    secret_part = password[apppasswords.ID_LENGTH + 1 :]
    mistyped = password[:-1] + ("a" if password[-1] != "a" else "b")
    transcripts: list[bytes] = []
    with Recorder(first.host, first.ports["plain"]) as wire:
        wire.command(f"USER {user}")
        wire.command(f"PASS {mistyped}")
        wire.command(f"USER {user}")
        wire.command(f"PASS {password}")
        outputs = [
            run_cli(first.config_path, *args).stdout
            for args in (
                ("who", "--json"),
                ("user", "app-password", "list", user, "--json"),
                ("user", "app-password", "list", user),
                ("user", "show", user),
                ("user", "history", user, "--json"),
            )
        ]
        outputs.append(
            run_cli(second.config_path, "user", "app-password", "revoke", user, made["id"]).stdout
        )
        transcripts.append(bytes(wire.transcript))
    assert b"+OK Logged in." in transcripts[0]
    prefix = first.config["directory"]["key_prefix"]
    with redis_server.client() as client:
        stored = json.loads(client.get(f"{prefix}:user:{APPS}:alice") or "{}")
    assert stored == {}, "revoked: the record is gone with its only field"
    everything = "".join(
        [
            b"".join(transcripts).decode(errors="replace"),
            *outputs,
            *(proxy.read_log() + proxy.metrics() for proxy in (first, second)),
        ]
    )
    assert made["id"] in everything, "the id itself may show: it is not the secret"
    for secret in (password, secret_part, mistyped, password.replace("-", "")):
        assert secret not in everything
        assert base64.b64encode(secret.encode()).decode() not in everything
    assert "$argon2" not in everything
