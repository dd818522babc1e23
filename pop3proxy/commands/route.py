"""``pop3proxy route USER@TENANT``: what a login would do now, without logging in.

Every answer comes from the functions a login itself runs (the name split
and the SNI rule of :mod:`pop3proxy.login`, the tenant's identity rule,
:func:`pop3proxy.backends.try_order`, the failure budgets' and session
slots' own reads, the login delays' own choice, the UIDL maps' own rule),
so the explanation cannot drift from a real login. The breaker of a backend
lives in each replica's memory: the CLI does not know it and says so.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import time
from typing import Any

from pop3proxy.backends import ONLINE, read_backend_states, try_order
from pop3proxy.commands import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    configured_store,
    load,
)
from pop3proxy.config import Config
from pop3proxy.delays import REFUSE, Delays, longest_wait, read_delays
from pop3proxy.directory import Directory, DirectoryUnavailable
from pop3proxy.downloads import counter_key, window
from pop3proxy.limits import AllowList, FailureLimiter, LeaseLimiter, Slot
from pop3proxy.login import sni_tenant
from pop3proxy.logs import utc_text
from pop3proxy.migration import read_info
from pop3proxy.routing import Rotation
from pop3proxy.tenants import MalformedName, UserName, split_user

BREAKER_UNKNOWN = "not known from the CLI (each replica keeps its own)"


def register(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    route = commands.add_parser(
        "route", parents=[common], help="explain what a login would do now, without logging in"
    )
    route.add_argument("user", metavar="USER[@TENANT]")
    route.add_argument("--from", dest="address", metavar="ADDRESS", help="the client's address")
    route.add_argument("--sni", metavar="NAME", help="the TLS server name the client asks for")
    route.add_argument("--json", action="store_true", help="JSON instead of text")
    route.set_defaults(handler=cmd_route)


def cmd_route(args: argparse.Namespace) -> int:
    if args.address is not None:
        try:
            ipaddress.ip_address(args.address)
        except ValueError:
            raise CommandError(
                f"--from: expected an IP address, got {args.address!r}", EXIT_USAGE
            ) from None
    config = load(args)
    directory = Directory(configured_store(args), config.directory)
    try:
        route = explain(config, directory, args.user, args.address, args.sni)
    except DirectoryUnavailable as error:
        raise CommandError(str(error)) from None
    if args.json:
        print(json.dumps(route, indent=2))
    else:
        print_route(route)
    return EXIT_FAILED if route.get("refused") else EXIT_OK


def explain(
    config: Config, directory: Directory, user: str, address: str | None, sni: str | None
) -> dict[str, Any]:
    """The route of a login of ``user`` from ``address`` asking for ``sni``."""
    tenancy = config.tenancy
    from_sni = sni_tenant(config, sni)
    route: dict[str, Any] = {"user": user}
    try:
        name: UserName = split_user(user, tenancy.separator, from_sni or tenancy.default_tenant)
    except MalformedName as error:
        return {**route, "refused": "malformed_name", "detail": str(error)}
    route["tenant"] = name.tenant
    route["tenant_from"] = _tenant_source(user, tenancy.separator, from_sni, name.tenant)
    route["limits"] = _budgets(config, directory, name.folded, address)
    if name.tenant is None:
        return {**route, "refused": "unknown_tenant"}
    tenant = directory.lookup(name.tenant)
    if tenant is None:
        return {**route, "refused": "unknown_tenant"}
    if not tenant.enabled:
        return {**route, "refused": "disabled"}
    identity = tenant.identity(name)
    pin = directory.pinned_backend(tenant, identity.local)
    client = directory.redis
    states, deadlines = (
        read_backend_states(client, config.directory.key_prefix) if client is not None else ({}, {})
    )
    order = try_order(tenant, identity.full, Rotation(), pin, lambda a: states.get(a, ONLINE))
    tried = [backend.address for backend in order]
    route.update(
        identity=identity.full,
        auth=tenant.auth,
        backend_login=tenant.backend_login(identity),
        policy=tenant.policy,
        pin=pin,
        backends=[
            {
                "backend": backend.address,
                "state": states.get(backend.address, ONLINE),
                "deadline": deadlines.get(backend.address),
                "try": tried.index(backend.address) + 1 if backend.address in tried else None,
                "breaker": BREAKER_UNKNOWN,
            }
            for backend in sorted(
                tenant.backends,
                key=lambda b: tried.index(b.address) if b.address in tried else len(tried),
            )
        ],
        max_attempts=config.backends.max_attempts,
    )
    if tenant.policy == "round_robin" and len(tenant.backends) > 1:
        route["note"] = "round_robin: each login of a replica starts one further along this order"
    route["limits"]["sessions"] = _sessions(
        config, directory, tenant.name, identity.full, tenant.max_sessions
    )
    route["delay"] = _delay(config, directory, tenant.name, identity.full)
    route["limits"]["download"] = _download(config, directory, identity.full)
    route["uidl_map"] = _uidl_map(config, directory, identity.full, tried)
    return route


def _uidl_map(
    config: Config, directory: Directory, user: str, tried: list[str]
) -> dict[str, Any] | None:
    """The user's UIDL map, when one is in force, and whether the backend
    tried first is the one it is for (:meth:`pop3proxy.migration.MapInfo.applies`,
    the login's own rule: a login elsewhere is not translated)."""
    if directory.redis is None:
        return None
    info = read_info(directory.redis, config.directory.key_prefix, user)
    now = time.time()
    if info is None or not info.live(now):
        return None
    return {
        "backend": info.backend,
        "entries": info.entries,
        "expires": info.expires,
        "translated_on_first_try": bool(tried) and info.applies(tried[0], now),
    }


def _download(config: Config, directory: Directory, user: str) -> dict[str, Any] | None:
    """The user's download budget and what every replica has counted today
    (up to the last second's flush); ``None`` with the budget off."""
    budget = config.limits.download_per_user_day
    if not budget:
        return None
    day, end = window(time.time())
    used = None
    if directory.redis is not None:
        counted = directory.redis.get(counter_key(config.directory.key_prefix, day, user))
        used = int(counted or 0)
    return {"budget": budget, "used_today": used, "window_ends": end}


def _delay(config: Config, directory: Directory, tenant: str, user: str) -> dict[str, Any] | None:
    """The login delay a login meets now, and what it does (the login's own rule,
    :meth:`pop3proxy.delays.Delays.current`, and the same allowance)."""
    if directory.redis is None:
        return None
    delays = Delays(None, config.directory.key_prefix)
    now = time.time()
    delays.delays = read_delays(directory.redis, config.directory.key_prefix, now)
    delay = delays.current(tenant, user, now)
    if delay is None:
        return None
    can_wait = longest_wait(config.timeouts)
    remaining = delay.remaining(now)
    refused = delay.mode == REFUSE or remaining > can_wait
    return {
        **delay.as_dict(),
        "remaining": round(remaining, 3),
        "login": "refused [LOGIN-DELAY]" if refused else f"waits {remaining:.0f}s, then proceeds",
    }


def _tenant_source(
    user: str, separator: str, from_sni: str | None, tenant: str | None
) -> str | None:
    if tenant is None:
        return None
    if separator in user:
        return "name"
    return "sni" if from_sni else "default_tenant"


def _budgets(
    config: Config, directory: Directory, budget: str, address: str | None
) -> dict[str, Any]:
    """The failure budgets a login checks first, as the login reads them."""
    auth = config.auth
    limiter = FailureLimiter(
        directory.redis, config.directory.key_prefix, auth, AllowList(auth.allow)
    )
    verdict = limiter.check(budget, address)
    return {
        "blocked": verdict.scope if verdict.blocked else None,
        "address_allowed": address in limiter.allow,
        "failures": limiter.counts(budget, address),
        "block_after": auth.block_after,
        "block_after_per_address": auth.block_after_per_address,
    }


def _sessions(
    config: Config, directory: Directory, tenant: str, user: str, tenant_limit: int
) -> dict[str, Any]:
    leases = LeaseLimiter(directory.redis, config.directory.key_prefix, config.limits.lease_ttl)
    slots = [Slot("tenant", tenant, tenant_limit)]
    if config.limits.max_sessions_per_user:
        slots.append(Slot("user", user, config.limits.max_sessions_per_user))
    return {
        slot.scope: {"in_use": leases.in_use(slot), "limit": slot.limit or None} for slot in slots
    }


def print_route(route: dict[str, Any]) -> None:
    print(f"user:      {route['user']}")
    if route.get("tenant"):
        print(f"tenant:    {route['tenant']} (from {route['tenant_from']})")
    if route.get("refused"):
        print(
            f"result:    refused: {route['refused']}"
            + (f" ({route['detail']})" if route.get("detail") else "")
        )
    if "identity" in route:
        print(f"identity:  {route['identity']} (backend login {route['backend_login']})")
        print(f"auth:      {route['auth']}")
        print(f"policy:    {route['policy']}" + (f"; {route['note']}" if route.get("note") else ""))
        print(f"pin:       {route['pin'] or 'none'}")
        print(f"backends (at most {route['max_attempts']} tried):")
        for row in route["backends"]:
            order = f"{row['try']}." if row["try"] else "-"
            deadline = f" (ends {utc_text(row['deadline'])})" if row.get("deadline") else ""
            print(
                f"  {order:<3} {row['backend']}  state={row['state']}{deadline}"
                f"  breaker: {row['breaker']}"
            )
    limits = route.get("limits")
    if limits:
        counts = ", ".join(f"{scope} {count}" for scope, count in limits["failures"].items())
        blocked = f"blocked ({limits['blocked']})" if limits["blocked"] else "not blocked"
        print(f"failures:  {counts}; {blocked}")
        for scope, slot in limits.get("sessions", {}).items():
            in_use = "unknown" if slot["in_use"] is None else slot["in_use"]
            print(f"sessions:  {scope} {in_use} in use, limit {slot['limit'] or 'none'}")
        download = limits.get("download")
        if download:
            used = "unknown" if download["used_today"] is None else download["used_today"]
            ends = time.strftime("%H:%M UTC", time.gmtime(download["window_ends"]))
            print(f"download:  {used} of {download['budget']} bytes today (until {ends})")
    if "uidl_map" in route:
        uidl_map = route["uidl_map"]
        if uidl_map is None:
            print("uidl map:  none")
        else:
            applies = "yes" if uidl_map["translated_on_first_try"] else "no"
            print(
                f"uidl map:  {uidl_map['entries']} UIDLs for {uidl_map['backend']} "
                f"(until {utc_text(uidl_map['expires'])}); "
                f"translated on the first backend tried: {applies}"
            )
    if "delay" in route:
        delay = route["delay"]
        if delay is None:
            print("delay:     none")
        else:
            reason = f", reason: {delay['reason']}" if delay["reason"] else ""
            print(
                f"delay:     {delay['scope']} {delay['key']}: {delay['mode']}, "
                f"{delay['remaining']:.0f}s left{reason}; the login {delay['login']}"
            )
