"""TLS from the proxy to a real Dovecot: implicit and STLS, verified with the test CA.

A backend with a certificate from another CA is refused while ``verify`` is
on, and the password never reaches a backend that cannot do STLS.
"""

from __future__ import annotations

import yaml
from harness.certs import make_other_ca_certs
from harness.dovecot import Dovecot
from harness.proxy import ProxyProcess, attempt_login, run_cli
from harness.users import USERS

TENANT = "secure.example"
TEMPORARY = b"-ERR [SYS/TEMP] Service temporarily unavailable, try again later\r\n"


def store(proxy: ProxyProcess, backend: str, *options: str) -> None:
    result = run_cli(proxy.config_path, "tenant", "set", TENANT, "--backend", backend, *options)
    assert result.returncode == 0, result.stderr


def attempt(proxy: ProxyProcess, user: str = "alice") -> bytes:
    return attempt_login(proxy, f"{user}@{TENANT}", USERS[user])


def started(make_proxy, backend: str, *options: str) -> ProxyProcess:
    proxy = make_proxy(start=False, tenants=False)
    store(proxy, backend, *options)
    return proxy.start()


def login_line(dovecot: Dovecot, mark: int) -> str:
    return dovecot.wait_for_log(r"pop3-login: Info: Login: user=<alice>[^\n]*", since=mark).group(0)


def test_implicit_tls_to_pop3s(make_proxy, dovecot, certs):
    mark = dovecot.log_mark()
    proxy = started(
        make_proxy,
        f"{dovecot.host}:{dovecot.pop3s_port}",
        "--backend-tls",
        "implicit",
        "--ca-file",
        str(certs.ca_file),
    )
    assert attempt(proxy).startswith(b"+OK")
    assert "TLS" in login_line(dovecot, mark), "Dovecot saw a TLS session"


def test_stls_to_the_plain_port(make_proxy, dovecot, certs):
    mark = dovecot.log_mark()
    proxy = started(
        make_proxy,
        f"{dovecot.host}:{dovecot.port}",
        "--backend-tls",
        "starttls",
        "--ca-file",
        str(certs.ca_file),
    )
    assert attempt(proxy).startswith(b"+OK")
    assert "TLS" in login_line(dovecot, mark)


def test_server_name_is_what_gets_verified(make_proxy, dovecot, certs):
    """The certificate names localhost and 127.0.0.1; a wrong server_name fails."""

    def with_name(name: str) -> ProxyProcess:
        proxy = make_proxy(start=False, tenants=False)
        backend = {
            "host": dovecot.host,
            "port": dovecot.pop3s_port,
            "tls": "implicit",
            "ca_file": str(certs.ca_file),
            "server_name": name,
        }
        path = proxy.workdir / "tenants.yaml"
        path.write_text(yaml.safe_dump({"tenants": [{"name": TENANT, "backends": [backend]}]}))
        result = run_cli(proxy.config_path, "tenant", "import", str(path))
        assert result.returncode == 0, result.stderr
        return proxy.start()

    assert attempt(with_name("localhost")).startswith(b"+OK")
    assert attempt(with_name("mail.elsewhere.example")) == TEMPORARY


def test_wrong_certificate_is_refused_unless_verify_is_off(
    make_proxy, make_dovecot, certs, tmp_path
):
    other = make_dovecot(certs=make_other_ca_certs(tmp_path / "other"))
    backend = f"{other.host}:{other.pop3s_port}"
    tls = ("--backend-tls", "implicit", "--ca-file", str(certs.ca_file))

    mark = other.log_mark()
    strict = started(make_proxy, backend, *tls)
    assert attempt(strict) == TEMPORARY
    errors = [r for r in strict.log_records() if r.get("message") == "backend unavailable"]
    assert [r["error"] for r in errors] == ["tls_certificate"]
    assert "tls_certificate" in strict.metrics()
    assert "user=<alice>" not in other.read_log()[mark:], "no credentials to an unverified server"

    lax = started(make_proxy, backend, *tls, "--no-verify")
    assert attempt(lax).startswith(b"+OK")
    assert "TLS" in login_line(other, mark)


def test_no_credentials_to_a_backend_without_stls(make_proxy, make_dovecot):
    plain = make_dovecot(certs=None)  # ssl = no: STLS is answered -ERR
    mark = plain.log_mark()
    proxy = started(make_proxy, f"{plain.host}:{plain.port}", "--backend-tls", "starttls")
    assert attempt(proxy) == TEMPORARY
    ended = plain.wait_for_log(r"pop3-login: Info: Disconnected[^\n]*", since=mark).group(0)
    assert "user=<>" in ended, ended
    log = plain.read_log()[mark:]
    assert "alice" not in log and "Login:" not in log, "USER/PASS never reached the backend"
    errors = [r["error"] for r in proxy.log_records() if r.get("message") == "backend unavailable"]
    assert errors == ["stls_refused"]


def test_auth_plain_after_stls(make_proxy, dovecot, certs):
    """``--login-command auth_plain`` reaches the stored record, and the proxy
    logs in with one AUTH PLAIN once the backend connection is encrypted."""
    mark = dovecot.log_mark()
    backend = f"{dovecot.host}:{dovecot.port}"
    options = ("--backend-tls", "starttls", "--ca-file", str(certs.ca_file))
    proxy = started(make_proxy, backend, *options, "--login-command", "auth_plain")
    record = yaml.safe_load(run_cli(proxy.config_path, "tenant", "get", TENANT).stdout)
    assert record["backends"][0]["login_command"] == "auth_plain"
    assert attempt(proxy).startswith(b"+OK")
    assert "TLS" in login_line(dovecot, mark), "Dovecot saw a TLS session"
