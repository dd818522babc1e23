"""A mailbox moves behind the proxy while real clients keep their mail on the
server (fetchmail with ``keep`` and ``uidl``, getmail6 with ``delete = false``):
after the cutover they fetch only the one new message; without the map, the
same poll fetches every message again."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from _migration import MOVING, Move, message, set_up_move, uidls
from harness.ports import wait_until
from harness.proxy import ProxyProcess
from harness.users import USERS
from harness.wire import Pop3Wire

CLIENT_TIMEOUT = 60


@pytest.fixture
def move(make_dovecot, make_proxy, redis_server, tmp_path) -> Move:
    return set_up_move(make_dovecot, make_proxy, redis_server, tmp_path)


class Client:
    """A mail client polling the proxy's plain listener: its memory of the
    UIDLs it has seen lives in :attr:`state`, each message it fetches becomes
    a file in :attr:`inbox` (through a delivery script: getmail refuses to
    write a Maildir as root, as the tests may run)."""

    def __init__(self, workdir: Path) -> None:
        self.state = workdir / "state"
        self.inbox = workdir / "inbox"
        for directory in (self.state, self.inbox):
            directory.mkdir(parents=True)
        self.deliver = workdir / "deliver.sh"
        self.deliver.write_text('#!/bin/sh\ncat > "$1/$(date +%s%N)-$$"\n')
        self.deliver.chmod(0o755)

    def poll(self) -> int:
        """One poll; how many messages it fetched."""
        before = len(list(self.inbox.iterdir()))
        self.run()
        return len(list(self.inbox.iterdir())) - before

    def run(self) -> None:
        raise NotImplementedError

    def subjects(self) -> list[str]:
        return sorted(_subject(path) for path in self.inbox.iterdir())


class Fetchmail(Client):
    """fetchmail with ``keep`` and ``uidl``: it remembers the UIDLs it has
    seen in its id file and fetches only others."""

    def __init__(self, workdir: Path, proxy: ProxyProcess, user: str) -> None:
        super().__init__(workdir)
        deliver = self.deliver
        self.rcfile = workdir / "fetchmailrc"
        self.rcfile.write_text(
            f"set no syslog\n"
            f"poll {proxy.host} service {proxy.ports['plain']} protocol pop3 uidl\n"
            f'  user "{user}@{MOVING}" password "{USERS[user]}" is "{user}" here\n'
            f'  keep\n  sslproto ""\n  mda "{deliver} {self.inbox}"\n'
        )
        self.rcfile.chmod(stat.S_IRUSR | stat.S_IWUSR)

    def run(self) -> None:
        result = subprocess.run(
            [
                "fetchmail",
                "-f",
                str(self.rcfile),
                "-i",
                str(self.state / "fetchids"),
                "--pidfile",
                str(self.state / "fetchmail.pid"),
                "--nodetach",
            ],
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            env={**os.environ, "HOME": str(self.state), "FETCHMAILHOME": str(self.state)},
        )
        # 0: mail fetched, 1: no mail; anything else is an error.
        assert result.returncode in (0, 1), result.stdout + result.stderr


class Getmail(Client):
    """getmail6 with ``delete = false`` and ``read_all = false``: it keeps the
    UIDLs it has seen in its ``oldmail`` file and fetches only others."""

    def __init__(self, workdir: Path, proxy: ProxyProcess, user: str) -> None:
        super().__init__(workdir)
        self.rcfile = workdir / "getmailrc"
        self.rcfile.write_text(
            "[retriever]\ntype = SimplePOP3Retriever\n"
            f"server = {proxy.host}\nport = {proxy.ports['plain']}\n"
            f"username = {user}@{MOVING}\npassword = {USERS[user]}\n"
            f"[destination]\ntype = MDA_external\npath = {self.deliver}\n"
            f'arguments = ("{self.inbox}",)\nallow_root_commands = true\n'
            "[options]\ndelete = false\nread_all = false\nverbose = 0\n"
        )

    def run(self) -> None:
        result = subprocess.run(
            ["getmail", "--getmaildir", str(self.state), "--rcfile", str(self.rcfile)],
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def _subject(path: Path) -> str:
    for line in path.read_bytes().decode(errors="replace").splitlines():
        if line.startswith("Subject: "):
            return line.removeprefix("Subject: ")
    return ""


CLIENTS = {"fetchmail": Fetchmail, "getmail6": Getmail}


def _require(program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")


def uidls_through(proxy: ProxyProcess, user: str) -> list[bytes]:
    with Pop3Wire(proxy.host, proxy.ports["plain"]) as session:
        session.login(f"{user}@{MOVING}", USERS[user])
        assert session.command("UIDL").startswith(b"+OK")
        body = session.read_multiline()
        session.command("QUIT")
    return [line.split()[1] for line in body.splitlines()[:-1]]


@pytest.mark.parametrize("client_name", sorted(CLIENTS))
def test_after_the_cutover_the_next_poll_fetches_only_new_mail_and_without_the_map_all(
    move: Move,
    tmp_path: Path,
    client_name: str,
):
    client_class: Callable[[Path, ProxyProcess, str], Client] = CLIENTS[client_name]
    _require("fetchmail" if client_name == "fetchmail" else "getmail")
    user = "alice"
    mail = [message(number) for number in range(1, 5)]
    move.deliver(user, mail, mail)
    client = client_class(tmp_path / "client", move.proxy, user)
    assert client.poll() == 4  # everything, from the old backend through the proxy
    assert client.poll() == 0  # kept on the server, and known by its UIDL

    credentials = ("--credentials", str(move.credentials))
    code, out, err = move.cli("map", f"{user}@{MOVING}", "--to", move.to, *credentials)
    assert code == 0, err
    assert "matched 4" in out
    code, _, err = move.cli("cutover", f"{user}@{MOVING}", "--to", move.to)
    assert code == 0, err
    move.new.deliver(user, [message(5, "arrived after the move")])
    old_uidls = uidls(move.old, user)
    wait_until(
        lambda: uidls_through(move.proxy, user)[:4] == old_uidls,
        10,
        message="the proxy shows the old UIDLs on the new backend",
    )
    # The client's memory of the first polls, to poll once more without the map.
    saved = tmp_path / "saved-state"
    shutil.copytree(client.state, saved)

    assert client.poll() == 1
    assert "arrived after the move" in client.subjects()
    assert move.old.message_count(user) == 4 and move.new.message_count(user) == 5

    code, _, err = move.cli("forget", f"{user}@{MOVING}")
    assert code == 0, err
    new_uidls = uidls(move.new, user)
    wait_until(
        lambda: uidls_through(move.proxy, user) == new_uidls,
        10,
        message="the proxy no longer translates",
    )
    shutil.rmtree(client.state)
    shutil.copytree(saved, client.state)
    assert client.poll() == 5  # without the map: every message again
