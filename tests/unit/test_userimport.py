"""Reading an import file: which lines become which users, and why the others
do not, without a Redis or a CLI process."""

from __future__ import annotations

from harness.doveadm import dovecot_hash

from pop3proxy.commands.userimport import read_import_lines
from pop3proxy.tenants import parse_tenant

TENANT = {"name": "acme.example", "backends": [{"host": "127.0.0.1", "port": 1110}]}


def test_names_take_the_tenants_case_rule_and_the_proxys_separator():
    line = dovecot_hash("SSHA", "pw")
    data = f"Alice@ACME.example {line}\nBOB:{line}:::\n".encode()
    folded, problems = read_import_lines(data.splitlines(), parse_tenant(TENANT), "%")
    assert problems == []
    assert [entry.user.full for entry in folded] == ["alice%acme.example", "bob%acme.example"]
    sensitive = parse_tenant({**TENANT, "case_sensitive_users": True})
    kept, _ = read_import_lines(data.splitlines(), sensitive, "@")
    assert [entry.user.local for entry in kept] == ["Alice", "BOB"]


def test_two_spellings_of_one_user_are_one_user():
    line = dovecot_hash("SSHA", "pw")
    data = f"alice {line}\nALICE@acme.example {line}\n".encode()
    entries, problems = read_import_lines(data.splitlines(), parse_tenant(TENANT), "@")
    assert [entry.line for entry in entries] == [1]
    assert [(p.line, p.reason) for p in problems] == [
        (2, "user alice@acme.example already on line 1")
    ]


def test_an_entry_never_shows_its_hash():
    line = dovecot_hash("SHA512-CRYPT", "pw")
    entries, _ = read_import_lines([f"alice:{line}".encode()], parse_tenant(TENANT), "@")
    assert entries[0].stored == line
    assert line.split("}", 1)[1] not in repr(entries[0])


def test_a_name_with_a_control_character_is_refused():
    line = dovecot_hash("SSHA", "pw")
    _, problems = read_import_lines(
        [f"al\x1bice:{line}".encode(), b"  :{SSHA}x"], parse_tenant(TENANT), "@"
    )
    assert [p.reason for p in problems] == [
        "the user name has a space or control character",
        "no user name",
    ]


def test_swapped_columns_do_not_print_the_hash_as_a_name():
    line = dovecot_hash("SSHA", "pw")
    bare = dovecot_hash("SHA512-CRYPT", "pw").split("}", 1)[1]
    _, problems = read_import_lines(
        [f"{line} alice".encode(), f"{bare}\talice".encode()], parse_tenant(TENANT), "@"
    )
    assert [p.reason for p in problems] == [
        "the user name looks like a hash (expected the user first)"
    ] * 2
