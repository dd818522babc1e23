"""Live sessions of every replica, in Redis: what ``who`` lists and ``kick`` ends.

Each running proxy process (a *replica*: one per worker) keeps a hash
``<prefix>:sessions:<replica>`` of session id -> JSON description of its
logged-in sessions, and its name with a last-seen time in the sorted set
``<prefix>:replicas``. It writes them from a timer, once every
:data:`SYNC_INTERVAL` in one pipeline, never on the login path: a session
that nobody lists or kicks costs no Redis round trip of its own. The hash
expires unless refreshed, so a replica that dies leaves nothing behind for
long.

A kick travels on the change channel (:mod:`pop3proxy.invalidation`) as
``kick:<json>``. Every replica ends its matching sessions and pushes how
many onto ``<prefix>:kick:<id>``; the CLI, which learnt from PUBLISH how
many replicas heard it, adds up their answers.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from pop3proxy import invalidation
from pop3proxy.redisconn import as_text

log = logging.getLogger("pop3proxy.sessions")

SYNC_INTERVAL = 1.0
"""Seconds between two registry writes of a replica (new, changed, ended sessions)."""
ENTRY_TTL = 10
"""Seconds a replica's hash outlives its last write (a killed replica's entries go)."""
KICK_REPLY_TTL = 60
KICK_GRACE = 0.2
"""Seconds a kick waits, once every listed replica answered, for subscribers
that are not listed (a replica just started; a supervisor, which never answers)."""
KICK_PREFIX = "kick:"
SCOPES = ("user", "tenant", "backend", "session", "from", "credential")

Entry = dict[str, Any]
"""One session as ``who`` shows it: id, user, tenant, client, listener,
backend, credential (an app password's id), phase, started (Unix time),
bytes_in, bytes_out, replica."""


def replica_name() -> str:
    """This process: host and pid, unique among live replicas."""
    return f"{socket.gethostname()}:{os.getpid()}"


def registry_key(prefix: str, replica: str) -> str:
    return f"{prefix}:sessions:{replica}"


def replicas_key(prefix: str) -> str:
    return f"{prefix}:replicas"


def kick_reply_key(prefix: str, kick_id: str) -> str:
    return f"{prefix}:kick:{kick_id}"


@dataclass(frozen=True)
class KickScope:
    """Which sessions a kick (or a ``who`` filter) is about: one scope and its value.

    ``credential`` is ``USER/ID``: the sessions that logged in with that user's
    app password ``ID`` (ids are unique per user only); ``USER/*``: with any
    of the user's app passwords (the user record, and all of them with it, is gone).
    """

    scope: str
    value: str

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"unknown kick scope {self.scope!r}")
        if self.scope == "from":
            ipaddress.ip_network(self.value, strict=False)  # ValueError when not a CIDR

    def matches(self, entry: Mapping[str, Any]) -> bool:
        if self.scope == "from":
            client = entry.get("client")
            if not client:
                return False
            try:
                return ipaddress.ip_address(client) in ipaddress.ip_network(
                    self.value, strict=False
                )
            except ValueError:
                return False
        if self.scope == "credential":
            used = entry.get("credential")
            if used is None:
                return False
            user, _, wanted = self.value.lower().rpartition("/")
            return str(entry.get("user")).lower() == user and wanted in ("*", str(used).lower())
        field = {"user": "user", "tenant": "tenant", "backend": "backend", "session": "id"}
        actual = entry.get(field[self.scope])
        if actual is None:
            return False
        if self.scope == "session":
            return bool(actual == self.value)
        return bool(str(actual).lower() == self.value.lower())


# -- in the server ------------------------------------------------------------


class SessionRegistry:
    """One replica's hash of live sessions, written in batches by :meth:`sync`."""

    def __init__(self, client: Any, prefix: str, replica: str | None = None) -> None:
        self.client = client
        self.prefix = prefix
        self.replica = replica or replica_name()
        self.key = registry_key(prefix, self.replica)
        self._written: dict[str, Hashable] = {}
        """What Redis holds for this replica as of the last successful write."""

    def sync(self, states: Mapping[str, Hashable], describe: Callable[[str], Entry]) -> None:
        """Write what changed since the last call, drop what ended, refresh the
        TTL: one pipeline. ``states`` maps each live session's id to a cheap
        token of what it shows (phase, bytes); only a session whose token
        changed is described and written again. Raises the Redis error when
        it could not write (the next call writes everything again)."""
        written = self._written
        changed = {
            session: json.dumps(describe(session), separators=(",", ":"))
            for session, state in states.items()
            if written.get(session) != state
        }
        gone = [session for session in written if session not in states]
        pipe = self.client.pipeline(transaction=False)
        if changed:
            pipe.hset(self.key, mapping=changed)
        if gone:
            pipe.hdel(self.key, *gone)
        pipe.expire(self.key, ENTRY_TTL)
        pipe.zadd(replicas_key(self.prefix), {self.replica: time.time()})
        try:
            pipe.execute()
        except Exception:
            # Unknown what arrived: every live session is written again next
            # time, and every session written so far and gone since deleted.
            self._written = dict.fromkeys(written.keys() | states.keys())
            raise
        self._written = dict(states)

    def clear(self) -> None:
        """The replica stops: its sessions are gone."""
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.key)
        pipe.zrem(replicas_key(self.prefix), self.replica)
        pipe.execute()
        self._written = {}


@dataclass(frozen=True)
class Kick:
    """A kick as a replica receives it."""

    id: str
    scope: KickScope
    reason: str
    by: str | None
    """Who asked for it (``operator@host``), when the sender said."""


class RecentKicks:
    """The kicks this replica ended sessions for in the last few seconds.

    A kick ends the sessions that match *when it arrives*; a login still
    under way then (tenant looked up, password accepted, backend login
    waiting) has no user or tenant to match yet and would go on with what
    the kick withdrew. So each replica keeps its kicks for as long as a
    login can take (``keep()``: ``timeouts.auth`` and a margin), and a
    session that finishes its login asks :meth:`matching` before it enters
    TRANSACTION. Kicks are rare: for every other session that is one test
    of an empty list.
    """

    def __init__(self, keep: Callable[[], float]) -> None:
        self._keep = keep
        self._kicks: list[tuple[float, KickScope]] = []
        """(monotonic time it was applied, scope), oldest first."""

    def __bool__(self) -> bool:
        """Any kick kept (some may be old enough to be forgotten at the next look)."""
        return bool(self._kicks)

    def add(self, scope: KickScope, at: float) -> None:
        self._forget_before(at - self._keep())
        self._kicks.append((at, scope))

    def matching(self, entry: Mapping[str, Any], since: float, now: float) -> KickScope | None:
        """The first kick applied at or after ``since`` (a login's start, monotonic)
        that matches ``entry`` (the session as :meth:`KickScope.matches` reads it)."""
        if not self._kicks:
            return None
        self._forget_before(now - self._keep())
        for at, scope in self._kicks:
            if at >= since and scope.matches(entry):
                return scope
        return None

    def _forget_before(self, oldest: float) -> None:
        kicks = self._kicks
        while kicks and kicks[0][0] < oldest:
            del kicks[0]


def parse_kick(message: str) -> Kick:
    """``kick:<json>`` (without its ``kick:``) -> the kick."""
    data = json.loads(message)
    by = data.get("by")
    return Kick(
        id=str(data["id"]),
        scope=KickScope(str(data["scope"]), str(data["value"])),
        reason=str(data["reason"]),
        by=str(by) if by is not None else None,
    )


def answer_kick(client: Any, prefix: str, kick_id: str, replica: str, count: int) -> None:
    """Tell the CLI that waits how many sessions this replica ended."""
    key = kick_reply_key(prefix, kick_id)
    pipe = client.pipeline(transaction=False)
    pipe.rpush(key, json.dumps({"replica": replica, "count": count}))
    pipe.expire(key, KICK_REPLY_TTL)
    pipe.execute()


# -- in the CLI ---------------------------------------------------------------


def operator() -> str:
    """Who runs this command, for the log lines of what it changes: the user
    behind sudo if any, and the host."""
    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def live_sessions(client: Any, prefix: str) -> list[Entry]:
    """Every live replica's sessions: two round trips whatever their number."""
    since = time.time() - ENTRY_TTL
    replicas = [as_text(name) for name in client.zrangebyscore(replicas_key(prefix), since, "+inf")]
    pipe = client.pipeline(transaction=False)
    for replica in replicas:
        pipe.hvals(registry_key(prefix, replica))
    sessions: list[Entry] = []
    for replica, values in zip(replicas, pipe.execute(), strict=True):
        for raw in values:
            entry = json.loads(raw)
            entry["replica"] = replica
            sessions.append(entry)
    sessions.sort(key=lambda entry: (entry.get("started") or 0, entry.get("id") or ""))
    return sessions


@dataclass
class KickResult:
    ended: int
    replicas: int
    answered: int


def kick(client: Any, prefix: str, scope: KickScope, reason: str, wait: float = 2.0) -> KickResult:
    """Publish a kick and add up the replicas' answers, waiting up to ``wait`` seconds.
    Each replica logs it with who asked (:func:`operator`)."""
    kick_id = uuid.uuid4().hex
    message = json.dumps(
        {
            "id": kick_id,
            "scope": scope.scope,
            "value": scope.value,
            "reason": reason,
            "by": operator(),
        }
    )
    receivers = invalidation.publish(client, prefix, KICK_PREFIX + message)
    # Not every subscriber runs sessions (with ``workers: N`` the supervisor
    # listens too, and never answers): the live replicas' answers are awaited
    # up to ``wait``, any other subscriber's only for a short grace (a replica
    # that started a moment ago may not be listed yet).
    expected = min(receivers, client.zcount(replicas_key(prefix), time.time() - ENTRY_TTL, "+inf"))
    key = kick_reply_key(prefix, kick_id)
    deadline = time.monotonic() + wait
    grace_until: float | None = None
    ended = answered = 0
    while answered < receivers:
        now = time.monotonic()
        if answered >= expected and grace_until is None:
            grace_until = now + KICK_GRACE
        until = deadline if grace_until is None else min(deadline, grace_until)
        if until <= now:
            break
        reply = client.blpop([key], timeout=max(until - now, 0.01))
        if reply is None:
            break
        ended += int(json.loads(reply[1])["count"])
        answered += 1
    client.delete(key)
    return KickResult(ended=ended, replicas=max(expected, answered), answered=answered)
