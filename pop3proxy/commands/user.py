"""``pop3proxy user ...``: per-user records in Redis: backend pins, passwords.

``user delay`` (login delays) lives in :mod:`pop3proxy.commands.delay`.

``user pin alice@acme.example --backend mail2.acme.internal:110`` routes that
user to that backend of the tenant, whatever the tenant's policy. The
backend must be one of the tenant's.

``user set-password alice@acme.example`` stores an argon2id hash for tenants
with ``auth: local``. The password is read from a prompt, or from the first
line of standard input when that is not a terminal: never from the command
line, where ``ps`` and shell history would keep it.

``user delete`` removes the whole record, app passwords included: the
sessions that logged in with them end (on ``auth: local`` tenants all the
user's sessions do). ``set-password`` withdraws no app password.

Changes are announced on ``<prefix>:changes`` like tenant changes.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from dataclasses import asdict

import redis

from pop3proxy.apppasswords import AppPassword, without_hashes
from pop3proxy.auth import Passwords
from pop3proxy.commands import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    configured_store,
    delay,
    existing_tenant,
    load,
    usage,
    user_name,
)
from pop3proxy.commands.userimport import register_import
from pop3proxy.directory import DirectoryUnavailable, RedisStore, Store
from pop3proxy.history import LoginHistory, last_used_key
from pop3proxy.legacyhashes import ARGON2ID
from pop3proxy.sessions import KickScope, kick
from pop3proxy.tenants import (
    Identity,
    Tenant,
    UserName,
    parse_backend_address,
)


def register(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser
) -> argparse._SubParsersAction:
    """Returns the ``user`` subcommands, for modules that add their own
    (:mod:`pop3proxy.commands.apppassword`)."""
    user = commands.add_parser("user", help="per-user records: backend pins")
    user_commands = user.add_subparsers(title="user commands", metavar="ACTION")
    user.set_defaults(handler=lambda args: usage(user))
    pin = user_commands.add_parser(
        "pin", parents=[common], help="route a user to one backend of the tenant"
    )
    pin.add_argument("user", help="the login name, e.g. alice@acme.example")
    pin.add_argument("--backend", required=True, metavar="HOST:PORT")
    pin.set_defaults(handler=cmd_user_pin)
    unpin = user_commands.add_parser("unpin", parents=[common], help="remove a user's pin")
    unpin.add_argument("user")
    unpin.set_defaults(handler=cmd_user_unpin)
    show = user_commands.add_parser("show", parents=[common], help="show a user's record")
    show.add_argument("user")
    show.set_defaults(handler=cmd_user_show)
    password = user_commands.add_parser(
        "set-password", parents=[common], help="set a local-auth password (prompt or stdin)"
    )
    password.add_argument("user")
    password.set_defaults(handler=cmd_user_set_password)
    delete = user_commands.add_parser("delete", parents=[common], help="delete a user's record")
    delete.add_argument("user")
    delete.set_defaults(handler=cmd_user_delete)
    listing = user_commands.add_parser("list", parents=[common], help="list a tenant's users")
    listing.add_argument("--tenant", required=True)
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(handler=cmd_user_list)
    history = user_commands.add_parser(
        "history", parents=[common], help="a user's last logins, newest first"
    )
    history.add_argument("user")
    history.add_argument("--json", action="store_true", help="JSON instead of a table")
    history.set_defaults(handler=cmd_user_history)
    register_import(user_commands, common)
    delay.register(user_commands, common, lambda args, store: _identity(_name(args), store))
    return user_commands


def _name(args: argparse.Namespace) -> UserName:
    return user_name(args.user, load(args).tenancy)


def _identity(name: UserName, store: Store, tenant: Tenant | None = None) -> Identity:
    """The user the proxy logs in for ``name``: the tenant's case rule applies.
    A tenant that no longer exists (a leftover record to delete) folds case,
    the default."""
    assert name.tenant is not None
    if tenant is None:
        try:
            tenant = store.get(name.tenant)
        except DirectoryUnavailable as error:
            raise CommandError(str(error)) from None
    if tenant is None:
        return Identity(name.local.lower(), name.tenant, name.separator)
    return tenant.identity(name)


def cmd_user_pin(args: argparse.Namespace) -> int:
    name = _name(args)
    try:
        target = parse_backend_address(args.backend)
    except ValueError as error:
        raise CommandError(f"--backend: {error}", EXIT_USAGE) from None
    store = configured_store(args)
    assert name.tenant is not None
    tenant = existing_tenant(store, name.tenant)
    wanted = f"{target['host']}:{target['port']}"
    addresses = [backend.address for backend in tenant.backends]
    match = next((a for a in addresses if a.replace("[", "").replace("]", "") == wanted), None)
    if match is None:
        raise CommandError(
            f"--backend {args.backend} is not a backend of tenant {tenant.name} "
            f"({', '.join(addresses)})",
            EXIT_USAGE,
        )
    user = _identity(name, store, tenant)
    store.put_user_fields(user.tenant, user.local, {"backend": match})
    print(f"user {user} pinned to {match}")
    return EXIT_OK


def cmd_user_unpin(args: argparse.Namespace) -> int:
    store = configured_store(args)
    user = _identity(_name(args), store)
    store.put_user_fields(user.tenant, user.local, {"backend": None})
    print(f"user {user} unpinned")
    return EXIT_OK


def cmd_user_show(args: argparse.Namespace) -> int:
    store = configured_store(args)
    user = _identity(_name(args), store)
    try:
        record = store.get_user(user.tenant, user.local)
    except DirectoryUnavailable as error:
        raise CommandError(str(error)) from None
    data = dict(record.raw) if record else {}
    if "password_hash" in data:
        # Never print the hash: a marker that one is set.
        data["password_hash"] = "(set)"  # noqa: S105  # nosec B105
    data = without_hashes(data)
    print(json.dumps({"user": user.full, "record": data or None}, indent=2))
    return EXIT_OK


MAX_PASSWORD_LENGTH = 1024


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != first:
            raise CommandError("the passwords do not match", EXIT_USAGE)
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password", EXIT_USAGE)
    if len(password) > MAX_PASSWORD_LENGTH:
        raise CommandError(f"password longer than {MAX_PASSWORD_LENGTH} characters", EXIT_USAGE)
    return password


def cmd_user_set_password(args: argparse.Namespace) -> int:
    name = _name(args)
    config = load(args)
    store = configured_store(args)
    tenant = existing_tenant(store, name.tenant or "")
    if tenant.auth != "local":
        print(
            f"warning: tenant {tenant.name} uses auth: {tenant.auth}; the password is "
            "stored but not used until it switches to auth: local",
            file=sys.stderr,
        )
    user = _identity(name, store, tenant)
    stored = Passwords.from_config(config.auth).hash(_read_password())
    store.put_user_fields(user.tenant, user.local, {"password_hash": stored})
    print(f"password set for {user}")
    if tenant.auth == "local":
        _end_sessions(store, user, "password changed")
    return EXIT_OK


def cmd_user_delete(args: argparse.Namespace) -> int:
    store = configured_store(args)
    user = _identity(_name(args), store)
    had_app_passwords = bool(_app_passwords(store, user))
    if not store.delete_user(user.tenant, user.local):
        raise CommandError(f"no record for {user}")
    print(f"user {user} deleted")
    if had_app_passwords and isinstance(store, RedisStore):
        store.client.delete(last_used_key(store.prefix, user.full))
    tenant = store.get(user.tenant)
    if tenant is not None and tenant.auth == "local":
        _end_sessions(store, user, "user deleted")  # app-password sessions included
    elif had_app_passwords and isinstance(store, RedisStore):
        # The mailbox password is the backend's and stays valid; the app
        # passwords went with the record: the sessions opened with them end.
        result = kick(
            store.client, store.prefix, KickScope("credential", f"{user.full}/*"), "user deleted"
        )
        print(f"{result.ended} app-password session(s) of {user} ended")
    return EXIT_OK


def _app_passwords(store: Store, user: Identity) -> tuple[AppPassword, ...]:
    """The app passwords in the user's record (none without Redis: they live there only)."""
    if not isinstance(store, RedisStore):
        return ()
    try:
        record = store.get_user(user.tenant, user.local)
    except DirectoryUnavailable as error:
        raise CommandError(str(error)) from None
    return record.app_passwords if record is not None else ()


def _end_sessions(store: Store, user: Identity, reason: str) -> None:
    """A local user's password changed or the user is gone: the sessions that
    logged in with it end on every replica (``pop3proxy kick --user``)."""
    if not isinstance(store, RedisStore):
        return
    result = kick(store.client, store.prefix, KickScope("user", user.full), reason)
    print(f"{result.ended} session(s) of {user} ended")


def cmd_user_list(args: argparse.Namespace) -> int:
    store = configured_store(args)
    tenant = args.tenant.lower()
    users = []
    for local in store.user_locals(tenant):
        record = store.get_user(tenant, local)
        scheme = record.password_scheme if record else None
        users.append(
            {
                "user": f"{local}@{tenant}",
                "password": scheme is not None,
                "password_scheme": scheme,
                "legacy_hash": scheme is not None and scheme != ARGON2ID,
                "backend": record.backend if record else None,
            }
        )
    users.sort(key=lambda entry: str(entry["user"]))
    if args.json:
        print(json.dumps(users, indent=2))
        return EXIT_OK
    print(f"{'USER':<40} {'PASSWORD':<22} BACKEND")
    for entry in users:
        password = _password_column(entry["password_scheme"])
        print(f"{entry['user']:<40} {password:<22} {entry['backend'] or '-'}")
    legacy = sum(1 for entry in users if entry["legacy_hash"])
    if legacy:
        print(f"{legacy} of {len(users)} user(s) still carry a legacy hash (argon2id after login)")
    return EXIT_OK


def _password_column(scheme: object) -> str:
    """``set`` for the proxy's own argon2id hash, ``legacy SCHEME`` for an
    imported one not yet replaced by a login, ``-`` for none."""
    if scheme is None:
        return "-"
    return "set" if scheme == ARGON2ID else f"legacy {scheme}"


def cmd_user_history(args: argparse.Namespace) -> int:
    config = load(args)
    store = configured_store(args)
    user = _identity(_name(args), store)
    client, health = store.shared_redis(), store.shared_health()
    if client is None or health is None:
        raise CommandError("no login history: the directory uses no Redis", EXIT_USAGE)
    limits = config.limits
    history = LoginHistory(
        client, config.directory.key_prefix, health, limits.login_history, limits.login_history_ttl
    )
    try:
        entries = history.read(user.full)
    except (redis.RedisError, OSError) as error:
        raise CommandError(f"redis: {error}") from None
    if args.json:
        print(json.dumps({"user": user.full, "logins": [asdict(e) for e in entries]}, indent=2))
        return EXIT_OK
    print(
        f"{'TIME (UTC)':<20} {'CLIENT':<40} {'LISTENER':<10} {'MECH':<6} {'RESULT':<16} "
        f"{'BACKEND':<28} APP PASSWORD"
    )
    for entry in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.time))
        app = f"{entry.credential} ({entry.label})" if entry.credential else "-"
        print(
            f"{when:<20} {entry.client or '-':<40} {entry.listener or '-':<10} "
            f"{entry.mechanism:<6} {entry.result:<16} {entry.backend or '-':<28} {app}"
        )
    return EXIT_OK
