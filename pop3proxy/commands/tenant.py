"""``pop3proxy tenant ...``: manage tenant records in Redis."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from pop3proxy.commands import EXIT_OK, EXIT_USAGE, CommandError, redis_store, usage
from pop3proxy.directory import RedisStore, load_tenants_file
from pop3proxy.tenants import POLICIES, Tenant, parse_backend_address, parse_tenant


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    tenant = commands.add_parser("tenant", help="manage tenant records in Redis")
    tenant_commands = tenant.add_subparsers(title="tenant commands", metavar="ACTION")
    tenant.set_defaults(handler=lambda args: usage(tenant))
    _add_tenant_set(tenant_commands, common)
    get = tenant_commands.add_parser("get", parents=[common], help="show one tenant")
    get.add_argument("name")
    get.add_argument("--format", choices=("yaml", "json"), default="yaml")
    get.set_defaults(handler=cmd_tenant_get)
    listing = tenant_commands.add_parser("list", parents=[common], help="list tenants")
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(handler=cmd_tenant_list)
    delete = tenant_commands.add_parser("delete", parents=[common], help="delete a tenant")
    delete.add_argument("name")
    delete.set_defaults(handler=cmd_tenant_delete)
    load = tenant_commands.add_parser("import", parents=[common], help="load a tenants YAML file")
    load.add_argument("file", type=Path)
    load.set_defaults(handler=cmd_tenant_import)


def _add_tenant_set(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("set", parents=[common], help="create or replace a tenant")
    cmd.add_argument("name")
    cmd.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a backend server (repeat for several, in order)",
    )
    cmd.add_argument("--backend-tls", choices=("none", "starttls", "implicit"), default="none")
    cmd.add_argument("--no-verify", action="store_true", help="do not verify backend certificates")
    cmd.add_argument("--ca-file", help="CA bundle to verify backend certificates")
    cmd.add_argument("--policy", choices=POLICIES, default="failover")
    cmd.add_argument("--login", default="{local}", help="backend user name template")
    cmd.add_argument("--max-sessions", type=int, default=200)
    cmd.add_argument("--disabled", action="store_true", help="store the tenant as disabled")
    cmd.set_defaults(handler=cmd_tenant_set)


def cmd_tenant_set(args: argparse.Namespace) -> int:
    if not args.backend:
        raise CommandError("tenant set needs at least one --backend HOST:PORT", EXIT_USAGE)
    try:
        backends = [parse_backend_address(text) for text in args.backend]
    except ValueError as error:
        raise CommandError(f"--backend: {error}", EXIT_USAGE) from None
    for backend in backends:
        backend.update(tls=args.backend_tls, verify=not args.no_verify, ca_file=args.ca_file)
    record = {
        "name": args.name,
        "enabled": not args.disabled,
        "policy": args.policy,
        "backends": backends,
        "login": args.login,
        "max_sessions": args.max_sessions,
    }
    tenant = parse_tenant(record)
    redis_store(args).put(tenant)
    print(f"tenant {tenant.name} saved")
    return EXIT_OK


def _get(store: RedisStore, name: str) -> Tenant:
    tenant = store.get(name.lower())
    if tenant is None:
        raise CommandError(f"no tenant named {name!r}")
    return tenant


def cmd_tenant_get(args: argparse.Namespace) -> int:
    data = _get(redis_store(args), args.name).to_dict()
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return EXIT_OK


def cmd_tenant_list(args: argparse.Namespace) -> int:
    store = redis_store(args)
    tenants = [_get(store, name) for name in sorted(store.names())]
    if args.json:
        print(json.dumps([t.to_dict() for t in tenants], indent=2, sort_keys=True))
        return EXIT_OK
    print(f"{'NAME':<32} {'ENABLED':<8} {'POLICY':<12} BACKENDS")
    for t in tenants:
        backends = ",".join(b.address for b in t.backends)
        print(f"{t.name:<32} {'yes' if t.enabled else 'no':<8} {t.policy:<12} {backends}")
    return EXIT_OK


def cmd_tenant_delete(args: argparse.Namespace) -> int:
    if not redis_store(args).delete(args.name.lower()):
        raise CommandError(f"no tenant named {args.name!r}")
    print(f"tenant {args.name.lower()} deleted")
    return EXIT_OK


def cmd_tenant_import(args: argparse.Namespace) -> int:
    tenants = load_tenants_file(args.file)
    store = redis_store(args)
    for tenant in tenants.values():
        store.put(tenant)
    print(f"imported {len(tenants)} tenant(s)")
    return EXIT_OK
