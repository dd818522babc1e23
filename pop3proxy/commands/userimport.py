"""``pop3proxy user import FILE --tenant T``: password hashes from another server.

Reads a Dovecot passwd-file (``user:{SCHEME}hash:uid:gid:...``, the fields
after the hash ignored) or a two-column ``user hash`` file, line by line, and
stores each hash in the user's record (:mod:`pop3proxy.legacyhashes` says
which schemes, and how they are kept). The proxy checks such a hash at login
and replaces it by argon2id on the first good one.

A user who already has a password keeps it unless ``--replace``: a second
import (a late sync from the old server) must not undo a password the user
changed since, nor the argon2id hash their first login made. With
``--replace`` a replaced user's sessions end, as after ``user set-password``.

The report names each line it could not read (number and reason, never the
hash), what it imported and what it skipped. Exit 1 when the file cannot be
read or no line of it can; ``--dry-run`` reads and reports, and stores nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pop3proxy.commands import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    configured_store,
    existing_tenant,
    load,
)
from pop3proxy.directory import DirectoryUnavailable, RedisStore, Store
from pop3proxy.legacyhashes import ACCEPTED_SCHEMES, UnreadableHash, parse_imported_hash
from pop3proxy.sessions import KickScope, kick
from pop3proxy.tenants import Identity, MalformedName, Tenant, UserName, one_word, split_user
from pop3proxy.userrecords import UserRecordsUnsupported

FILE_NAME_SEPARATOR = "@"
"""How passwd-files spell ``user@domain``, whatever the proxy's own separator."""
HASH_STARTS = ("{", "$")


@dataclass(frozen=True)
class ImportEntry:
    line: int
    user: Identity
    scheme: str
    stored: str = field(repr=False)
    """The hash as the user record keeps it: never in a repr."""


@dataclass(frozen=True)
class LineProblem:
    line: int
    reason: str
    """What is wrong, with the user name at most: never the hash."""


@dataclass(frozen=True)
class Skipped:
    line: int
    user: str
    reason: str


def register_import(
    user_commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> None:
    command = user_commands.add_parser(
        "import",
        parents=[common],
        help="import password hashes from a Dovecot passwd-file or a 'user hash' file",
    )
    command.add_argument(
        "file", type=Path, metavar="FILE", help="the file, or - for standard input"
    )
    command.add_argument("--tenant", required=True, help="the tenant the users belong to")
    command.add_argument("--dry-run", action="store_true", help="read and report, store nothing")
    command.add_argument(
        "--replace",
        action="store_true",
        help="overwrite the password of users who already have one (default: skip them)",
    )
    command.add_argument("--json", action="store_true", help="JSON report instead of text")
    command.set_defaults(handler=cmd_user_import)


def read_import_lines(
    lines: Iterable[bytes], tenant: Tenant, separator: str
) -> tuple[list[ImportEntry], list[LineProblem]]:
    """The entries of a passwd-file or two-column file for ``tenant``, and
    every line that could not be read. Blank lines and ``#`` comments are skipped."""
    entries: list[ImportEntry] = []
    problems: list[LineProblem] = []
    first_line: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            problems.append(LineProblem(number, "not UTF-8"))
            continue
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            entry = _read_line(number, text, tenant, separator)
        except ValueError as error:
            problems.append(LineProblem(number, str(error)))
            continue
        earlier = first_line.setdefault(entry.user.full, number)
        if earlier != number:
            problems.append(LineProblem(number, f"user {entry.user} already on line {earlier}"))
            continue
        entries.append(entry)
    return entries, problems


def _read_line(number: int, text: str, tenant: Tenant, separator: str) -> ImportEntry:
    """One line as an entry; raises ValueError with a reason that never holds the hash."""
    if ":" in text:
        name, _, rest = text.partition(":")
        hash_text = rest.partition(":")[0]
    else:
        columns = text.split()
        if len(columns) != 2:
            raise ValueError(
                "expected USER:{SCHEME}HASH:... (passwd-file) or USER HASH (two columns)"
            )
        name, hash_text = columns
    name = name.strip()
    if not name:
        raise ValueError("no user name")
    if name.startswith(HASH_STARTS):
        # Quoting it would print a hash: columns swapped, or a password first.
        raise ValueError("the user name looks like a hash (expected the user first)")
    if not one_word(name):
        raise ValueError("the user name has a space or control character")
    try:
        parsed = split_user(name, FILE_NAME_SEPARATOR, tenant.name)
    except MalformedName:
        raise ValueError(f"user name {name!r}: expected USER or USER@DOMAIN") from None
    if parsed.tenant != tenant.name:
        raise ValueError(f"user {name} belongs to {parsed.tenant}, not to tenant {tenant.name}")
    try:
        scheme, stored = parse_imported_hash(hash_text)
    except UnreadableHash as error:
        raise ValueError(f"user {name}: {error}") from None
    user = tenant.identity(UserName(parsed.full, parsed.local, parsed.tenant, separator))
    return ImportEntry(number, user, scheme, stored)


def cmd_user_import(args: argparse.Namespace) -> int:
    config = load(args)
    lines = _read_file(args.file)
    store = configured_store(args)
    if not isinstance(store, RedisStore):
        raise UserRecordsUnsupported()
    tenant = existing_tenant(store, args.tenant)
    entries, problems = read_import_lines(lines, tenant, config.tenancy.separator)
    if tenant.auth != "local":
        print(
            f"warning: tenant {tenant.name} uses auth: {tenant.auth}; the hashes are "
            "stored but not used until it switches to auth: local",
            file=sys.stderr,
        )
    imported: list[ImportEntry] = []
    skipped: list[Skipped] = []
    replaced: list[Identity] = []
    for entry in entries:
        if _has_password(store, tenant, entry.user):
            if not args.replace:
                reason = "already has a password (--replace overwrites it)"
                skipped.append(Skipped(entry.line, entry.user.full, reason))
                continue
            replaced.append(entry.user)
        imported.append(entry)
    ended = 0
    if not args.dry_run:
        for entry in imported:
            store.put_user_fields(tenant.name, entry.user.local, {"password_hash": entry.stored})
        if tenant.auth == "local":
            ended = _end_sessions(store, replaced)
    report = ImportReport(args.file, tenant.name, args.dry_run, imported, skipped, problems, ended)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        report.print_text()
    return EXIT_OK if entries else EXIT_FAILED


def _read_file(path: Path) -> list[bytes]:
    """The file's lines; ``-`` reads standard input (``kubectl exec -i``), so the
    hashes need not be copied onto a proxy's disk."""
    try:
        if str(path) == "-":
            return sys.stdin.buffer.read().splitlines()
        return path.read_bytes().splitlines()
    except OSError as error:
        raise CommandError(f"cannot read {path}: {error.strerror or error}") from None


def _has_password(store: Store, tenant: Tenant, user: Identity) -> bool:
    try:
        record = store.get_user(tenant.name, user.local)
    except DirectoryUnavailable as error:
        raise CommandError(str(error)) from None
    return bool(record and record.password_hash)


def _end_sessions(store: RedisStore, users: list[Identity]) -> int:
    """Sessions opened with a replaced password end on every replica, as
    after ``user set-password``."""
    reason = "password imported"
    return sum(
        kick(store.client, store.prefix, KickScope("user", user.full), reason).ended
        for user in users
    )


@dataclass(frozen=True)
class ImportReport:
    file: Path
    tenant: str
    dry_run: bool
    imported: list[ImportEntry]
    skipped: list[Skipped]
    unreadable: list[LineProblem]
    sessions_ended: int

    def schemes(self) -> dict[str, int]:
        counts = Counter(entry.scheme for entry in self.imported)
        return {scheme: counts[scheme] for scheme in ACCEPTED_SCHEMES if counts[scheme]}

    def as_json(self) -> dict:
        return {
            "file": str(self.file),
            "tenant": self.tenant,
            "dry_run": self.dry_run,
            "imported": [
                {"line": e.line, "user": e.user.full, "scheme": e.scheme} for e in self.imported
            ],
            "schemes": self.schemes(),
            "skipped": [asdict(skipped) for skipped in self.skipped],
            "unreadable": [asdict(problem) for problem in self.unreadable],
            "sessions_ended": self.sessions_ended,
        }

    def print_text(self) -> None:
        for problem in self.unreadable:
            print(f"{self.file}: line {problem.line}: {problem.reason}", file=sys.stderr)
        for skipped in self.skipped:
            print(f"{self.file}: line {skipped.line}: {skipped.user} skipped: {skipped.reason}")
        if not self.imported and not self.skipped:
            print(f"nothing imported: no line of {self.file} could be read", file=sys.stderr)
            return
        verb = "would import" if self.dry_run else "imported"
        schemes = ", ".join(f"{scheme} {count}" for scheme, count in self.schemes().items())
        print(
            f"{verb} {len(self.imported)} user(s) into {self.tenant}"
            + (f" ({schemes})" if schemes else "")
            + f"; {len(self.skipped)} skipped, {len(self.unreadable)} line(s) not read"
            + ("; dry run: nothing stored" if self.dry_run else "")
        )
        if self.sessions_ended:
            print(f"{self.sessions_ended} session(s) of replaced users ended")
