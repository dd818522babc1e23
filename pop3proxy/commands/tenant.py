"""``pop3proxy tenant ...``: manage tenant records in Redis.

Every write is validated first (a bad record is refused with the field path,
exit 2) and announced on ``<prefix>:changes`` so running proxies drop their
cached copy at once. A tenant that is disabled or deleted (by ``set``,
``delete`` or ``import``) loses its running sessions on every replica, as
``pop3proxy kick --tenant`` ends them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from pop3proxy.commands import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    existing_tenant,
    redis_store,
    usage,
)
from pop3proxy.commands.sessions import print_kick
from pop3proxy.directory import RedisStore
from pop3proxy.filestore import load_tenants_file
from pop3proxy.schema import TLS_MODES
from pop3proxy.sessions import KickScope, kick
from pop3proxy.tenants import (
    APP_PASSWORD_MODES,
    AUTH_MODES,
    FORWARD_CLIENT,
    LOGIN_COMMANDS,
    POLICIES,
    POP3_PORT,
    Backend,
    RecordError,
    Tenant,
    parse_backend_address,
    parse_tenant,
)


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
    load = tenant_commands.add_parser(
        "import", parents=[common], help="make Redis hold the records of a tenants file"
    )
    load.add_argument("file", type=Path)
    load.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    load.add_argument("--prune", action="store_true", help="delete tenants not in the file")
    load.set_defaults(handler=cmd_tenant_import)
    export = tenant_commands.add_parser(
        "export", parents=[common], help="write every tenant as a tenants file"
    )
    export.add_argument("--output", "-o", type=Path, help="file to write (default: stdout)")
    export.set_defaults(handler=cmd_tenant_export)


def _add_tenant_set(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("set", parents=[common], help="create or replace a tenant")
    cmd.add_argument("name", nargs="?", help="the tenant (optional with --from-file)")
    cmd.add_argument(
        "--from-file",
        metavar="FILE",
        help="the whole record from a YAML or JSON file ('-': stdin); no other flags",
    )
    cmd.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a backend server (repeat for several, in order)",
    )
    cmd.add_argument("--backend-tls", choices=TLS_MODES, default=Backend.tls)
    cmd.add_argument("--no-verify", action="store_true", help="do not verify backend certificates")
    cmd.add_argument("--ca-file", help="CA bundle to verify backend certificates")
    cmd.add_argument("--server-name", help="name for SNI and verification (default: host)")
    cmd.add_argument("--forward-client", choices=FORWARD_CLIENT, default=Backend.forward_client)
    cmd.add_argument(
        "--login-command",
        choices=LOGIN_COMMANDS,
        default=Backend.login_command,
        help="how the proxy logs in to the backends (auth_plain: one round trip, RFC 5034)",
    )
    cmd.add_argument("--policy", choices=POLICIES, default=Tenant.policy)
    cmd.add_argument("--auth", choices=AUTH_MODES, default=Tenant.auth)
    cmd.add_argument(
        "--app-passwords",
        choices=APP_PASSWORD_MODES,
        default=Tenant.app_passwords,
        help="per-device passwords: besides the mailbox password, or instead of it "
        "(needs the master credentials)",
    )
    cmd.add_argument("--master-user", help="the backend's master user (auth local, app passwords)")
    cmd.add_argument("--master-login", help="backend login as master (default: {login}*{master})")
    cmd.add_argument("--master-password-env", metavar="VAR", help="holds the master password")
    cmd.add_argument("--master-password-file", metavar="FILE", help="holds the master password")
    cmd.add_argument("--login", default=Tenant.login, help="backend user name template")
    cmd.add_argument("--max-sessions", type=int, default=Tenant.max_sessions)
    cmd.add_argument("--disabled", action="store_true", help="store the tenant as disabled")
    cmd.add_argument(
        "--case-sensitive-users",
        action="store_true",
        help="the backends tell Bob from bob: keep the case of user names (default: fold)",
    )
    cmd.set_defaults(handler=cmd_tenant_set)


def _record_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    if not args.name:
        raise CommandError("tenant set needs a NAME (or --from-file)", EXIT_USAGE)
    if not args.backend:
        raise CommandError("tenant set needs at least one --backend HOST:PORT", EXIT_USAGE)
    try:
        backends = [parse_backend_address(text) for text in args.backend]
    except ValueError as error:
        raise CommandError(f"--backend: {error}", EXIT_USAGE) from None
    for backend in backends:
        backend.update(
            tls=args.backend_tls,
            verify=not args.no_verify,
            ca_file=args.ca_file,
            server_name=args.server_name,
            forward_client=args.forward_client,
            login_command=args.login_command,
        )
        if args.backend_tls == "implicit" and backend["port"] == POP3_PORT:
            print(f"warning: {backend['host']}:{POP3_PORT} with implicit TLS", file=sys.stderr)
    master = {
        field: value
        for field in ("master_user", "master_login", "master_password_env", "master_password_file")
        if (value := getattr(args, field)) is not None
    }
    return {
        "name": args.name,
        "enabled": not args.disabled,
        "policy": args.policy,
        "auth": args.auth,
        "backends": backends,
        "login": args.login,
        "max_sessions": args.max_sessions,
        "case_sensitive_users": args.case_sensitive_users,
        "app_passwords": args.app_passwords,
        **master,
    }


def _record_from_file(args: argparse.Namespace) -> dict[str, Any]:
    source = args.from_file
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as error:
        raise CommandError(f"{source}: cannot read: {error.strerror}", EXIT_USAGE) from None
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as error:
        raise CommandError(f"{source}: not valid YAML or JSON: {error}", EXIT_USAGE) from None
    if not isinstance(data, dict):
        raise CommandError(f"{source}: expected one tenant record (a mapping)", EXIT_USAGE)
    if args.name:
        if data.get("name") not in (None, args.name):
            raise CommandError(
                f"{source}: name {data.get('name')!r} does not match {args.name!r}", EXIT_USAGE
            )
        data["name"] = args.name
    return data


def cmd_tenant_set(args: argparse.Namespace) -> int:
    if args.from_file:
        if args.backend:
            raise CommandError("--from-file and --backend do not mix", EXIT_USAGE)
        record = _record_from_file(args)
    else:
        record = _record_from_flags(args)
    tenant = parse_tenant(record)
    store = redis_store(args)
    existed = store.raw(tenant.name) is not None
    store.put(tenant)
    print(f"tenant {tenant.name} saved")
    if existed and not tenant.enabled:
        end_sessions(store, tenant.name, "tenant disabled")
    return EXIT_OK


def end_sessions(store: RedisStore, tenant: str, reason: str) -> None:
    """A tenant withdrawn (disabled or deleted): its sessions end on every replica.
    Also when it was disabled already: a session whose login raced the first
    kick ends now."""
    print_kick(
        kick(store.client, store.prefix, KickScope("tenant", tenant), reason),
        f"session(s) of tenant {tenant} ended",
    )


def cmd_tenant_get(args: argparse.Namespace) -> int:
    data = existing_tenant(redis_store(args), args.name).to_dict()
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return EXIT_OK


def _load_all(store: RedisStore) -> tuple[dict[str, Tenant], list[str]]:
    """Every stored tenant, and the names whose records are corrupt."""
    tenants: dict[str, Tenant] = {}
    corrupt: list[str] = []
    for name in sorted(store.names()):
        raw = store.raw(name)
        if raw is None:
            continue  # deleted meanwhile
        try:
            tenants[name] = parse_tenant(json.loads(raw), path=f"tenant {name}")
        except (ValueError, RecordError):
            corrupt.append(name)
    return tenants, corrupt


def cmd_tenant_list(args: argparse.Namespace) -> int:
    tenants, corrupt = _load_all(redis_store(args))
    for name in corrupt:
        print(f"error: tenant {name}: corrupt record (see tenant get {name})", file=sys.stderr)
    if args.json:
        print(json.dumps([t.to_dict() for t in tenants.values()], indent=2, sort_keys=True))
    else:
        print(f"{'NAME':<32} {'ENABLED':<8} {'POLICY':<12} BACKENDS")
        for t in tenants.values():
            backends = ",".join(b.address for b in t.backends)
            print(f"{t.name:<32} {'yes' if t.enabled else 'no':<8} {t.policy:<12} {backends}")
    return EXIT_FAILED if corrupt else EXIT_OK


def cmd_tenant_delete(args: argparse.Namespace) -> int:
    store, name = redis_store(args), args.name.lower()
    if not store.delete(name):
        raise CommandError(f"no tenant named {args.name!r}")
    print(f"tenant {name} deleted")
    end_sessions(store, name, "tenant deleted")
    return EXIT_OK


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [
        f"{key}: {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def cmd_tenant_import(args: argparse.Namespace) -> int:
    """Make Redis hold the file's records: idempotent, with a diff."""
    wanted = load_tenants_file(args.file)
    store = redis_store(args)
    current, corrupt = _load_all(store)
    added, changed, removed = [], [], []
    for name, tenant in wanted.items():
        if name in corrupt:
            changed.append(name)
            print(f"~ {name}: replaces a corrupt record")
        elif name not in current:
            added.append(name)
            print(f"+ {name}")
        elif current[name].to_dict() != tenant.to_dict():
            changed.append(name)
            for line in _changes(current[name].to_dict(), tenant.to_dict()):
                print(f"~ {name}: {line}")
    if args.prune:
        removed = sorted(name for name in {*current, *corrupt} if name not in wanted)
        for name in removed:
            print(f"- {name}")
    unchanged = len(wanted) - len(added) - len(changed)
    summary = (
        f"{len(added)} added, {len(changed)} changed, {unchanged} unchanged, {len(removed)} removed"
    )
    if args.dry_run:
        print(f"dry run: {summary}; nothing written")
        return EXIT_OK
    for name in added + changed:
        store.put(wanted[name])
    for name in removed:
        store.delete(name)
    print(f"imported {args.file}: {summary}")
    for name in changed:
        if not wanted[name].enabled:
            end_sessions(store, name, "tenant disabled")
    for name in removed:
        end_sessions(store, name, "tenant deleted")
    return EXIT_OK


def cmd_tenant_export(args: argparse.Namespace) -> int:
    tenants, corrupt = _load_all(redis_store(args))
    for name in corrupt:
        print(f"warning: tenant {name}: corrupt record, not exported", file=sys.stderr)
    text = yaml.safe_dump(
        {"tenants": [t.to_dict() for t in tenants.values()]}, sort_keys=False, width=100
    )
    if args.output is None:
        print(text, end="")
    else:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as error:
            raise CommandError(f"{args.output}: cannot write: {error.strerror}") from None
        print(f"exported {len(tenants)} tenant(s) to {args.output}", file=sys.stderr)
    return EXIT_FAILED if corrupt else EXIT_OK
