"""Moved mailboxes: each user's map from the new backend's UIDLs to the old ones.

A client that leaves mail on the server remembers each message by its UIDL.
When a mailbox moves to a server that numbers messages differently, the
proxy keeps the old UIDLs visible: ``pop3proxy migrate map`` matches both
mailboxes (:func:`match`) and stores the result here, and the relay answers
``UIDL`` with the old values while the user is on the new backend.

Redis layout (under the directory's key prefix):

``<prefix>:uidl-map:<user>``
    A hash, the new backend's UIDL -> the old one, expiring with the map.
``<prefix>:uidl-maps``
    A hash, user -> JSON :class:`MapInfo` (the backend the map is for, when
    it expires, how many entries, and the pin the user had before a cutover).
``<prefix>:uidl-maps:generation``
    A counter raised by every change of the index.

Each replica keeps the index in memory (:class:`UidlMaps`), read again in the
background only when the counter moved: a login of a user without a map
costs no Redis round trip; a user with one costs one ``HGETALL`` (then kept
in a small cache until the index changes). A map applies only to logins that
reach the backend it was made for, so the old backend (before the cutover,
after a rollback, or as a failover target) is relayed unchanged.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pop3proxy import metrics
from pop3proxy.redisconn import BackgroundReader, RedisHealth, as_text

log = logging.getLogger("pop3proxy.migration")

MAP_LIFETIME_DAYS = 90
"""Default lifetime of a map: clients that poll at all have long since
synchronised by then (``migrate map --expires DAYS`` changes it)."""
INDEX_REFRESH = 1.0
"""Seconds between two reads of the index's generation counter."""
CACHED_MAPS = 1000
"""Users whose map a replica keeps in memory (the most recently used)."""


def map_key(prefix: str, user: str) -> str:
    return f"{prefix}:uidl-map:{user}"


def index_key(prefix: str) -> str:
    return f"{prefix}:uidl-maps"


def generation_key(prefix: str) -> str:
    return f"{prefix}:uidl-maps:generation"


@dataclass(frozen=True)
class MapInfo:
    """One user's map as the index describes it."""

    backend: str
    """``host:port`` of the new backend: logins elsewhere are not translated."""
    expires: float
    """Unix time after which the map is gone (Redis expires the hash too)."""
    entries: int
    created: float
    old_backend: str | None = None
    """Where the mailbox came from (``migrate verify`` and ``rollback`` read it)."""
    previous_pin: str | None = None
    """The user's pin before ``migrate cutover`` replaced it; ``rollback`` restores it."""
    cutover: float | None = None
    """When ``migrate cutover`` pinned the user to :attr:`backend`, if it did."""

    def live(self, now: float) -> bool:
        return now < self.expires

    def applies(self, backend: str, now: float) -> bool:
        """A login that reached ``backend`` at ``now`` gets its UIDLs translated."""
        return backend == self.backend and self.live(now)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: bytes | str) -> MapInfo:
        data = json.loads(raw)
        return cls(
            backend=str(data["backend"]),
            expires=float(data["expires"]),
            entries=int(data["entries"]),
            created=float(data["created"]),
            old_backend=data.get("old_backend"),
            previous_pin=data.get("previous_pin"),
            cutover=data.get("cutover"),
        )


# -- matching two mailboxes (pure) ---------------------------------------------


@dataclass(frozen=True)
class Message:
    """One message as ``UIDL``, ``LIST`` and ``TOP n 0`` show it."""

    number: int
    uidl: bytes
    size: int
    headers: bytes
    """A digest of the message's header section."""


@dataclass
class Matching:
    """How two listings of one mailbox correspond."""

    old: int
    new: int
    uidl_map: dict[bytes, bytes] = field(default_factory=dict)
    """New UIDL -> old UIDL, for every paired message (ambiguous ones included)."""
    matched: int = 0
    """Pairs whose size and headers occur once on each side."""
    ambiguous: int = 0
    """Pairs among messages with the same size and headers (duplicates), paired in mailbox order."""
    unmatched_old: int = 0
    """Messages of the old mailbox with no counterpart: their clients will not see them again."""
    unmatched_new: int = 0
    """Messages of the new mailbox with no counterpart: clients fetch them as new mail."""
    order_preserved: bool = True
    """The paired messages come in the same order on both sides."""

    def report(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "matched": self.matched,
            "ambiguous": self.ambiguous,
            "unmatched_old": self.unmatched_old,
            "unmatched_new": self.unmatched_new,
            "order_preserved": self.order_preserved,
        }


def match(old: Iterable[Message], new: Iterable[Message]) -> Matching:
    """Pair the messages of two listings by size and header digest.

    A (size, headers) key found once on each side is a match. A key found
    several times (the same message delivered twice) pairs its messages in
    mailbox order and counts them as ambiguous: whichever way they pair, the
    client sees the same size and headers under the UIDL it knows. What is
    left on either side is unmatched.
    """
    old_list, new_list = list(old), list(new)
    result = Matching(old=len(old_list), new=len(new_list))
    by_key: dict[tuple[int, bytes], tuple[list[Message], list[Message]]] = defaultdict(
        lambda: ([], [])
    )
    for message in old_list:
        by_key[(message.size, message.headers)][0].append(message)
    for message in new_list:
        by_key[(message.size, message.headers)][1].append(message)
    pairs: list[tuple[Message, Message]] = []
    for olds, news in by_key.values():
        paired = min(len(olds), len(news))
        if len(olds) == 1 and len(news) == 1:
            result.matched += 1
        else:
            result.ambiguous += paired
        result.unmatched_old += len(olds) - paired
        result.unmatched_new += len(news) - paired
        pairs.extend(zip(olds, news, strict=False))
    pairs.sort(key=lambda pair: pair[1].number)
    old_numbers = [old_message.number for old_message, _ in pairs]
    result.order_preserved = old_numbers == sorted(old_numbers)
    result.uidl_map = {new_message.uidl: old_message.uidl for old_message, new_message in pairs}
    return result


# -- storing (the CLI) -----------------------------------------------------------


def store_map(
    client: Any,
    prefix: str,
    user: str,
    uidl_map: Mapping[bytes, bytes],
    info: MapInfo,
) -> None:
    """Replace ``user``'s map (one pipeline); every replica learns within
    :data:`INDEX_REFRESH` seconds."""
    key = map_key(prefix, user)
    ttl = max(1, int(info.expires - time.time()))
    pipe = client.pipeline(transaction=False)
    pipe.delete(key)
    entries = list(uidl_map.items())
    for start in range(0, len(entries), 1000):  # bounded commands for large mailboxes
        pipe.hset(key, mapping=dict(entries[start : start + 1000]))
    pipe.expire(key, ttl)
    pipe.hset(index_key(prefix), user, info.to_json())
    pipe.incr(generation_key(prefix))
    pipe.execute()


def update_info(client: Any, prefix: str, user: str, info: MapInfo) -> None:
    """Rewrite the index entry only (a cutover or rollback notes itself there)."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(index_key(prefix), user, info.to_json())
    pipe.incr(generation_key(prefix))
    pipe.execute()


def forget_map(client: Any, prefix: str, user: str) -> bool:
    """Remove ``user``'s map; ``False`` when there was none."""
    pipe = client.pipeline(transaction=False)
    pipe.delete(map_key(prefix, user))
    pipe.hdel(index_key(prefix), user)
    pipe.incr(generation_key(prefix))
    _, removed, _ = pipe.execute()
    return bool(removed)


def read_index(client: Any, prefix: str) -> dict[str, MapInfo]:
    """Every user's index entry, expired ones included (unreadable ones are skipped)."""
    index = {}
    for raw_user, raw_info in client.hgetall(index_key(prefix)).items():
        user = as_text(raw_user)
        info = _parse_info(user, raw_info)
        if info is not None:
            index[user] = info
    return index


def read_info(client: Any, prefix: str, user: str) -> MapInfo | None:
    """``user``'s index entry (expired or not), ``None`` without a readable one."""
    raw_info = client.hget(index_key(prefix), user)
    return None if raw_info is None else _parse_info(user, raw_info)


def _parse_info(user: str, raw_info: bytes | str) -> MapInfo | None:
    try:
        return MapInfo.from_json(raw_info)
    except (ValueError, KeyError, TypeError):
        log.warning("uidl map index entry unreadable: ignored", extra={"key": user[:200]})
        return None


def read_map(client: Any, prefix: str, user: str) -> dict[bytes, bytes]:
    return dict(client.hgetall(map_key(prefix, user)))


def remove_expired(client: Any, prefix: str, now: float | None = None) -> int:
    """Drop the index entries of expired maps (their hashes expired by themselves)."""
    now = time.time() if now is None else now
    expired = [user for user, info in read_index(client, prefix).items() if not info.live(now)]
    if expired:
        pipe = client.pipeline(transaction=False)
        pipe.hdel(index_key(prefix), *expired)
        pipe.incr(generation_key(prefix))
        pipe.execute()
    return len(expired)


# -- in the server -------------------------------------------------------------


class UidlMapUnavailable(Exception):
    """The user has a map for this backend but it cannot be read now: the
    login fails with ``-ERR [SYS/TEMP]`` rather than show new UIDLs, which
    would make the client download the whole mailbox again."""


class UidlMaps(BackgroundReader):
    """This replica's copy of the map index, refreshed from Redis in the background.

    Without Redis (a file store) nobody has a map. When Redis cannot be
    reached the index last read stays in force.
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        health: RedisHealth | None = None,
        refresh: float = INDEX_REFRESH,
    ) -> None:
        super().__init__(client, prefix, health, refresh)
        self.index: dict[str, MapInfo] = {}
        self.generation: bytes | None = None
        self._maps: OrderedDict[str, Mapping[bytes, bytes]] = OrderedDict()

    def update(self) -> None:
        """Read the generation counter; the index too when it moved."""
        generation = self.health.call(
            lambda: self.client.get(generation_key(self.prefix)) or b"", lambda: None
        )
        if generation is not None and generation != self.generation:
            index = self.health.call(lambda: read_index(self.client, self.prefix), lambda: None)
            if index is not None:
                self.index, self.generation = index, generation
                self._maps.clear()
        now = time.time()
        metrics.set_gauge(
            metrics.UIDL_MAPS, value=sum(1 for info in self.index.values() if info.live(now))
        )

    def for_login(self, user: str, backend: str) -> Mapping[bytes, bytes] | None:
        """``user``'s map when the login reached the backend it is for, else ``None``.

        Raises :class:`UidlMapUnavailable` when it exists but cannot be read.
        """
        info = self.index.get(user)
        if info is None or not info.applies(backend, time.time()):
            return None
        cached = self._maps.get(user)
        if cached is not None:
            self._maps.move_to_end(user)
            return cached
        loaded = self.health.call(lambda: read_map(self.client, self.prefix, user), lambda: None)
        if loaded is None:
            raise UidlMapUnavailable("redis unreachable: the user's UIDL map cannot be read")
        self._maps[user] = loaded
        if len(self._maps) > CACHED_MAPS:
            self._maps.popitem(last=False)
        return loaded
