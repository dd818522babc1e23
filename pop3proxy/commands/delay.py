"""``pop3proxy user delay``: pause the new logins of a user or a tenant on every replica.

``user delay alice@acme.example --for 10m`` (or ``--tenant acme.example``)
makes new logins wait at the proxy and then proceed, ``--mode refuse``
answers them ``-ERR [LOGIN-DELAY]`` instead; ``--lift`` ends a delay early,
``--list`` shows the delays in force. Sessions already logged in are not
touched (``pop3proxy kick`` ends them). The delays live in one Redis hash
that every replica reads about once a second (:mod:`pop3proxy.delays`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from pop3proxy.commands import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    existing_tenant,
    load,
    log_action,
    redis_store,
)
from pop3proxy.delays import (
    MODES,
    PROPAGATION_SECONDS,
    TENANT,
    USER,
    WAIT,
    Delay,
    lift_delay,
    longest_wait,
    read_delays,
    set_delay,
)
from pop3proxy.directory import RedisStore, Store
from pop3proxy.logs import utc_text
from pop3proxy.schema import parse_duration
from pop3proxy.tenants import Identity

UserOf = Callable[[argparse.Namespace, Store], Identity]
"""The canonical user ``args.user`` names (``user.py``'s rule for every user command)."""


def register(
    user_commands: argparse._SubParsersAction, common: argparse.ArgumentParser, user_of: UserOf
) -> None:
    delay = user_commands.add_parser(
        "delay",
        parents=[common],
        help="make new logins of a user or tenant wait (or be refused) on every replica",
    )
    delay.add_argument("user", nargs="?", metavar="USER@TENANT")
    delay.add_argument("--tenant", metavar="T", help="every user of tenant T")
    action = delay.add_mutually_exclusive_group(required=True)
    action.add_argument("--for", dest="duration", metavar="DURATION", help="e.g. 90s, 10m, 2h")
    action.add_argument("--lift", action="store_true", help="end the delay now")
    action.add_argument("--list", action="store_true", help="show the delays in force")
    delay.add_argument(
        "--mode",
        choices=MODES,
        default=WAIT,
        help="wait: logins wait for the end, then proceed (default); "
        "refuse: logins get [LOGIN-DELAY] until the end",
    )
    delay.add_argument("--reason", default="", metavar="TEXT", help="written to the logs")
    delay.add_argument("--json", action="store_true", help="--list as JSON")
    delay.set_defaults(handler=lambda args: cmd_user_delay(args, user_of))


def cmd_user_delay(args: argparse.Namespace, user_of: UserOf) -> int:
    if args.list:
        if args.user or args.tenant:
            raise CommandError("user delay --list: give no USER and no --tenant", EXIT_USAGE)
        return _list(args)
    if bool(args.user) == bool(args.tenant):
        raise CommandError("user delay: give either USER@TENANT or --tenant T", EXIT_USAGE)
    seconds = 0.0
    if args.duration is not None:
        try:
            seconds = parse_duration(args.duration)
        except ValueError as error:
            raise CommandError(f"--for: {error}", EXIT_USAGE) from None
        if seconds <= 0:
            raise CommandError("--for: expected a duration greater than zero", EXIT_USAGE)
    store = redis_store(args)
    if args.tenant:
        scope, key = TENANT, args.tenant.lower()
        tenant = key
    else:
        user = user_of(args, store)
        scope, key, tenant = USER, user.full, user.tenant
    if args.lift:
        return _lift(store, scope, key)
    existing_tenant(store, tenant)  # a typo must not pass for a delay nobody meets
    return _set(args, store, scope, key, seconds)


def _set(args: argparse.Namespace, store: RedisStore, scope: str, key: str, seconds: float) -> int:
    client, prefix = store.client, store.prefix
    until = time.time() + seconds
    delay = set_delay(client, prefix, scope, key, until, args.mode, args.reason)
    log_action(
        "login delay set",
        "user_delay",
        scope=scope,
        **{scope: key},
        until=round(until, 3),
        seconds=seconds,
        mode=delay.mode,
        reason=delay.reason or None,
    )
    print(
        f"login delay for {scope} {key}: {delay.mode} until {utc_text(until)} ({seconds:g}s); "
        f"every replica follows within {PROPAGATION_SECONDS:g}s"
    )
    can_wait = longest_wait(load(args).timeouts)
    if delay.mode == WAIT and seconds > can_wait:
        print(
            f"note: a login waits at most {can_wait:g}s (timeouts.auth less "
            "timeouts.backend_connect): until the last of it, logins get [LOGIN-DELAY]"
        )
    return EXIT_OK


def _lift(store: RedisStore, scope: str, key: str) -> int:
    client, prefix = store.client, store.prefix
    lifted = lift_delay(client, prefix, scope, key)
    log_action(
        "login delay lifted",
        "user_delay_lift",
        scope=scope,
        **{scope: key},
        found=lifted is not None,
    )
    if lifted is None:
        print(f"no login delay for {scope} {key}")
    else:
        print(
            f"login delay for {scope} {key} lifted; every replica follows within "
            f"{PROPAGATION_SECONDS:g}s"
        )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    store = redis_store(args)
    now = time.time()
    delays = sorted(
        read_delays(store.client, store.prefix, now).values(),
        key=lambda delay: (delay.scope, delay.key),
    )
    rows = [_row(delay, now) for delay in delays]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no login delays in force")
        return EXIT_OK
    header = ("SCOPE", "NAME", "MODE", "UNTIL (UTC)", "LEFT", "REASON")
    cells = [header] + [
        (
            str(row["scope"]),
            str(row["key"]),
            str(row["mode"]),
            utc_text(row["until"]),
            f"{row['remaining']:.0f}s",
            str(row["reason"] or "-"),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in cells) for column in range(len(header))]
    for line in cells:
        padded = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        print("  ".join(padded).rstrip())
    return EXIT_OK


def _row(delay: Delay, now: float) -> dict[str, Any]:
    return {**delay.as_dict(), "remaining": round(delay.remaining(now), 3)}
