"""A private Dovecot 2.3 POP3 server: the real backend the proxy talks to.

Everything lives in one temporary directory the harness creates (config,
``base_dir``, state, passwd-file, Maildirs, log), so the system Dovecot is
never touched. Dovecot runs in the foreground (``-F``) as our child, in its own
process group, so ``stop()`` can wait for every Dovecot process to exit.

Running as root (CI) has three traps, all handled here:

* Dovecot refuses mail access as root ("Mail access not allowed for root"),
  whatever ``first_valid_uid`` says. Mail processes therefore run as the
  ``dovecot`` user, ``first_valid_uid`` is lowered to its uid, and every file
  the harness writes into a Maildir is chowned to it.
* The auth and mail processes drop privileges, so every directory on the way
  to the passwd-file and the Maildirs must be traversable by that user. Pytest's
  ``/tmp/pytest-of-root`` is mode 0700, so the harness makes its own 0755
  directory under the system temp directory instead of using ``tmp_path``.
* Login processes run as ``dovenull`` chrooted into ``base_dir/login``.

As a normal user every service runs as that user, without chroot.
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import process
from .certs import Certs
from .ports import LOOPBACK, free_port, wait_until

START_TIMEOUT = 15.0


@dataclass(frozen=True)
class Identity:
    """Which system users the Dovecot services run as."""

    login_user: str
    internal_user: str
    internal_group: str
    mail_user: str
    mail_uid: int
    mail_gid: int
    chroot_login: bool


def identity(mail_user: str | None = None) -> Identity:
    """Pick service users that work for the current effective uid (see module doc)."""
    if os.geteuid() == 0:
        mail = pwd.getpwnam(mail_user or "dovecot")
        return Identity(
            login_user="dovenull",
            internal_user="dovecot",
            internal_group="dovecot",
            mail_user=mail.pw_name,
            mail_uid=mail.pw_uid,
            mail_gid=mail.pw_gid,
            chroot_login=True,
        )
    me = pwd.getpwuid(os.geteuid())
    return Identity(
        login_user=me.pw_name,
        internal_user=me.pw_name,
        internal_group=grp.getgrgid(os.getegid()).gr_name,
        mail_user=me.pw_name,
        mail_uid=me.pw_uid,
        mail_gid=os.getegid(),
        chroot_login=False,
    )


def _passwd_lines(users: Mapping[str, str]) -> str:
    for name, password in users.items():
        if ":" in name or ":" in password or "\n" in name + password:
            raise ValueError(f"user {name!r}: ':' and newlines cannot go in a passwd-file")
    return "".join(f"{name}:{{PLAIN}}{password}::::::\n" for name, password in users.items())


class Dovecot(process.ServerProcess):
    """One Dovecot instance serving POP3 (and POP3S/STLS when given certificates).

    Args:
        users: ``{name: password}`` for the passwd-file passdb and userdb.
        certs: enables ``ssl = yes``, STLS on :attr:`port` and a POP3S listener
            on :attr:`pop3s_port`. Without it, ``ssl = no`` and no POP3S.
        login_trusted_networks: networks allowed to send XCLIENT (the proxy's
            client-IP forwarding), for example ``"127.0.0.0/8"``. Default none.
        master_users: ``{name: password}`` of master users: log in as
            ``user*master`` with the master's password.
        haproxy_port: add a listener on :attr:`haproxy_port` that expects a
            PROXY protocol header from 127.0.0.0/8.
        mail_user: (root only) the system user mail processes run as.
        username_format: Dovecot's ``auth_username_format``; ``"%u"`` makes user
            names case-sensitive (Dovecot's default, ``%Lu``, lower-cases them).
        uidl_format: Dovecot's ``pop3_uidl_format``. Two servers with different
            formats give the same messages different UIDLs (a mailbox move).
    """

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        certs: Certs | None = None,
        login_trusted_networks: str = "",
        master_users: Mapping[str, str] | None = None,
        haproxy_port: bool = False,
        mail_user: str | None = None,
        username_format: str | None = None,
        uidl_format: str = "%08Xu%08Xv",
        binary: str = "dovecot",
    ) -> None:
        self.username_format = username_format
        self.uidl_format = uidl_format
        self.users = dict(users)
        self.certs = certs
        self.login_trusted_networks = login_trusted_networks
        self.master_users = dict(master_users or {})
        self.binary = binary
        self.identity = identity(mail_user)
        self.host = LOOPBACK
        self.port = free_port()
        self.pop3s_port: int | None = free_port() if certs else None
        self.haproxy_port: int | None = free_port() if haproxy_port else None

        self.root = Path(tempfile.mkdtemp(prefix="pop3proxy-dovecot-"))
        # Removed by close(), or at the latest when the object is collected or
        # the interpreter exits, so a forgotten close() leaves no directory.
        self._remove_files = weakref.finalize(self, shutil.rmtree, self.root, True)
        self.root.chmod(0o755)  # traversable by the auth and mail users
        self.config_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self.output_path = self.root / "dovecot.out"  # stderr: start-up errors
        self.mail_root = self.root / "mail"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Write the configuration, start Dovecot, return once it greets ``+OK``."""
        if self.running:
            return
        self._write_files()
        argv = [self.binary, "-F", "-c", str(self.config_path)]
        self._proc = process.spawn(argv, self.output_path)
        try:
            wait_until(self._ready, START_TIMEOUT, message=f"Dovecot greeting on port {self.port}")
        except BaseException:
            self.stop()  # a failed start must not leave a half-started Dovecot behind
            raise

    def _ready(self) -> bool:
        proc = self._proc
        assert proc is not None
        if proc.poll() is not None:
            raise RuntimeError(
                f"dovecot exited with {proc.returncode}:\n"
                f"{self.output_path.read_text(errors='replace')}\n{self.read_log()[-2000:]}"
            )
        return greeting(self.host, self.port).startswith(b"+OK")

    # -- logs ----------------------------------------------------------------

    def log_mark(self) -> int:
        """The log's current length: pass it as ``since`` to see only newer lines."""
        return len(self.read_log())

    def wait_for_log(self, pattern: str, timeout: float = 5.0, since: int = 0) -> re.Match[str]:
        """Wait until the log after offset ``since`` matches ``pattern``; return the match.

        Dovecot logs a session's end ("Disconnected: ...") after the client is
        gone, so this is how a test knows a session is really over.
        """
        regex = re.compile(pattern)
        return wait_until(
            lambda: regex.search(self.read_log(), since),
            timeout,
            interval=0.02,
            message=f"Dovecot log line matching {pattern!r}",
        )

    # -- configuration -------------------------------------------------------

    def _write_files(self) -> None:
        for sub in ("run", "state"):
            (self.root / sub).mkdir(exist_ok=True)
        self.mail_root.mkdir(exist_ok=True)
        self._give_to_mail_user(self.mail_root)
        (self.root / "passwd").write_text(_passwd_lines(self.users))
        if self.master_users:
            (self.root / "master-users").write_text(_passwd_lines(self.master_users))
        self.config_path.write_text(self.render_config())

    def render_config(self) -> str:
        """The complete dovecot.conf; nothing from /etc/dovecot is included."""
        ident = self.identity
        root = self.root
        lines = [
            f"base_dir = {root}/run",
            f"state_dir = {root}/state",
            f"instance_name = pop3proxy-test-{self.port}",
            "protocols = pop3",
            f"listen = {self.host}",
            f"log_path = {self.log_path}",
            f"info_log_path = {self.log_path}",
            "auth_verbose = yes",
            f"default_login_user = {ident.login_user}",
            f"default_internal_user = {ident.internal_user}",
            f"default_internal_group = {ident.internal_group}",
            f"mail_uid = {ident.mail_uid}",
            f"mail_gid = {ident.mail_gid}",
            f"first_valid_uid = {min(ident.mail_uid, 500)}",
            "last_valid_uid = 0",
            f"mail_location = maildir:{self.mail_root}/%u",
            f"pop3_uidl_format = {self.uidl_format}",
            "disable_plaintext_auth = no",
            "auth_mechanisms = plain login",
            # A failed login would otherwise slow every later login from
            # 127.0.0.1 by 2 s and more (failure delay, then anvil's penalty).
            "auth_failure_delay = 0",
            f"login_trusted_networks = {self.login_trusted_networks}",
            *([f"auth_username_format = {self.username_format}"] if self.username_format else []),
            *self._ssl_lines(),
            *self._auth_lines(),
            *self._service_lines(),
        ]
        return "\n".join(lines) + "\n"

    def _ssl_lines(self) -> list[str]:
        if self.certs is None:
            return ["ssl = no"]
        return [
            "ssl = yes",
            f"ssl_cert = <{self.certs.cert_file}",
            f"ssl_key = <{self.certs.key_file}",
        ]

    def _auth_lines(self) -> list[str]:
        passwd = self.root / "passwd"
        lines = []
        if self.master_users:
            lines += [
                "auth_master_user_separator = *",
                "passdb {",
                "  driver = passwd-file",
                f"  args = {self.root / 'master-users'}",
                "  master = yes",
                # Then look the target user up, so a master cannot log in as nobody.
                "  result_success = continue",
                "}",
            ]
        lines += [
            "passdb {",
            "  driver = passwd-file",
            f"  args = {passwd}",
            "}",
            "userdb {",
            "  driver = passwd-file",
            f"  args = {passwd}",
            "}",
        ]
        return lines

    def _service_lines(self) -> list[str]:
        # Non-root: services can neither chroot nor switch users.
        no_chroot = [] if self.identity.chroot_login else ["  chroot ="]
        lines = ["service pop3-login {", *no_chroot]
        lines += _listener("pop3", self.port)
        lines += _listener("pop3s", self.pop3s_port or 0, ssl=True)
        if self.haproxy_port is not None:
            lines += _listener("pop3_haproxy", self.haproxy_port, haproxy=True)
        lines += [
            "}",
            "service anvil {",
            *no_chroot,
            "  unix_listener anvil-auth-penalty {",
            "    mode = 0",  # the documented way to turn auth penalty off
            "  }",
            "}",
        ]
        if self.haproxy_port is not None:
            lines.append("haproxy_trusted_networks = 127.0.0.0/8")
        if not self.identity.chroot_login:
            lines += ["service auth-worker {", f"  user = {self.identity.internal_user}", "}"]
        return lines

    # -- mailboxes -----------------------------------------------------------

    def maildir(self, user: str) -> Path:
        return self.mail_root / user

    def deliver(self, user: str, messages: Iterable[bytes]) -> list[Path]:
        """Add messages to ``user``'s Maildir ``new/``, in order; return their paths.

        Bytes are written as given: Maildir files normally use LF line endings
        and Dovecot converts them to CRLF on the wire. Each file is written in
        ``tmp/`` and renamed into ``new/`` (the Maildir protocol), and file
        names carry strictly increasing timestamps, which is the order Dovecot
        gives new messages their UIDs (and so their POP3 message numbers).
        """
        box = self.maildir(user)
        for sub in ("tmp", "new", "cur"):
            (box / sub).mkdir(parents=True, exist_ok=True)
        paths = []
        for message in messages:
            name = _unique_name()
            tmp = box / "tmp" / name
            tmp.write_bytes(message)
            self._give_to_mail_user(tmp)
            path = box / "new" / name
            tmp.rename(path)
            paths.append(path)
        self._give_to_mail_user(box, recursive=True)
        return paths

    def reset_mailbox(self, user: str, messages: Iterable[bytes]) -> list[Path]:
        """Wipe ``user``'s Maildir (messages, indexes, UID list) and deliver ``messages``.

        Waits (briefly) for the user's sessions of earlier tests to end first:
        one still closing would write its UID list into the fresh Maildir.
        """
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self.open_sessions(user) <= 0, 5.0, message="sessions end")
        shutil.rmtree(self.maildir(user), ignore_errors=True)
        return self.deliver(user, messages)

    def open_sessions(self, user: str, since: int = 0) -> int:
        """Sessions of ``user`` that logged in and have not ended, from the log
        after offset ``since`` (a :meth:`log_mark`: the Dovecot is shared, and
        an earlier test's session may still be closing)."""
        log = self.read_log()[since:]
        logins = log.count(f"Login: user=<{user}>")
        ended = len(re.findall(rf"pop3\({re.escape(user)}\)<[^>]*><[^>]*>: \w+: Disconnected", log))
        return logins - ended

    def message_files(self, user: str) -> list[Path]:
        """Message files in ``new/`` and ``cur/`` (Dovecot moves read ones to cur)."""
        dirs = [self.maildir(user) / sub for sub in ("new", "cur")]
        return sorted(path for d in dirs if d.is_dir() for path in d.iterdir())

    def message_count(self, user: str) -> int:
        return len(self.message_files(user))

    def _give_to_mail_user(self, path: Path, recursive: bool = False) -> None:
        if os.geteuid() != 0:
            return
        uid, gid = self.identity.mail_uid, self.identity.mail_gid
        os.chown(path, uid, gid)
        if recursive:
            for parent, dirs, files in os.walk(path):
                for name in dirs + files:
                    # A session of the previous test may still be ending and
                    # remove its dovecot-uidlist.lock between walk and chown.
                    with contextlib.suppress(FileNotFoundError):
                        os.chown(os.path.join(parent, name), uid, gid)


def _listener(name: str, port: int, *, ssl: bool = False, haproxy: bool = False) -> list[str]:
    lines = [f"  inet_listener {name} {{", f"    port = {port}"]
    if ssl:
        lines.append("    ssl = yes")
    if haproxy:
        lines.append("    haproxy = yes")
    return [*lines, "  }"]


_sequence = itertools.count()
_last_usecs = 0


def _unique_name() -> str:
    """A Maildir file name with a strictly increasing ``<secs>.M<usecs>`` timestamp."""
    global _last_usecs
    _last_usecs = max(time.time_ns() // 1000, _last_usecs + 1)
    secs, usecs = divmod(_last_usecs, 1_000_000)
    return f"{secs}.M{usecs}P{os.getpid()}Q{next(_sequence)}.pop3proxy-harness"


def greeting(host: str, port: int, context: ssl.SSLContext | None = None) -> bytes:
    """The first line a POP3 server sends (b"" if it cannot be read now)."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as raw:
            sock = context.wrap_socket(raw, server_hostname=host) if context else raw
            with sock.makefile("rb") as stream:
                return stream.readline(512)
    except OSError:
        return b""
