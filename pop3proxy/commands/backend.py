"""``pop3proxy backend ...``: the operator's state of each backend address.

The state lives in one Redis hash (``<prefix>:backend-state``) shared by
every replica and tenant; each proxy process reads it within a second or
two (:class:`pop3proxy.backends.BackendStates`). ``online`` is stored as
the absence of an entry, so the hash only ever holds exceptions.
"""

from __future__ import annotations

import argparse
import json

from pop3proxy.backends import ONLINE, STATES, read_states, state_key
from pop3proxy.commands import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    log_action,
    redis_store,
    usage,
)
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
        "evacuate: no new logins; offline: never used",
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


def cmd_backend_set(args: argparse.Namespace) -> int:
    address = canonical_address(args.address)
    store = redis_store(args)
    key = state_key(store.prefix)
    previous = read_states(store.client, store.prefix).get(address, ONLINE)
    if args.state == ONLINE:
        store.client.hdel(key, address)
    else:
        store.client.hset(key, address, args.state)
    log_action(
        "backend state set", "backend_set", backend=address, state=args.state, previous=previous
    )
    print(f"{address}: {args.state} (was {previous})")
    return EXIT_OK


def cmd_backend_list(args: argparse.Namespace) -> int:
    store = redis_store(args)
    states = read_states(store.client, store.prefix)
    rows = [{"backend": address, "state": states[address]} for address in sorted(states)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("every backend is online (no state set)")
        return EXIT_OK
    width = max(len(row["backend"]) for row in rows)
    print(f"{'BACKEND':<{width}}  STATE")
    for row in rows:
        print(f"{row['backend']:<{width}}  {row['state']}")
    return EXIT_OK
