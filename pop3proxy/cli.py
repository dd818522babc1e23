"""The command line: serve, check-config, and the tenant admin commands.

gevent's monkey-patching comes first, before anything else is imported, so
that redis-py and the standard library use cooperative sockets.

Exit codes: 0 done, 1 failed, 2 bad usage or bad configuration. A user
mistake gets a one-line reason, never a traceback.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import redis  # noqa: E402
import yaml  # noqa: E402

from pop3proxy import __version__  # noqa: E402
from pop3proxy.config import Config, ConfigError, default_config_path, load_config  # noqa: E402
from pop3proxy.directory import DirectoryUnavailable, RedisStore, load_tenants_file  # noqa: E402
from pop3proxy.tenants import (  # noqa: E402
    POLICIES,
    RecordError,
    Tenant,
    parse_backend_address,
    parse_tenant,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.handler(args)
    except (ConfigError, RecordError) as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.code
    except (redis.RedisError, DirectoryUnavailable) as error:
        print(f"error: Redis: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pop3proxy", description="Multi-tenant POP3 proxy")
    parser.add_argument("--version", action="version", version=f"pop3proxy {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration file (default: $POP3PROXY_CONFIG, then ./pop3proxy.yaml)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the proxy")
    serve.set_defaults(handler=cmd_serve)
    check = commands.add_parser("check-config", parents=[common], help="validate the configuration")
    check.set_defaults(handler=cmd_check_config)

    tenant = commands.add_parser("tenant", help="manage tenant records in Redis")
    tenant_commands = tenant.add_subparsers(title="tenant commands", metavar="ACTION")
    tenant.set_defaults(handler=lambda args: _usage(tenant))
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
    return parser


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


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.config or default_config_path())


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    from pop3proxy.app import App
    from pop3proxy.logs import setup_logging

    setup_logging(config.logging.level, config.logging.format)
    try:
        app = App(config)
    except OSError as error:
        raise CommandError(f"cannot start: {error}") from None
    try:
        app.serve_forever()
    except OSError as error:
        raise CommandError(f"cannot start: {error}") from None
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _config(args)
    if config.directory.store == "file" and config.directory.file:
        tenants = load_tenants_file(Path(config.directory.file))
        print(f"tenants file: {len(tenants)} tenant(s)")
    for listener in config.listeners:
        print(f"listener {listener.name}: {listener.host}:{listener.port} tls={listener.tls}")
    print(f"configuration OK: {config.source}")
    return EXIT_OK


def _store(args: argparse.Namespace) -> RedisStore:
    config = _config(args)
    if config.directory.store != "redis":
        raise CommandError(
            f"directory.store is {config.directory.store!r}: tenants live in "
            f"{config.directory.file}; edit that file instead",
            EXIT_USAGE,
        )
    return RedisStore.from_config(config.directory)


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
    _store(args).put(tenant)
    print(f"tenant {tenant.name} saved")
    return EXIT_OK


def _get(store: RedisStore, name: str) -> Tenant:
    tenant = store.get(name.lower())
    if tenant is None:
        raise CommandError(f"no tenant named {name!r}")
    return tenant


def cmd_tenant_get(args: argparse.Namespace) -> int:
    data = _get(_store(args), args.name).to_dict()
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return EXIT_OK


def cmd_tenant_list(args: argparse.Namespace) -> int:
    store = _store(args)
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
    if not _store(args).delete(args.name.lower()):
        raise CommandError(f"no tenant named {args.name!r}")
    print(f"tenant {args.name.lower()} deleted")
    return EXIT_OK


def cmd_tenant_import(args: argparse.Namespace) -> int:
    tenants = load_tenants_file(args.file)
    store = _store(args)
    for tenant in tenants.values():
        store.put(tenant)
    print(f"imported {len(tenants)} tenant(s)")
    return EXIT_OK
