"""``pop3proxy backend ...``: the operator's state of each backend address.

The state lives in one Redis hash (``<prefix>:backend-state``) shared by
every replica and tenant; each proxy process reads it within a second or
two (:class:`pop3proxy.backends.BackendStates`). ``online`` is stored as
the absence of an entry, so the hash only ever holds exceptions. An
evacuation's deadline is stored as an absolute time next to it, so every
replica ends the last sessions at the same moment.
"""

from __future__ import annotations

import argparse
import json
import time

from pop3proxy.backends import (
    EVACUATE,
    EVACUATE_DEADLINE,
    ONLINE,
    STATES,
    read_backend_states,
    read_states,
    write_state,
)
from pop3proxy.commands import EXIT_OK, EXIT_USAGE, CommandError, log_action, redis_store, usage
from pop3proxy.logs import utc_text
from pop3proxy.schema import parse_duration
from pop3proxy.tenants import Backend, parse_backend_address


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    backend = commands.add_parser("backend", help="set and show backend states")
    backend_commands = backend.add_subparsers(title="backend commands", metavar="ACTION")
    backend.set_defaults(handler=lambda args: usage(backend))
    change = backend_commands.add_parser(
        "set", parents=[common], help="set a backend's state on every replica"
    )
    change.add_argument("address", metavar="HOST:PORT")
    change.add_argument(
        "--state",
        choices=STATES,
        required=True,
        help="online: takes logins; standby: only when no online backend can; "
        "evacuate: no new logins, and its sessions end once idle or at the deadline; "
        "offline: never used",
    )
    change.add_argument(
        "--deadline",
        metavar="DURATION",
        help="with evacuate: when every session left on the backend ends, from now "
        f"(30s, 10m, 1h; default {int(EVACUATE_DEADLINE // 60)}m)",
    )
    change.set_defaults(handler=cmd_backend_set)
    listing = backend_commands.add_parser(
        "list", parents=[common], help="the backends whose state is not online"
    )
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.set_defaults(handler=cmd_backend_list)


def canonical_address(text: str) -> str:
    """``HOST:PORT`` spelled as the proxy spells a backend (``[::1]:110`` for IPv6)."""
    try:
        parsed = parse_backend_address(text)
    except ValueError as error:
        raise CommandError(f"backend address: {error}", EXIT_USAGE) from None
    return Backend(host=parsed["host"], port=parsed["port"]).address


def evacuation_seconds(args: argparse.Namespace) -> float | None:
    """``--deadline`` as seconds from now (the default for evacuate); None otherwise."""
    if args.deadline is None:
        return EVACUATE_DEADLINE if args.state == EVACUATE else None
    if args.state != EVACUATE:
        raise CommandError("--deadline: only with --state evacuate", EXIT_USAGE)
    try:
        return parse_duration(args.deadline)
    except ValueError as error:
        raise CommandError(f"--deadline: {error}", EXIT_USAGE) from None


def cmd_backend_set(args: argparse.Namespace) -> int:
    address = canonical_address(args.address)
    seconds = evacuation_seconds(args)
    store = redis_store(args)
    previous = read_states(store.client, store.prefix).get(address, ONLINE)
    deadline = time.time() + seconds if seconds is not None else None
    write_state(store.client, store.prefix, address, args.state, deadline)
    extra = {"deadline": utc_text(deadline)} if deadline is not None else {}
    log_action(
        "backend state set",
        "backend_set",
        backend=address,
        state=args.state,
        previous=previous,
        **extra,
    )
    until = f", sessions left end by {utc_text(deadline)}" if deadline is not None else ""
    print(f"{address}: {args.state} (was {previous}){until}")
    return EXIT_OK


def cmd_backend_list(args: argparse.Namespace) -> int:
    store = redis_store(args)
    states, deadlines = read_backend_states(store.client, store.prefix)
    rows: list[dict[str, str | None]] = [
        {
            "backend": address,
            "state": states[address],
            "deadline": utc_text(deadlines[address]) if address in deadlines else None,
        }
        for address in sorted(states)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("every backend is online (no state set)")
        return EXIT_OK
    width = max(len(str(row["backend"])) for row in rows)
    print(f"{'BACKEND':<{width}}  {'STATE':<8}  DEADLINE")
    for row in rows:
        print(f"{row['backend']:<{width}}  {row['state']:<8}  {row['deadline'] or '-'}".rstrip())
    return EXIT_OK
