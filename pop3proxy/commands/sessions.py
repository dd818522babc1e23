"""``pop3proxy who`` and ``pop3proxy kick``: live sessions of every replica.

``who`` reads the session registry each replica keeps in Redis
(:mod:`pop3proxy.sessions`); ``kick`` publishes on the change channel, every
replica ends its matching sessions (a client in AUTHORIZATION hears
``-ERR [SYS/TEMP]``, one in TRANSACTION is cut without QUIT to its backend,
so nothing is deleted) and answers how many; ``kick`` prints the sum.
Exit 1 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import sys

from pop3proxy.commands import EXIT_OK, EXIT_USAGE, CommandError, redis_store
from pop3proxy.logs import utc_text
from pop3proxy.sessions import Entry, KickResult, KickScope, kick, live_sessions

_COLUMNS = (
    ("id", "SESSION"),
    ("user", "USER"),
    ("tenant", "TENANT"),
    ("client", "CLIENT"),
    ("listener", "LISTENER"),
    ("backend", "BACKEND"),
    ("phase", "PHASE"),
    ("started", "STARTED"),
    ("bytes_in", "IN"),
    ("bytes_out", "OUT"),
    ("replica", "REPLICA"),
)


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    who = commands.add_parser("who", parents=[common], help="list live sessions of every replica")
    who.add_argument("--tenant", metavar="T")
    who.add_argument("--user", metavar="USER@TENANT")
    who.add_argument("--backend", metavar="HOST:PORT")
    who.add_argument("--json", action="store_true", help="one JSON array")
    who.set_defaults(handler=cmd_who)
    kick_parser = commands.add_parser(
        "kick", parents=[common], help="end matching sessions on every replica"
    )
    scopes = kick_parser.add_mutually_exclusive_group(required=True)
    scopes.add_argument("--user", metavar="USER@TENANT")
    scopes.add_argument("--tenant", metavar="T")
    scopes.add_argument("--backend", metavar="HOST:PORT")
    scopes.add_argument("--session", metavar="ID")
    scopes.add_argument("--from", dest="source", metavar="CIDR")
    kick_parser.add_argument("--reason", default="", metavar="TEXT", help="written to the logs")
    kick_parser.set_defaults(handler=cmd_kick)


def cmd_who(args: argparse.Namespace) -> int:
    store = redis_store(args)
    wanted = (("tenant", args.tenant), ("user", args.user), ("backend", args.backend))
    filters = [KickScope(scope, value) for scope, value in wanted if value]
    sessions = [
        entry
        for entry in live_sessions(store.client, store.prefix)
        if all(scope.matches(entry) for scope in filters)
    ]
    if args.json:
        json.dump(sessions, sys.stdout, indent=2)
        print()
    else:
        _print_table(sessions)
    return EXIT_OK


def _print_table(sessions: list[Entry]) -> None:
    rows = [[title for _, title in _COLUMNS]]
    for entry in sessions:
        rows.append([_cell(key, entry.get(key)) for key, _ in _COLUMNS])
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    for row in rows:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print(line.rstrip())


def _cell(key: str, value: object) -> str:
    if value is None:
        return "-"
    if key == "started" and isinstance(value, int | float):
        return utc_text(value)
    return str(value)


def cmd_kick(args: argparse.Namespace) -> int:
    chosen = [
        (scope, value)
        for scope, value in (
            ("user", args.user),
            ("tenant", args.tenant),
            ("backend", args.backend),
            ("session", args.session),
            ("from", args.source),
        )
        if value
    ]
    if len(chosen) != 1:
        raise CommandError(
            "kick: give one of --user, --tenant, --backend, --session, --from", EXIT_USAGE
        )
    try:
        scope = KickScope(*chosen[0])
    except ValueError:
        raise CommandError(
            f"kick --from: expected an address or CIDR, got {args.source!r}", EXIT_USAGE
        ) from None
    store = redis_store(args)
    result = kick(store.client, store.prefix, scope, args.reason)
    print_kick(result, "session(s) ended")
    return EXIT_OK


def print_kick(result: KickResult, ended: str) -> None:
    """How many sessions a kick ended (``ended``: what follows the count), and
    a warning when a replica did not answer in time (its sessions may remain)."""
    print(f"{result.ended} {ended}")
    if result.answered < result.replicas:
        print(
            f"warning: {result.replicas - result.answered} of {result.replicas} replica(s) "
            "did not answer within 2 s",
            file=sys.stderr,
        )
