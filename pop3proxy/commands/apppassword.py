"""``pop3proxy user app-password ...``: per-device passwords of a user.

``add`` generates one (:mod:`pop3proxy.apppasswords`), stores only its
argon2id hash in the user record and prints the password once: nothing can
show it again. ``list`` shows id, label, creation, expiry, networks and last
use, never a hash. ``revoke`` removes it from the record (every replica
drops its cached copy on the change channel at once) and ends the sessions
that logged in with it on every replica (a kick of scope ``credential``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import redis

from pop3proxy.apppasswords import RECORD_FIELD, AppPasswordError, new_app_password
from pop3proxy.commands import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    configured_store,
    existing_tenant,
    usage,
)
from pop3proxy.commands.user import _app_passwords, _identity, _name
from pop3proxy.directory import RedisStore
from pop3proxy.history import last_used, last_used_key
from pop3proxy.sessions import KickScope, kick
from pop3proxy.tenants import Identity
from pop3proxy.userrecords import UserRecordsUnsupported


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """``user app-password add|list|revoke``: ``commands`` are ``user``'s."""
    group = commands.add_parser("app-password", help="per-device passwords: add, list, revoke")
    actions = group.add_subparsers(title="app-password commands", metavar="ACTION")
    group.set_defaults(handler=lambda args: usage(group))
    add = actions.add_parser(
        "add", parents=[common], help="generate an app password (printed once)"
    )
    add.add_argument("user", help="the login name, e.g. alice@acme.example")
    add.add_argument("--label", required=True, metavar="TEXT", help="the device, e.g. 'phone'")
    add.add_argument("--expires", metavar="DURATION", help="e.g. 90d or 12h (default: never)")
    add.add_argument(
        "--allow-from",
        action="append",
        default=[],
        metavar="CIDR",
        help="accept it only from this network (repeat for several)",
    )
    add.add_argument("--json", action="store_true", help="JSON instead of text")
    add.set_defaults(handler=cmd_add)
    listing = actions.add_parser("list", parents=[common], help="a user's app passwords")
    listing.add_argument("user")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(handler=cmd_list)
    revoke = actions.add_parser(
        "revoke", parents=[common], help="remove an app password and end its sessions"
    )
    revoke.add_argument("user")
    revoke.add_argument("id", help="the app password's id (its first group)")
    revoke.set_defaults(handler=cmd_revoke)


def _redis_user(args: argparse.Namespace) -> tuple[RedisStore, Identity, Any]:
    """The store (app passwords live in Redis only), the user and the tenant."""
    name = _name(args)
    store = configured_store(args)
    if not isinstance(store, RedisStore):
        raise UserRecordsUnsupported
    tenant = existing_tenant(store, name.tenant or "")
    return store, _identity(name, store, tenant), tenant


def cmd_add(args: argparse.Namespace) -> int:
    store, user, tenant = _redis_user(args)
    try:
        password, entry = new_app_password(
            (p.id for p in _app_passwords(store, user)), args.label, args.expires, args.allow_from
        )
    except AppPasswordError as error:
        raise CommandError(str(error), EXIT_USAGE) from None

    def with_new(current: Any) -> dict[str, Any]:
        passwords = dict(current) if isinstance(current, dict) else {}
        if entry.id in passwords:  # added meanwhile under the same id: 1 in 33 million
            raise CommandError("another app password was added meanwhile; run add again")
        passwords[entry.id] = entry.stored()
        return passwords

    store.update_user_field(user.tenant, user.local, RECORD_FIELD, with_new)
    if tenant.app_passwords == "off":
        print(
            f"warning: tenant {tenant.name} has app_passwords: off; the app password is "
            "stored but not accepted until the tenant allows app passwords "
            "(tenant set ... --app-passwords allowed)",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps({"user": user.full, **entry.public(), "password": password}, indent=2))
        return EXIT_OK
    print(f"app password {entry.id} ({entry.label}) for {user}:")
    print()
    print(f"    {password}")
    print()
    print("It is shown only now: enter it in the device as the password. Case, spaces")
    print("and dashes do not matter.")
    if entry.expires is not None:
        print(f"Expires {_when(entry.expires)} UTC.")
    if entry.allow_from:
        print(f"Accepted only from {', '.join(entry.allow_from)}.")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    store, user, _ = _redis_user(args)
    stored = _app_passwords(store, user)
    try:
        used = last_used(store.client, store.prefix, user.full)
    except (redis.RedisError, OSError) as error:
        raise CommandError(f"redis: {error}") from None
    now = time.time()
    entries = [
        {**p.public(), "expired": p.expired(now), "last_used": used.get(p.id)} for p in stored
    ]
    if args.json:
        print(json.dumps({"user": user.full, "app_passwords": entries}, indent=2))
        return EXIT_OK
    print(
        f"{'ID':<6} {'LABEL':<24} {'CREATED (UTC)':<17} {'EXPIRES (UTC)':<17} "
        f"{'ALLOW FROM':<20} LAST USED"
    )
    for entry in entries:
        expires = _when(entry["expires"]) if entry["expires"] else "never"
        if entry["expired"]:
            expires += " (expired)"
        seen = entry["last_used"]
        last = f"{_when(seen['time'])} from {seen.get('client') or '?'}" if seen else "never"
        print(
            f"{entry['id']:<6} {entry['label'][:24]:<24} {_when(entry['created']):<17} "
            f"{expires:<17} {','.join(entry['allow_from']) or 'anywhere':<20} {last}"
        )
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    store, user, _ = _redis_user(args)
    wanted = args.id.strip().lower()

    def without(current: Any) -> dict[str, Any] | None:
        passwords = dict(current) if isinstance(current, dict) else {}
        if passwords.pop(wanted, None) is None:
            raise CommandError(f"{user} has no app password {args.id!r} (see app-password list)")
        return passwords or None

    store.update_user_field(user.tenant, user.local, RECORD_FIELD, without)
    store.client.hdel(last_used_key(store.prefix, user.full), wanted)
    result = kick(
        store.client,
        store.prefix,
        KickScope("credential", f"{user.full}/{wanted}"),
        "app password revoked",
    )
    print(f"app password {wanted} of {user} revoked; {result.ended} session(s) ended")
    return EXIT_OK


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))
