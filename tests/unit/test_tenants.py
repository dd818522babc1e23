"""Tenant records: validation with field paths, user-name splitting, login templates."""

from __future__ import annotations

import pytest

from pop3proxy.tenants import (
    RECORD_VERSION,
    Backend,
    Identity,
    MalformedName,
    RecordError,
    Tenant,
    UserName,
    parse_tenant,
    split_user,
)

MINIMAL = {"name": "acme.example", "backends": [{"host": "mail1.acme.internal"}]}


def problems(data: object, path: str = "") -> list[str]:
    with pytest.raises(RecordError) as info:
        parse_tenant(data, path)
    return info.value.problems


def test_defaults() -> None:
    tenant = parse_tenant(MINIMAL)
    assert tenant.name == "acme.example"
    assert tenant.backends == (Backend(host="mail1.acme.internal"),)
    backend = tenant.backends[0]
    assert (backend.port, backend.tls, backend.verify, backend.forward_client) == (
        110,
        "none",
        True,
        "none",
    )
    assert tenant.enabled is True
    assert tenant.policy == "failover"
    assert tenant.auth == "passthrough"
    assert tenant.login == "{local}"
    assert tenant.max_sessions == 200
    assert tenant.version == RECORD_VERSION


def test_a_record_that_sets_nothing_reads_to_the_dataclass_defaults() -> None:
    """Each default is written once, as the field's default."""
    tenant = parse_tenant(MINIMAL)
    assert tenant == Tenant(name=tenant.name, backends=(Backend(host=tenant.backends[0].host),))


def test_implicit_tls_backend_defaults_to_995_and_name_is_lowercased() -> None:
    tenant = parse_tenant({"name": "ACME.Example", "backends": [{"host": "h", "tls": "implicit"}]})
    assert tenant.name == "acme.example"
    assert tenant.backends[0].port == 995


def test_round_trip_through_to_dict() -> None:
    tenant = parse_tenant({**MINIMAL, "login": "{user}", "max_sessions": 3})
    assert parse_tenant(tenant.to_dict()) == tenant


def test_login_command_is_stored_only_when_not_the_default() -> None:
    """Records stay readable by proxies that predate the key (they refuse
    unknown keys) unless a backend uses AUTH PLAIN."""
    plain = parse_tenant(MINIMAL)
    assert plain.backends[0].login_command == "user_pass"
    assert "login_command" not in plain.to_dict()["backends"][0]
    backends = [{"host": "mail1.acme.internal", "login_command": "auth_plain"}]
    sasl = parse_tenant({**MINIMAL, "backends": backends})
    assert sasl.backends[0].login_command == "auth_plain"
    assert parse_tenant(sasl.to_dict()) == sasl


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"name": None}, "name: is required"),
        ({"name": "bad name!"}, "name: expected a DNS-like name"),
        ({"name": "-acme"}, "name: expected a DNS-like name"),
        ({"backends": []}, "backends: expected at least one backend"),
        ({"backends": "mail1"}, "backends: expected a list"),
        ({"backends": [{"port": 110}]}, "backends[0].host: is required"),
        ({"backends": [{"host": ""}]}, "backends[0].host: expected a non-empty string"),
        ({"backends": [{"host": "h", "port": 0}]}, "backends[0].port: expected an integer"),
        ({"backends": [{"host": "h", "port": 70000}]}, "backends[0].port: expected an integer"),
        ({"backends": [{"host": "h", "tls": "ssl"}]}, "backends[0].tls: expected one of"),
        ({"backends": [{"host": "h", "verify": "no"}]}, "backends[0].verify: expected true"),
        (
            {"backends": [{"host": "h"}, {"host": "h2", "forward_client": "smtp"}]},
            "backends[1].forward_client: expected one of",
        ),
        ({"backends": [{"host": "h", "colour": 1}]}, "backends[0].colour: unknown key"),
        (
            {"backends": [{"host": "h", "login_command": "apop"}]},
            "backends[0].login_command: expected one of user_pass, auth_plain",
        ),
        ({"enabled": 1}, "enabled: expected true or false"),
        ({"policy": "random"}, "policy: expected one of failover, round_robin, hash"),
        ({"auth": "ldap"}, "auth: expected one of passthrough, local"),
        ({"auth": "local"}, "master_user: is required with auth: local"),
        ({"auth": "local", "master_user": "m"}, "master_password_env: auth: local needs"),
        ({"master_login": "{login}*{boss}"}, "master_login: unknown placeholder {boss}"),
        ({"max_sessions": 0}, "max_sessions: expected an integer >= 1"),
        ({"version": 0}, "version: expected an integer >= 1"),
        ({"version": RECORD_VERSION + 1}, "version: record version 2 is newer"),
        ({"login": "{localpart}"}, "login: unknown placeholder {localpart}"),
        ({"login": "{0}"}, "login: unknown placeholder {0}"),
        ({"login": "{}"}, "login: unknown placeholder {}"),
        ({"login": "{local.__class__}"}, "login: unknown placeholder"),
        ({"login": "{local!r}"}, "login: unknown placeholder"),
        ({"extra": 1}, "extra: unknown key"),
    ],
)
def test_every_field_is_validated_with_its_path(changes: dict[str, object], expected: str) -> None:
    found = problems({**MINIMAL, **changes})
    assert any(p.startswith(expected) for p in found), found


def test_path_prefix_names_the_record() -> None:
    found = problems({**MINIMAL, "policy": "x"}, path="tenants[3]")
    assert found[0].startswith("tenants[3].policy: ")


def test_all_problems_at_once() -> None:
    found = problems({"name": "", "backends": [], "policy": "x", "max_sessions": -1})
    assert len(found) >= 4


def test_not_a_mapping() -> None:
    assert problems(["acme"])[0].startswith("(top level): expected a mapping")


@pytest.mark.parametrize("login", ["{local", "local}", "{local}}"])
def test_unbalanced_braces_in_login_are_refused(login: str) -> None:
    assert any(p.startswith("login: ") for p in problems({**MINIMAL, "login": login}))


# -- user names -----------------------------------------------------------------


def test_split_user_with_tenant() -> None:
    assert split_user("alice@Acme.Example", "@", None) == UserName(
        "alice@Acme.Example", "alice", "acme.example"
    )


@pytest.mark.parametrize(
    "user",
    ["alice@home@acme.example", "alice@acme.example@acme.example", "alice@", "@acme.example"],
)
def test_a_name_that_could_be_a_second_spelling_is_malformed(user: str) -> None:
    """The separator more than once, or nothing on one side of it: read either way,
    the name could reach some user's mailbox with a failure budget of its own."""
    with pytest.raises(MalformedName):
        split_user(user, "@", "acme.example")


def test_split_user_without_tenant_uses_default() -> None:
    assert split_user("alice", "@", "default.example") == UserName(
        "alice", "alice", "default.example"
    )
    assert split_user("alice", "@", None).tenant is None


@pytest.mark.parametrize(
    "user", ["alice", "ALICE", "Alice@Acme.Example", "alice@acme.example", "aLiCe@ACME.EXAMPLE"]
)
def test_every_spelling_is_one_identity_and_one_budget(user: str) -> None:
    tenant = parse_tenant({**MINIMAL, "name": "acme.example"})
    name = split_user(user, "@", "acme.example")
    assert name.folded == "alice@acme.example"
    assert tenant.identity(name) == Identity("alice", "acme.example")
    assert tenant.backend_login(tenant.identity(name)) == "alice"


def test_case_sensitive_users_keep_their_case_but_share_a_budget() -> None:
    tenant = parse_tenant({**MINIMAL, "case_sensitive_users": True})
    bob, lower = (split_user(user, "@", None) for user in ("Bob@Acme.Example", "bob@acme.example"))
    assert tenant.identity(bob).full == "Bob@acme.example"
    assert tenant.identity(bob) != tenant.identity(lower)
    assert bob.folded == lower.folded, "budgets are checked before the case rule is known"
    assert tenant.to_dict()["case_sensitive_users"] is True
    assert "case_sensitive_users" not in parse_tenant(MINIMAL).to_dict(), "older proxies read it"


def test_case_sensitive_users_must_be_a_boolean() -> None:
    assert problems({**MINIMAL, "case_sensitive_users": "yes"}) == [
        "case_sensitive_users: expected true or false, got 'yes'"
    ]


def test_split_user_other_separator() -> None:
    name = split_user("alice%acme.example", "%", None)
    assert (name.local, name.tenant) == ("alice", "acme.example")
    assert split_user("alice@acme.example", "%", None).tenant is None


def test_split_user_default_tenant_is_lowercased_too() -> None:
    assert split_user("alice", "@", "Acme.Example").tenant == "acme.example"


@pytest.mark.parametrize(
    ("template", "user", "expected"),
    [
        ("{local}", "alice@acme.example", "alice"),
        ("{user}", "Alice@ACME.example", "alice@acme.example"),
        ("{user}", "alice", "alice@acme.example"),  # the tenant from the default or SNI
        ("{local}@{domain}", "alice@ACME.example", "alice@acme.example"),
        ("{local}%{domain}", "alice", "alice%acme.example"),  # default tenant: the record's name
        ("pop-{local}", "bob@acme.example", "pop-bob"),
    ],
)
def test_backend_login_templates(template: str, user: str, expected: str) -> None:
    tenant = parse_tenant({**MINIMAL, "login": template})
    assert tenant.backend_login(tenant.identity(split_user(user, "@", None))) == expected


def test_backend_address_brackets_ipv6() -> None:
    assert Backend(host="::1", port=1110).address == "[::1]:1110"
    assert Backend(host="mail", port=110).address == "mail:110"
