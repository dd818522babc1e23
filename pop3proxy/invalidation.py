"""Cache invalidation over Redis pub/sub: ``<prefix>:changes``.

The admin commands publish one message per change; every running proxy
subscribes and drops that entry from its cache at once, so a change is seen
everywhere within a round trip instead of after ``cache_ttl``.

Messages are short strings: ``tenant:<name>``, ``user:<tenant>:<local>``,
or ``all`` (after a bulk import). Pub/sub is fire-and-forget, so a proxy
that loses its subscription may have missed some: each time the
subscription is (re)established, the proxy marks its whole cache due for a
reload (keeping the records as a stale fallback in case Redis goes away
again). Plain PUBLISH/SUBSCRIBE reaches every node of a Redis Cluster and
the replicas of a Sentinel-managed master.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event

from pop3proxy.redisconn import Backoff, RedisHealth

log = logging.getLogger("pop3proxy.directory")

ALL = "all"
PING_EVERY = 5.0
"""Seconds of silence after which the subscriber PINGs; three unanswered
intervals mean the connection is dead even if TCP has not noticed."""


def channel(prefix: str) -> str:
    return f"{prefix}:changes"


def tenant_message(name: str) -> str:
    return f"tenant:{name}"


def user_message(tenant: str, local: str) -> str:
    return f"user:{tenant}:{local}"


def publish(client: Any, prefix: str, message: str) -> int:
    """Tell every subscribed proxy; returns how many received it (cluster: per node)."""
    return int(client.publish(channel(prefix), message))


class Subscriber:
    """A greenlet that keeps one subscription alive and hands messages on.

    ``on_message(text)`` gets each change; ``on_subscribed()`` runs every
    time the subscription is confirmed (first start and every reconnect).
    """

    def __init__(
        self,
        client: Any,
        prefix: str,
        health: RedisHealth,
        on_message: Callable[[str], None],
        on_subscribed: Callable[[], None],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client = client
        self.channel = channel(prefix)
        self.health = health
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self._stop = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._clock = clock or time.monotonic

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        self._stop.set()
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)

    def _run(self) -> None:
        backoff = Backoff()
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self.client.pubsub()
                pubsub.subscribe(self.channel)
                self._listen(pubsub, backoff)
            except Exception as error:  # any Redis or socket failure: reconnect
                self.health.failed(error)
                self._stop.wait(backoff.next())
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):  # closing a broken connection
                        pubsub.close()

    def _listen(self, pubsub: Any, backoff: Backoff) -> None:
        last_heard = self._clock()
        pinged = False
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=1.0)
            now = self._clock()
            if message is None:
                silent = now - last_heard
                if silent > 3 * PING_EVERY:
                    raise ConnectionError("subscription silent: no answer to PING")
                if silent > PING_EVERY and not pinged:
                    pubsub.ping()
                    pinged = True
                continue
            last_heard, pinged = now, False
            kind = message.get("type")
            if kind == "subscribe":
                # Also seen when redis-py reconnects and resubscribes by itself:
                # either way, messages may have been missed meanwhile.
                backoff.reset()
                self.health.ok()
                self.on_subscribed()
            elif kind == "message":
                data = message.get("data")
                text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
                try:
                    self.on_message(text)
                except Exception:
                    log.exception("invalidation message failed", extra={"change": text[:200]})
