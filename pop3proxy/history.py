"""The last logins of each user, kept in Redis for ``pop3proxy user history``.

Support starts from a name ("alice cannot log in since 9:00"): this answers
when, from where, on which listener, how, with what result and on which
backend alice (or someone with her name) last tried. One list per user,
newest first, capped (``limits.login_history``) and expiring
(``limits.login_history_ttl``) so an idle user's list goes away.

A login adds its entry after it is done, in a greenlet of its own: one
pipelined round trip (LPUSH, LTRIM, EXPIRE) that the client never waits
for. A login with an app password also notes, in the same round trip, when
and from where that app password was last used (``<prefix>:app-password-used:
<user>``, id -> JSON): apart from the user record, which a login never
rewrites. Only logins whose tenant exists get an entry: a guesser's invented
tenants would otherwise fill Redis with lists nobody reads.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from pop3proxy.redisconn import RedisHealth, as_text


@dataclass(frozen=True, slots=True)
class LoginRecord:
    """One login attempt, as ``user history`` shows it."""

    time: float
    """Seconds since the epoch."""
    client: str | None
    listener: str | None
    mechanism: str
    """``USER`` (USER and PASS) or ``PLAIN`` (AUTH PLAIN): how the client sent it."""
    result: str
    """As the ``pop3proxy_auth_total`` result label: ``ok``, ``bad_credentials``, ..."""
    backend: str | None = None
    credential: str | None = None
    """The app password's id, for a login with one."""
    label: str | None = None
    """And its label."""

    def stored(self) -> str:
        data = asdict(self)
        for optional in ("credential", "label"):  # readable by versions without them
            if data[optional] is None:
                del data[optional]
        return json.dumps(data, separators=(",", ":"))


def last_used_key(prefix: str, user: str) -> str:
    """The hash app password id -> JSON ``{"time": ..., "client": ...}`` of ``user``."""
    return f"{prefix}:app-password-used:{user}"


class LoginHistory:
    """Per-user capped lists in Redis; every call goes through :class:`RedisHealth`."""

    def __init__(
        self, client: Any, prefix: str, health: RedisHealth, size: int, ttl: float
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.health = health
        self.size = size
        self.ttl = ttl

    def key(self, user: str) -> str:
        return f"{self.prefix}:history:{user}"

    def record(self, user: str, entry: LoginRecord) -> None:
        """Add ``entry`` to ``user``'s list, and note its app password's last
        use: one pipelined round trip; nothing when the history is off (and no
        app password was used) or Redis is down (a lost entry is no harm)."""
        if self.client is None or not (self.size or entry.credential):
            return
        key = self.key(user)

        def in_redis() -> None:
            pipe = self.client.pipeline(transaction=False)
            if self.size:
                pipe.lpush(key, entry.stored())
                pipe.ltrim(key, 0, self.size - 1)
                pipe.expire(key, max(int(self.ttl), 1))
            if entry.credential:
                used = json.dumps({"time": entry.time, "client": entry.client})
                pipe.hset(last_used_key(self.prefix, user), entry.credential, used)
            pipe.execute()

        self.health.call(in_redis, lambda: None)

    def read(self, user: str) -> list[LoginRecord]:
        """``user``'s entries, newest first. Raises what Redis raises (the CLI
        reports it): an empty answer must mean no logins, not no Redis."""
        entries = []
        for raw in self.client.lrange(self.key(user), 0, -1):
            try:
                entries.append(LoginRecord(**json.loads(raw)))
            except (ValueError, TypeError):
                continue  # not ours: skipped rather than fail the listing
        return entries


def last_used(client: Any, prefix: str, user: str) -> dict[str, dict[str, Any]]:
    """``user``'s app password ids -> ``{"time": ..., "client": ...}`` of their
    last login. Raises what Redis raises (the CLI reports it)."""
    used = {}
    for password_id, raw in client.hgetall(last_used_key(prefix, user)).items():
        name = as_text(password_id)
        try:
            used[name] = json.loads(raw)
        except ValueError:
            continue  # not ours: shown as never used
    return used
