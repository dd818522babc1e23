"""``USER@TENANT`` as the CLI's user, migrate and delay commands read it: split
as a login splits it, a usage error (exit 2) when it names no tenant."""

from __future__ import annotations

import pytest

from pop3proxy.commands import EXIT_USAGE, CommandError, user_name
from pop3proxy.config import TenancyConfig


def test_a_name_with_its_tenant_is_split_as_a_login_splits_it():
    name = user_name("Alice@Acme.Example", TenancyConfig())
    assert (name.local, name.tenant) == ("Alice", "acme.example")


def test_the_default_tenant_completes_a_bare_name():
    name = user_name("alice", TenancyConfig(default_tenant="acme.example"))
    assert (name.local, name.tenant) == ("alice", "acme.example")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice", "'alice' names no tenant (expected USER%TENANT)"),
        ("", None),
    ],
)
def test_a_name_without_a_tenant_is_a_usage_error(text, message):
    with pytest.raises(CommandError) as error:
        user_name(text, TenancyConfig(separator="%"))
    assert error.value.code == EXIT_USAGE
    if message is not None:
        assert str(error.value) == message
