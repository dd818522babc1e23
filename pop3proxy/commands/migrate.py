"""``pop3proxy migrate ...``: move mailboxes to another backend without re-downloads.

``migrate map`` reads the user's mailbox on its current backend and on the
new one (``--to``), pairs the messages by size and a digest of their headers,
and stores the new backend's UIDL -> old UIDL map (:mod:`pop3proxy.migration`).
``migrate verify`` compares what a client sees now with what it would see on
the new backend through the map. ``migrate cutover`` moves logins to the new
backend: new logins wait, the user is pinned, the old sessions are kicked
(no QUIT: nothing deleted), the wait is lifted. ``migrate rollback`` undoes
the pin the same way; ``migrate forget`` removes maps.

The mailboxes are read with the tenant's master credentials (``auth:
local``), or with a per-run credentials file (``--credentials``, a YAML or
JSON mapping ``USER@TENANT: password``) for tenants without them.

Exit codes: 0 done, 1 a user failed (or verify found a difference), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import redis
import yaml

from pop3proxy.backends import ONLINE, read_states, try_order
from pop3proxy.commands import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    existing_tenant,
    load,
    log_action,
    redis_store,
    usage,
    user_name,
)
from pop3proxy.delays import PROPAGATION_SECONDS, WAIT, lift_delay, set_delay
from pop3proxy.directory import Directory, RedisStore
from pop3proxy.mailboxreader import Mailbox, MailboxError
from pop3proxy.migration import (
    MAP_LIFETIME_DAYS,
    MapInfo,
    forget_map,
    match,
    read_index,
    read_map,
    remove_expired,
    store_map,
    update_info,
)
from pop3proxy.routing import Rotation
from pop3proxy.sessions import KickScope, kick
from pop3proxy.tenants import (
    Backend,
    Identity,
    MasterPasswordMissing,
    Tenant,
    parse_backend_address,
)

DEFAULT_WORKERS = 4
"""Users read at once: each holds one connection, to the old or the new backend."""
DEFAULT_TIMEOUT = 30.0
"""Seconds to connect to a backend, and for each of its replies."""
CUTOVER_BATCH = 50
"""Users switched together: one wait for the delay to reach every replica serves them all."""
CUTOVER_HOLD = 15.0
"""Seconds a switch's wait delay lasts at most (a batch takes the delay's
propagation and a kick round trip per user). Short enough that a waiting
login fits in ``timeouts.auth``, and that logins stop waiting by themselves
if the command dies half-way."""


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    migrate = commands.add_parser(
        "migrate", help="move mailboxes to another backend without re-downloads"
    )
    actions = migrate.add_subparsers(title="migrate commands", metavar="ACTION")
    migrate.set_defaults(handler=lambda args: usage(migrate))

    mapping = actions.add_parser(
        "map", parents=[common], help="match old and new mailboxes, store the UIDL map"
    )
    _add_scope(mapping)
    mapping.add_argument("--to", required=True, metavar="HOST:PORT", help="the new backend")
    mapping.add_argument("--dry-run", action="store_true", help="report only, store nothing")
    mapping.add_argument("--json", action="store_true", help="one JSON document")
    _add_reading(mapping)
    mapping.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"users read at once, one connection each (default {DEFAULT_WORKERS})",
    )
    mapping.add_argument(
        "--expires",
        type=float,
        default=MAP_LIFETIME_DAYS,
        metavar="DAYS",
        help=f"lifetime of the stored maps (default {MAP_LIFETIME_DAYS} days)",
    )
    mapping.set_defaults(handler=cmd_map)

    verify = actions.add_parser(
        "verify", parents=[common], help="compare a user's mailbox now and through the map"
    )
    verify.add_argument("user", metavar="USER@TENANT")
    verify.add_argument("--json", action="store_true", help="one JSON document")
    _add_reading(verify)
    verify.set_defaults(handler=cmd_verify)

    cutover = actions.add_parser(
        "cutover", parents=[common], help="move logins to the new backend (pin, kick)"
    )
    _add_scope(cutover)
    cutover.add_argument("--to", required=True, metavar="HOST:PORT", help="the new backend")
    cutover.set_defaults(handler=cmd_cutover)

    rollback = actions.add_parser(
        "rollback", parents=[common], help="undo a cutover's pin (the map stays)"
    )
    _add_scope(rollback)
    rollback.set_defaults(handler=cmd_rollback)

    forget = actions.add_parser("forget", parents=[common], help="remove UIDL maps")
    _add_scope(forget)
    forget.set_defaults(handler=cmd_forget)


def _add_scope(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", nargs="?", metavar="USER@TENANT")
    parser.add_argument("--tenant", metavar="T", help="every user of the tenant")


def _add_reading(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE",
        help="YAML/JSON mapping USER@TENANT: password, for tenants without master credentials",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"to connect to a backend and for each reply (default {DEFAULT_TIMEOUT:g})",
    )


# -- who and where -------------------------------------------------------------


class Context:
    """What every action needs: configuration, store, directory, Redis."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = load(args)
        self.store: RedisStore = redis_store(args)
        self.prefix = self.store.prefix
        self.client = self.store.client
        self.directory = Directory(self.store, self.config.directory)

    def tenant_and_users(self, from_index: bool = False) -> tuple[Tenant, list[Identity]]:
        """The scope: one ``USER@TENANT``, or ``--tenant``'s users (those with
        a map when ``from_index``, else those of the credentials file or the
        tenant's user records)."""
        args = self.args
        tenant_name: str | None = getattr(args, "tenant", None)
        if bool(args.user) == bool(tenant_name):
            raise CommandError("give either USER@TENANT or --tenant T", EXIT_USAGE)
        if args.user:
            name = user_name(args.user, self.config.tenancy)
            tenant = existing_tenant(self.store, name.tenant or "")
            return tenant, [tenant.identity(name)]
        tenant = existing_tenant(self.store, tenant_name or "")
        separator = self.config.tenancy.separator
        if from_index:
            index = self.index()
            suffix = separator + tenant.name
            locals_ = [user.removesuffix(suffix) for user in index if user.endswith(suffix)]
        elif getattr(args, "credentials", None):
            locals_ = [
                identity.local
                for identity in self.credentials(tenant)
                if identity.tenant == tenant.name
            ]
        else:
            locals_ = list(self.store.user_locals(tenant.name))
        users = sorted({tenant.canonical_local(local) for local in locals_})
        return tenant, [Identity(local, tenant.name, separator) for local in users]

    def credentials(self, tenant: Tenant) -> dict[Identity, bytes]:
        """The ``--credentials`` file: user -> password (never printed)."""
        path: Path | None = self.args.credentials
        if path is None:
            return {}
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise CommandError(f"--credentials {path}: {error.strerror}", EXIT_USAGE) from None
        except yaml.YAMLError:
            raise CommandError(
                f"--credentials {path}: not YAML or JSON (expected USER@TENANT: password)",
                EXIT_USAGE,
            ) from None
        if not isinstance(data, dict):
            raise CommandError(
                f"--credentials {path}: expected a mapping USER@TENANT: password", EXIT_USAGE
            )
        passwords = {}
        for key, value in data.items():
            if not isinstance(key, str) or not isinstance(value, str | int):
                raise CommandError(
                    f"--credentials {path}: entry {str(key)[:80]!r}: expected "
                    "USER@TENANT: password",
                    EXIT_USAGE,
                )
            name = user_name(key, self.config.tenancy)
            if name.tenant == tenant.name:
                passwords[tenant.identity(name)] = str(value).encode()
        return passwords

    def backend(self, tenant: Tenant, text: str, option: str = "--to") -> Backend:
        """The tenant's backend entry for ``HOST:PORT`` (its TLS settings with it)."""
        try:
            target = parse_backend_address(text)
        except ValueError as error:
            raise CommandError(f"{option}: {error}", EXIT_USAGE) from None
        wanted = f"{target['host']}:{target['port']}"
        for backend in tenant.backends:
            if backend.address.replace("[", "").replace("]", "") == wanted:
                return backend
        addresses = ", ".join(backend.address for backend in tenant.backends)
        raise CommandError(
            f"{option} {text} is not a backend of tenant {tenant.name} ({addresses}); "
            "add it to the tenant first (pop3proxy tenant set)",
            EXIT_USAGE,
        )

    def current_backend(self, tenant: Tenant, user: Identity, other_than: str) -> Backend | None:
        """Where a login of ``user`` goes now, leaving ``other_than`` (the new backend) out."""
        pin = self.directory.pinned_backend(tenant, user.local)
        states = read_states(self.client, self.prefix)
        order = try_order(tenant, user.full, Rotation(), pin, lambda a: states.get(a, ONLINE))
        return next((backend for backend in order if backend.address != other_than), None)

    def index(self) -> dict[str, MapInfo]:
        return read_index(self.client, self.prefix)

    def login_for(
        self, tenant: Tenant, user: Identity, passwords: dict[Identity, bytes]
    ) -> tuple[str, bytes]:
        """The backend login name and password: the master's, or the file's."""
        if tenant.auth == "local":
            try:
                return tenant.backend_login(user), tenant.master_password()
            except MasterPasswordMissing as error:
                raise CommandError(f"tenant {tenant.name}: master password: {error}") from None
        password = passwords.get(user)
        if password is None:
            raise MailboxError(
                "no password: the tenant has no master credentials and --credentials "
                "has no entry for this user"
            )
        return tenant.backend_login(user), password


# -- map -----------------------------------------------------------------------


def cmd_map(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.timeout <= 0 or args.expires <= 0:
        raise CommandError("--workers, --timeout and --expires must be positive", EXIT_USAGE)
    context = Context(args)
    tenant, users = context.tenant_and_users()
    new = context.backend(tenant, args.to)
    passwords = context.credentials(tenant)
    if not users:
        raise CommandError(
            f"tenant {tenant.name}: no users to map (give --credentials, or user records)"
        )
    started = time.monotonic()
    reports = []
    progress = Progress(len(users), quiet=len(users) == 1)
    pool = gevent.pool.Pool(args.workers)
    for report in pool.imap_unordered(
        lambda user: _map_user(context, tenant, user, new, passwords), users
    ):
        reports.append(report)
        progress.done(failed="error" in report)
    progress.finish()
    reports.sort(key=lambda report: report["user"])
    if not args.dry_run:
        remove_expired(context.client, context.prefix)
    totals = _totals(reports)
    totals["seconds"] = round(time.monotonic() - started, 3)
    failed = sum(1 for report in reports if "error" in report)
    _log_action(
        "uidl maps stored" if not args.dry_run else "uidl maps dry run",
        "migrate_map",
        tenant.name,
        args.user,
        count=len(reports) - failed,
        failed=failed,
        backend=new.address,
        dry_run=args.dry_run,
    )
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "users": reports, "totals": totals}, indent=2))
    else:
        for report in reports:
            print(_report_line(report, args.dry_run))
        if len(reports) > 1:
            print(
                f"{len(reports)} user(s), {failed} failed, {totals['matched']} matched, "
                f"{totals['ambiguous']} ambiguous, {totals['unmatched_old']} unmatched old, "
                f"{totals['unmatched_new']} unmatched new, {totals['seconds']:.1f} s"
            )
    return EXIT_FAILED if failed else EXIT_OK


def _map_user(
    context: Context,
    tenant: Tenant,
    user: Identity,
    new: Backend,
    passwords: dict[Identity, bytes],
) -> dict[str, Any]:
    """One user: read both mailboxes, match, store (unless a dry run). Never raises
    for the user's own trouble: the report says what went wrong."""
    args = context.args
    report: dict[str, Any] = {"user": user.full, "new_backend": new.address}
    try:
        old = context.current_backend(tenant, user, new.address)
        if old is None:
            raise MailboxError(f"no backend other than {new.address} takes this user's logins")
        report["old_backend"] = old.address
        login, password = context.login_for(tenant, user, passwords)
        with Mailbox(old, login, password, args.timeout) as mailbox:
            old_messages = mailbox.messages()
        with Mailbox(new, login, password, args.timeout) as mailbox:
            new_messages = mailbox.messages()
    except MailboxError as error:
        report["error"] = str(error)
        return report
    matching = match(old_messages, new_messages)
    report.update(matching.report())
    report["stored"] = False
    if not args.dry_run:
        now = time.time()
        info = MapInfo(
            backend=new.address,
            expires=now + args.expires * 86400,
            entries=len(matching.uidl_map),
            created=now,
            old_backend=old.address,
        )
        try:
            store_map(context.client, context.prefix, user.full, matching.uidl_map, info)
        except (redis.RedisError, OSError) as error:
            report["error"] = f"redis: {error}"
            return report
        report["stored"] = True
    return report


def _report_line(report: dict[str, Any], dry_run: bool) -> str:
    if "error" in report:
        return f"{report['user']}: FAILED: {report['error']}"
    order = "order preserved" if report["order_preserved"] else "ORDER CHANGED"
    stored = "not stored (dry run)" if dry_run else "stored"
    return (
        f"{report['user']}: old {report['old']}, new {report['new']}, "
        f"matched {report['matched']}, ambiguous {report['ambiguous']}, "
        f"unmatched old {report['unmatched_old']}, unmatched new {report['unmatched_new']}, "
        f"{order}; {stored}"
    )


def _totals(reports: Iterable[dict[str, Any]]) -> dict[str, Any]:
    keys = ("old", "new", "matched", "ambiguous", "unmatched_old", "unmatched_new")
    totals: dict[str, Any] = dict.fromkeys(keys, 0)
    for report in reports:
        for key in keys:
            totals[key] += report.get(key, 0)
    return totals


class Progress:
    """``mapped N/M users`` on stderr, at most once a second, for long runs."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet = total, quiet
        self.count = self.failed = 0
        self.started = self.shown = time.monotonic()

    def done(self, failed: bool) -> None:
        self.count += 1
        self.failed += failed
        now = time.monotonic()
        if not self.quiet and now - self.shown >= 1.0:
            self.shown = now
            self._show(now)

    def finish(self) -> None:
        if not self.quiet:
            self._show(time.monotonic())

    def _show(self, now: float) -> None:
        print(
            f"mapped {self.count}/{self.total} users ({self.failed} failed), "
            f"{now - self.started:.1f} s",
            file=sys.stderr,
        )


# -- verify --------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    context = Context(args)
    tenant, (user,) = context.tenant_and_users()
    info = context.index().get(user.full)
    if info is None or not info.live(time.time()):
        raise CommandError(f"no UIDL map for {user}: run pop3proxy migrate map first")
    new = context.backend(tenant, info.backend, option="the map's backend")
    old = _old_backend(context, tenant, user, info)
    passwords = context.credentials(tenant)
    uidl_map = read_map(context.client, context.prefix, user.full)
    try:
        login, password = context.login_for(tenant, user, passwords)
        with Mailbox(old, login, password, args.timeout) as mailbox:
            before = mailbox.listing()
        with Mailbox(new, login, password, args.timeout) as mailbox:
            after = [(uidl_map.get(uidl, uidl), size) for uidl, size in mailbox.listing()]
    except MailboxError as error:
        raise CommandError(f"{user}: {error}") from None
    result = compare(before, after)
    result.update(user=user.full, old_backend=old.address, new_backend=new.address)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_verify_text(result))
    return EXIT_OK if result["same"] else EXIT_FAILED


def _old_backend(context: Context, tenant: Tenant, user: Identity, info: MapInfo) -> Backend:
    """Where the mailbox came from: as the map says, else the current route."""
    if info.old_backend:
        for backend in tenant.backends:
            if backend.address == info.old_backend:
                return backend
    old = context.current_backend(tenant, user, info.backend)
    if old is None:
        raise CommandError(f"{user}: the map's old backend is no longer one of the tenant's")
    return old


def compare(before: list[tuple[bytes, int]], after: list[tuple[bytes, int]]) -> dict[str, Any]:
    """What a client sees now vs after the move: UIDLs it would miss, new
    UIDLs it would fetch, sizes that changed, and whether the order holds."""
    now, later = dict(before), dict(after)
    missing = [uidl for uidl, _ in before if uidl not in later]
    extra = [uidl for uidl, _ in after if uidl not in now]
    resized = [uidl for uidl, size in after if uidl in now and now[uidl] != size]
    common_before = [uidl for uidl, _ in before if uidl in later]
    common_after = [uidl for uidl, _ in after if uidl in now]
    order_kept = common_before == common_after
    same = not missing and not extra and not resized and order_kept
    return {
        "same": same,
        "messages_now": len(before),
        "messages_after": len(after),
        "missing": [uidl.decode(errors="replace") for uidl in missing],
        "extra": [uidl.decode(errors="replace") for uidl in extra],
        "size_differs": [uidl.decode(errors="replace") for uidl in resized],
        "order_preserved": order_kept,
    }


def _verify_text(result: dict[str, Any]) -> str:
    lines = [
        f"{result['user']}: {result['messages_now']} message(s) on {result['old_backend']}, "
        f"{result['messages_after']} on {result['new_backend']} through the map"
    ]
    for key, title in (
        ("missing", "not seen after the move"),
        ("extra", "new to clients after the move (fetched again)"),
        ("size_differs", "size differs"),
    ):
        if result[key]:
            shown = ", ".join(result[key][:10]) + (" ..." if len(result[key]) > 10 else "")
            lines.append(f"  {len(result[key])} {title}: {shown}")
    if not result["order_preserved"]:
        lines.append("  the order of the messages differs")
    lines.append("same" if result["same"] else "DIFFERENT")
    return "\n".join(lines)


# -- cutover and rollback --------------------------------------------------------


def cmd_cutover(args: argparse.Namespace) -> int:
    context = Context(args)
    tenant, users = context.tenant_and_users(from_index=bool(args.tenant))
    new = context.backend(tenant, args.to)
    index = context.index()
    now = time.time()
    without = [
        user.full
        for user in users
        if not (user.full in index and index[user.full].live(now))
        or index[user.full].backend != new.address
    ]
    if without and args.user:
        raise CommandError(
            f"no UIDL map for {args.user} to {new.address}: run pop3proxy migrate map first "
            "(without it, its clients would download every message again)"
        )
    movers = [user for user in users if user.full not in without]
    if not movers:
        raise CommandError(f"tenant {tenant.name}: no user has a UIDL map to {new.address}")
    pins = {}
    for user in movers:
        record = context.store.get_user(user.tenant, user.local)
        pins[user] = record.backend if record is not None else None
    kicked = _switch(context, movers, lambda user: new.address, "migrate cutover")
    for user in movers:
        info = index[user.full]
        previous = info.previous_pin if info.cutover is not None else pins[user]
        update_info(
            context.client,
            context.prefix,
            user.full,
            replace(info, previous_pin=previous, cutover=time.time()),
        )
    _log_action(
        "migrate cutover",
        "migrate_cutover",
        tenant.name,
        args.user,
        count=len(movers),
        sessions=kicked,
        backend=new.address,
    )
    print(
        f"{len(movers)} user(s) pinned to {new.address}, {kicked} session(s) ended"
        + (f"; {len(without)} user(s) without a map left alone" if without else "")
    )
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    context = Context(args)
    tenant, users = context.tenant_and_users(from_index=bool(args.tenant))
    index = context.index()
    moved = [user for user in users if user.full in index and index[user.full].cutover]
    if not moved:
        raise CommandError(f"no user of {args.user or tenant.name} was cut over")
    kicked = _switch(context, moved, lambda user: index[user.full].previous_pin, "migrate rollback")
    for user in moved:
        info = index[user.full]
        rolled_back = replace(info, cutover=None, previous_pin=None)
        update_info(context.client, context.prefix, user.full, rolled_back)
    _log_action(
        "migrate rollback",
        "migrate_rollback",
        tenant.name,
        args.user,
        count=len(moved),
        sessions=kicked,
    )
    print(f"{len(moved)} user(s) back on their previous route, {kicked} session(s) ended")
    return EXIT_OK


def _switch(
    context: Context, users: list[Identity], pin_of: Callable[[Identity], str | None], reason: str
) -> int:
    """Move ``users``' logins to another route without a client seeing a gap:
    new logins wait, the pins change, the running sessions end (without QUIT:
    nothing is deleted), the wait is lifted. Returns how many sessions ended."""
    kicked = 0
    for start in range(0, len(users), CUTOVER_BATCH):
        kicked += _switch_batch(context, users[start : start + CUTOVER_BATCH], pin_of, reason)
    return kicked


def _switch_batch(
    context: Context, users: list[Identity], pin_of: Callable[[Identity], str | None], reason: str
) -> int:
    client, prefix = context.client, context.prefix
    until = time.time() + CUTOVER_HOLD
    kicked = 0
    try:
        for user in users:
            set_delay(client, prefix, "user", user.full, until, WAIT, reason)
        gevent.sleep(PROPAGATION_SECONDS)
        for user in users:
            context.store.put_user_fields(user.tenant, user.local, {"backend": pin_of(user)})
        for user in users:
            kicked += kick(client, prefix, KickScope("user", user.full), reason).ended
    except (redis.RedisError, OSError) as error:
        raise CommandError(
            f"redis: {error} (the wait on logins ends by itself within {CUTOVER_HOLD:g} s)"
        ) from None
    finally:
        for user in users:
            try:
                lift_delay(client, prefix, "user", user.full)
            except (redis.RedisError, OSError):
                break
    return kicked


# -- forget --------------------------------------------------------------------


def cmd_forget(args: argparse.Namespace) -> int:
    context = Context(args)
    tenant, users = context.tenant_and_users(from_index=bool(args.tenant))
    removed = sum(forget_map(context.client, context.prefix, user.full) for user in users)
    if args.user and not removed:
        raise CommandError(f"no UIDL map for {args.user}")
    _log_action("uidl maps removed", "migrate_forget", tenant.name, args.user, count=removed)
    print(f"{removed} map(s) removed")
    return EXIT_OK


def _log_action(message: str, action: str, tenant: str, user: str | None, **details: Any) -> None:
    """The audit line of a migrate action: its scope (one user or a tenant) and counts."""
    scope = {"scope": "user", "user": user} if user else {"scope": "tenant"}
    log_action(message, action, tenant=tenant, **scope, **details)
