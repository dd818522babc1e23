"""The command line: ``serve``, ``check-config``, and the admin commands.

gevent's monkey-patching comes first, before anything else is imported, so
that redis-py and the standard library use cooperative sockets.

Exit codes: 0 done, 1 failed, 2 bad usage or bad configuration. A user
mistake gets a one-line reason, never a traceback. Admin commands live in
``pop3proxy.commands``, one module per noun, each with a ``register``.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import redis  # noqa: E402

from pop3proxy import __version__  # noqa: E402
from pop3proxy.commands import (  # noqa: E402
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    add_config_option,
    apppassword,
    backend,
    load,
    migrate,
    route,
    sessions,
    tenant,
    user,
)
from pop3proxy.config import Config, ConfigError  # noqa: E402
from pop3proxy.directory import DirectoryUnavailable  # noqa: E402
from pop3proxy.filestore import load_tenants_file  # noqa: E402
from pop3proxy.net import tls  # noqa: E402
from pop3proxy.tenants import MasterPasswordMissing, RecordError, Tenant  # noqa: E402
from pop3proxy.userrecords import UserRecordsUnsupported  # noqa: E402


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
    except UserRecordsUnsupported as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (redis.RedisError, DirectoryUnavailable) as error:
        print(f"error: Redis: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pop3proxy", description="Multi-tenant POP3 proxy")
    parser.add_argument("--version", action="version", version=f"pop3proxy {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    add_config_option(common)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    serve = commands.add_parser("serve", parents=[common], help="run the proxy")
    serve.set_defaults(handler=cmd_serve)
    check = commands.add_parser("check-config", parents=[common], help="validate the configuration")
    check.set_defaults(handler=cmd_check_config)
    tenant.register(commands, common)
    apppassword.register(user.register(commands, common), common)
    backend.register(commands, common)
    route.register(commands, common)
    sessions.register(commands, common)
    migrate.register(commands, common)
    return parser


def cmd_serve(args: argparse.Namespace) -> int:
    config = load(args)
    from pop3proxy.logs import setup_logging
    from pop3proxy.supervisor import serve

    setup_logging(config.logging.level, config.logging.format)
    try:
        serve(config)
    except OSError as error:
        raise CommandError(f"cannot start: {error}") from None
    return EXIT_OK


EXPIRY_WARNING_DAYS = 14
"""``check-config`` warns of a certificate that expires sooner than this."""


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load(args)
    if config.directory.store == "file" and config.directory.file:
        tenants = load_tenants_file(Path(config.directory.file))
        print(f"tenants file: {len(tenants)} tenant(s)")
        for tenant in tenants.values():
            _check_master_password(tenant)
    for listener in config.listeners:
        line = f"listener {listener.name}: {listener.host}:{listener.port} tls={listener.tls}"
        if listener.tls != "none":
            line += " " + config.tls.policy(listener.tls_profile).describe()
        print(line)
    if any(listener.tls != "none" for listener in config.listeners):
        _check_certificates(config)
    print(f"configuration OK: {config.source}")
    return EXIT_OK


def _check_master_password(tenant: Tenant) -> None:
    """A tenant whose logins go to the backend as the master user (``auth:
    local``, app passwords) must find its master password where the serving
    process runs: a warning here, since that may be another environment."""
    if not tenant.has_master:
        return
    try:
        tenant.master_password()
    except MasterPasswordMissing as error:
        print(
            f"warning: tenant {tenant.name}: master password unreadable here ({error}); "
            "its logins as the master user fail until it is",
            file=sys.stderr,
        )


def _check_certificates(config: Config) -> None:
    """Every certificate loads with its key (else ``serve`` would not start), and
    a warning for each that expires within :data:`EXPIRY_WARNING_DAYS`."""
    try:
        tls.server_contexts(config.tls, config.listeners)
    except tls.CertificateError as error:
        raise CommandError(f"tls: {error}", EXIT_USAGE) from None
    now = time.time()
    for name, expires in sorted(tls.certificate_expiries(config.tls).items()):
        days = (expires - now) / 86400
        if days < EXPIRY_WARNING_DAYS:
            when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(expires))
            state = "has expired" if days < 0 else f"expires in {days:.1f} days"
            print(f"warning: certificate {name} {state} ({when})", file=sys.stderr)
