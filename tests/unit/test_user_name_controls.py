"""A user name with a control character is refused by the protocol core, before
the shell could build a cache or Redis key from it (Zimbra CVE-2022-27924
poisoned a route cache with CR LF in a name)."""

from __future__ import annotations

import base64

import pytest

from pop3proxy.protocol import client as core

CONTROLS = ["\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\u2028", "\u2029", "\t", "\x01", "\x7f"]


def machine() -> core.ClientConnection:
    return core.ClientConnection(core.Settings(tls_active=True, stls_offered=False))


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_user_with_a_control_anywhere_is_refused(control: str, where: str) -> None:
    name = {"start": control + "alice", "middle": "ali" + control + "ce", "end": "alice" + control}
    connection = machine()
    reply = connection.receive_data(b"USER " + name[where].encode() + b"\r\n")
    assert [type(action) for action in reply] == [core.Send]
    assert reply[0].data.startswith(b"-ERR")
    assert connection.user is None


def test_spaces_around_the_name_are_still_forgiven() -> None:
    connection = machine()
    connection.receive_data(b"USER  alice  \r\n")
    assert connection.user == "alice"


@pytest.mark.parametrize("control", [*CONTROLS, "\r", "\n", "\r\n"])
def test_auth_plain_identity_with_a_control_is_refused(control: str) -> None:
    response = base64.b64encode(f"\0alice{control}\0pw".encode())
    actions = machine().receive_data(b"AUTH PLAIN " + response + b"\r\n")
    assert not any(isinstance(action, core.Login) for action in actions)
    assert actions[0].data.startswith(b"-ERR [AUTH]")  # type: ignore[union-attr]
