"""``pop3proxy user ...``: per-user records in Redis (today: backend pins).

``user pin alice@acme.example --backend mail2.acme.internal:110`` routes that
user to that backend of the tenant, whatever the tenant's policy. The
backend must be one of the tenant's. Changes are announced on
``<prefix>:changes`` like tenant changes.
"""

from __future__ import annotations

import argparse
import json

from pop3proxy.commands import EXIT_OK, EXIT_USAGE, CommandError, load, redis_store, usage
from pop3proxy.directory import DirectoryUnavailable, RedisStore
from pop3proxy.tenants import Tenant, UserName, parse_backend_address, split_user


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
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


def _name(args: argparse.Namespace) -> UserName:
    tenancy = load(args).tenancy
    name = split_user(args.user, tenancy.separator, tenancy.default_tenant)
    if name.tenant is None:
        raise CommandError(
            f"{args.user!r} names no tenant (expected USER{tenancy.separator}TENANT)", EXIT_USAGE
        )
    return name


def _tenant(store: RedisStore, name: str) -> Tenant:
    try:
        tenant = store.get(name)
    except DirectoryUnavailable as error:
        raise CommandError(str(error)) from None
    if tenant is None:
        raise CommandError(f"no tenant named {name!r}")
    return tenant


def cmd_user_pin(args: argparse.Namespace) -> int:
    name = _name(args)
    try:
        target = parse_backend_address(args.backend)
    except ValueError as error:
        raise CommandError(f"--backend: {error}", EXIT_USAGE) from None
    store = redis_store(args)
    assert name.tenant is not None
    tenant = _tenant(store, name.tenant)
    wanted = f"{target['host']}:{target['port']}"
    addresses = [backend.address for backend in tenant.backends]
    match = next((a for a in addresses if a.replace("[", "").replace("]", "") == wanted), None)
    if match is None:
        raise CommandError(
            f"--backend {args.backend} is not a backend of tenant {tenant.name} "
            f"({', '.join(addresses)})",
            EXIT_USAGE,
        )
    store.put_user_fields(tenant.name, name.local, {"backend": match})
    print(f"user {name.local}@{tenant.name} pinned to {match}")
    return EXIT_OK


def cmd_user_unpin(args: argparse.Namespace) -> int:
    name = _name(args)
    assert name.tenant is not None
    store = redis_store(args)
    store.put_user_fields(name.tenant, name.local, {"backend": None})
    print(f"user {name.local}@{name.tenant} unpinned")
    return EXIT_OK


def cmd_user_show(args: argparse.Namespace) -> int:
    name = _name(args)
    assert name.tenant is not None
    store = redis_store(args)
    try:
        record = store.get_user(name.tenant, name.local)
    except DirectoryUnavailable as error:
        raise CommandError(str(error)) from None
    data = dict(record.raw) if record else {}
    if "password_hash" in data:
        # Never print the hash: a marker that one is set.
        data["password_hash"] = "(set)"  # noqa: S105  # nosec B105
    print(json.dumps({"user": f"{name.local}@{name.tenant}", "record": data or None}, indent=2))
    return EXIT_OK
