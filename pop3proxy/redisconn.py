"""Connecting to Redis as operators deploy it, and knowing whether it is up.

One function builds the client from the ``directory`` configuration: a
single server (``redis://``, ``rediss://`` with a CA, ``unix://``), a
Sentinel-managed master, or a Cluster. Credentials come from the
environment or a file (a Kubernetes Secret), never from the YAML.

:class:`RedisHealth` is the one place that decides "Redis is down": it logs
the outage once and the recovery once (not once per login), keeps
``pop3proxy_redis_up`` current, and spaces out retries with a jittered
exponential backoff so that an outage costs logins nothing but a cache read.
Every caller of the process shares one: the directory, the failed-login
budgets and the session leases (:meth:`RedisHealth.call`), so a Redis that
hangs is waited for once, not once per caller and connection.

:class:`BackgroundReader` is the one loop that keeps a process's copy of
some shared state (backend states, login delays, the UIDL map index) read
from Redis once a second, so that no login waits for Redis to learn it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import gevent
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from pop3proxy import metrics
from pop3proxy.config import DirectoryConfig

log = logging.getLogger("pop3proxy.directory")

ENV_USERNAME = "POP3PROXY_REDIS_USERNAME"
# The environment variable's name, not a secret.
ENV_PASSWORD = "POP3PROXY_REDIS_PASSWORD"  # noqa: S105  # nosec B105

BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
"""Retry delays after a failure: 0.1 s doubling to 5 s, each +-20 % jitter so
that replicas do not reconnect in lockstep."""


T = TypeVar("T")


def as_text(value: bytes | str) -> str:
    """A key, field or value as Redis returned it: bytes from a client built
    without ``decode_responses`` (the proxy's), text from one built with it."""
    return value.decode() if isinstance(value, bytes) else value


class CredentialsError(Exception):
    """The password file cannot be read."""


def credentials(config: DirectoryConfig) -> tuple[str | None, str | None]:
    """ACL user and password: environment first, then the configured file."""
    username = os.environ.get(ENV_USERNAME) or config.redis_username
    password = os.environ.get(ENV_PASSWORD)
    if password is None and config.redis_password_file:
        try:
            with open(config.redis_password_file, encoding="utf-8") as file:
                password = file.read().rstrip("\r\n")
        except OSError as error:
            raise CredentialsError(
                f"directory.redis_password_file: cannot read: {error.strerror}"
            ) from None
    return username, password


def connection_options(config: DirectoryConfig) -> dict[str, Any]:
    """Keyword arguments every Redis connection of the directory gets."""
    username, password = credentials(config)
    options: dict[str, Any] = {
        "socket_timeout": config.redis_timeout,
        "socket_connect_timeout": config.redis_timeout,
        # One retry on a fresh connection (a pooled one may predate a Redis
        # restart); more would only make a login wait during an outage.
        "retry": Retry(NoBackoff(), 1),
    }
    if username is not None:
        options["username"] = username
    if password is not None:
        options["password"] = password
    if urlparse(config.redis_url).scheme == "rediss":
        options["ssl_cert_reqs"] = "required"
        if config.redis_ca_file:
            options["ssl_ca_certs"] = config.redis_ca_file
    return options


def connect(config: DirectoryConfig) -> redis.Redis | RedisCluster:
    """A client for the configured deployment; connects lazily."""
    options = connection_options(config)
    pool_size = config.redis_pool_size
    if config.cluster:
        return RedisCluster.from_url(config.redis_url, max_connections=pool_size, **options)
    if config.sentinel is not None:
        url = urlparse(config.redis_url)
        db = int(url.path.strip("/") or 0)
        master_options = dict(options)
        if url.scheme == "rediss":
            master_options["ssl"] = True
        secret = ("username", "password")  # sentinels have their own (usually no) ACL
        sentinel_options = {k: v for k, v in master_options.items() if k not in secret}
        sentinel = Sentinel(
            list(config.sentinel.addresses),
            sentinel_kwargs=sentinel_options,
            **master_options,
        )
        return sentinel.master_for(config.sentinel.master, db=db, max_connections=pool_size)
    pool = redis.BlockingConnectionPool.from_url(
        config.redis_url, max_connections=pool_size, timeout=config.redis_timeout, **options
    )
    return redis.Redis(connection_pool=pool)


def describe(config: DirectoryConfig) -> str:
    """Where the directory's Redis is, for logs (no credentials)."""
    if config.sentinel is not None:
        addresses = ",".join(f"{host}:{port}" for host, port in config.sentinel.addresses)
        return f"sentinel {config.sentinel.master}@{addresses}"
    url = urlparse(config.redis_url)
    where = url.hostname or url.path
    port = f":{url.port}" if url.port else ""
    return f"{'cluster ' if config.cluster else ''}{url.scheme}://{where}{port}"


class Backoff:
    """Jittered exponential delays: ``next()`` grows, ``reset()`` starts over."""

    def __init__(self, minimum: float = BACKOFF_MIN, maximum: float = BACKOFF_MAX) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._current = minimum

    def next(self) -> float:
        delay = self._current
        self._current = min(self._current * 2, self.maximum)
        # Jitter for retries, not a secret.
        return delay * random.uniform(0.8, 1.2)  # noqa: S311  # nosec B311

    def reset(self) -> None:
        self._current = self.minimum


class RedisHealth:
    """Up or down, with the transitions logged once and retries spaced out.

    While down, :meth:`should_try` lets one probe through per backoff step
    (a half-open circuit breaker); the callers fail at once and fall back
    (stale cache, per-process limits), so logins never wait on a dead Redis.
    With a ``probe`` (a PING), the probe runs in a greenlet of its own and
    no caller waits at all: a Redis that hangs rather than refuses costs a
    probe its timeout, never a client its greeting. Without one, the caller
    let through is the probe.
    """

    def __init__(
        self,
        where: str,
        clock: Any = time.monotonic,
        probe: Callable[[], object] | None = None,
    ) -> None:
        self.where = where
        self.up: bool | None = None
        """``None`` until the first call tells."""
        self.probe = probe
        self._clock = clock
        self._backoff = Backoff()
        self._retry_at = 0.0
        self._down_since = 0.0
        self._probing = False
        self._lock = threading.Lock()

    def should_try(self) -> bool:
        if self.up is not False:
            return True
        with self._lock:
            now = self._clock()
            if now < self._retry_at or self._probing:
                return False
            if self.probe is None:
                self._retry_at = now + self._backoff.next()  # one probe per step
                return True
            self._probing = True
        gevent.spawn(self._probe_once)
        return False

    def _probe_once(self) -> None:
        """The next step counts from the probe's end: a hung Redis makes each
        probe last a timeout, which must not eat the step."""
        assert self.probe is not None
        try:
            self.probe()
        except (redis.RedisError, OSError) as error:
            self.failed(error)
            with self._lock:
                self._retry_at = self._clock() + self._backoff.next()
        else:
            self.ok()
        finally:
            self._probing = False

    def call(self, request: Callable[[], T], fallback: Callable[[], T]) -> T:
        """``request()`` on Redis while it is worth trying, else ``fallback()``
        at once; a failed request falls back too. What Redis did (answered,
        failed) is reported here, so every caller feeds the same view."""
        if not self.should_try():
            return fallback()
        try:
            result = request()
        except (redis.RedisError, OSError) as error:
            self.failed(error)
            return fallback()
        self.ok()
        return result

    def ok(self) -> None:
        metrics.set_gauge(metrics.REDIS_UP, value=1)
        if self.up is True:
            return
        with self._lock:
            was_down, self.up = self.up is False, True
            self._backoff.reset()
        if was_down:
            outage = round(self._clock() - self._down_since, 3)
            log.warning("redis reachable again", extra={"redis": self.where, "outage": outage})
        else:
            log.info("redis connected", extra={"redis": self.where})

    def failed(self, error: BaseException) -> None:
        metrics.set_gauge(metrics.REDIS_UP, value=0)
        with self._lock:
            now = self._clock()
            was_up, self.up = self.up is not False, False
            if was_up:
                self._down_since = now
                self._backoff.reset()
                self._retry_at = now + self._backoff.next()
        if was_up:
            log.error(
                "redis unreachable: serving cached tenants and local limits, retrying with backoff",
                extra={"redis": self.where, "error": str(error) or type(error).__name__},
            )


class BackgroundReader:
    """One process's copy of some state kept in Redis, read again every
    ``refresh`` seconds in a greenlet of its own, so that a login only ever
    reads memory (the backend states, the login delays, the UIDL map index).

    A subclass says how to read in :meth:`update`, through :attr:`health`
    (:meth:`RedisHealth.call`), keeping what it last read when Redis cannot
    be reached. Without Redis (``client`` is ``None``: a file store) nothing
    is read and the copy stays as built.
    """

    def __init__(
        self, client: Any, prefix: str, health: RedisHealth | None, refresh: float
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.health = health or RedisHealth("redis")
        self.refresh = refresh
        self._reader: gevent.Greenlet | None = None

    def update(self) -> None:
        """Read once from Redis and apply what changed."""
        raise NotImplementedError

    def start(self) -> None:
        """Read once now (the first login already sees the state), then in the background."""
        if self.client is not None and self._reader is None:
            self.update()
            self._reader = gevent.spawn(self._read_forever)

    def stop(self) -> None:
        if self._reader is not None:
            self._reader.kill(block=False)
            self._reader = None

    def _read_forever(self) -> None:
        while True:
            gevent.sleep(self.refresh)
            self.update()
