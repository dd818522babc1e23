"""What every admin command shares: exit codes, errors, config and store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pop3proxy.config import Config, TenancyConfig, default_config_path, load_config
from pop3proxy.directory import DirectoryUnavailable, RedisStore, Store, open_store
from pop3proxy.logs import utc_text
from pop3proxy.redisconn import CredentialsError
from pop3proxy.sessions import operator
from pop3proxy.tenants import MalformedName, Tenant, UserName, split_user

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def log_action(message: str, action: str, **fields: Any) -> None:
    """An operator's action as one structured line (JSON, like the server's
    log lines) on stderr: what, its scope, and who ran it where."""
    record = {
        "time": utc_text(time.time()),
        "message": message,
        "action": action,
        **fields,
        "by": operator(),
    }
    print(json.dumps(record, sort_keys=True), file=sys.stderr)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration file (default: $POP3PROXY_CONFIG, then ./pop3proxy.yaml)",
    )


def usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def load(args: argparse.Namespace) -> Config:
    return load_config(args.config or default_config_path())


def existing_tenant(store: Store, name: str) -> Tenant:
    """The stored record of tenant ``name``, or a one-line error."""
    try:
        tenant = store.get(name.lower())
    except DirectoryUnavailable as error:
        raise CommandError(str(error)) from None
    if tenant is None:
        raise CommandError(f"no tenant named {name!r}")
    return tenant


def user_name(text: str, tenancy: TenancyConfig) -> UserName:
    """``USER@TENANT`` as an operator gave it (on the command line or in a
    file), split as a login splits it (``tenancy.default_tenant`` when it
    names none); a usage error when it is malformed or has no tenant."""
    try:
        name = split_user(text, tenancy.separator, tenancy.default_tenant)
    except MalformedName as error:
        raise CommandError(str(error), EXIT_USAGE) from None
    if name.tenant is None:
        raise CommandError(
            f"{text!r} names no tenant (expected USER{tenancy.separator}TENANT)", EXIT_USAGE
        )
    return name


def redis_store(args: argparse.Namespace) -> RedisStore:
    """The Redis the server uses; tenant commands refuse to run against a file store."""
    config = load(args)
    if config.directory.store != "redis":
        raise CommandError(
            f"directory.store is {config.directory.store!r}: tenants live in "
            f"{config.directory.file}; edit that file instead",
            EXIT_USAGE,
        )
    try:
        return RedisStore.from_config(config.directory)
    except CredentialsError as error:
        raise CommandError(str(error), EXIT_USAGE) from None


def configured_store(args: argparse.Namespace) -> Store:
    """The store the server uses, whichever it is: user commands read from a
    tenants file too, and writing to one raises
    :class:`~pop3proxy.userrecords.UserRecordsUnsupported`."""
    try:
        return open_store(load(args).directory)
    except CredentialsError as error:
        raise CommandError(str(error), EXIT_USAGE) from None
