"""Every metric the proxy exports, and the HTTP endpoints that serve them.

Names follow Prometheus conventions (docs/metrics.md lists them). Labels are
bounded: listener and command names come from fixed sets, tenant names are
capped by :func:`tenant_label` (the rest fold into ``other``), and no label
ever holds a user name or an address.

With ``workers: N`` every worker process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, set up
by :mod:`pop3proxy.supervisor` before a worker starts), and the supervisor
serves one merged ``/metrics``: counters and histograms are summed over every
worker that ever ran (a restarted worker does not reset them), gauges by the
``multiprocess_mode`` given below (``livesum``: only workers alive now).
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from pop3proxy import __version__

disable_created_metrics()  # *_created series double the exposition and serve no alert

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DURATION_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600)

CONNECTIONS = Counter("pop3proxy_connections", "Client connections accepted", ["listener"])
CONNECTIONS_ACTIVE = Gauge(
    "pop3proxy_connections_active",
    "Open client connections",
    ["listener"],
    multiprocess_mode="livesum",
)
TLS_FAILURES = Counter(
    "pop3proxy_tls_handshake_failures",
    "TLS handshakes with clients that failed",
    ["listener", "reason"],
)
TLS_HANDSHAKES = Counter(
    "pop3proxy_tls_handshakes",
    "TLS handshakes with clients that completed, by protocol version and cipher suite",
    ["listener", "version", "cipher"],
)
CERTIFICATE_EXPIRY = Gauge(
    "pop3proxy_tls_certificate_expiry_timestamp_seconds",
    "When each certificate the listeners serve expires, in Unix time",
    ["name"],
    # With workers: the earliest, so a worker still serving an old certificate shows.
    multiprocess_mode="livemin",
)
AUTH = Counter(
    "pop3proxy_auth",
    "Login attempts by outcome and by what the client proved itself with",
    ["tenant", "result", "mechanism"],
)
LIMIT_REJECTIONS = Counter(
    "pop3proxy_limit_rejections",
    "Connections and logins refused by a limit, by what was full",
    ["scope"],
)
LOGIN_DELAYS = Counter(
    "pop3proxy_login_delay_seconds",
    "Seconds refusals were held back (timing equalisation and failure back-off)",
)
SESSIONS_ACTIVE = Gauge(
    "pop3proxy_sessions_active",
    "Sessions relaying to a backend",
    ["tenant"],
    multiprocess_mode="livesum",
)
SESSIONS_LIMIT = Gauge(
    "pop3proxy_sessions_limit",
    "max_sessions of the tenant",
    ["tenant"],
    multiprocess_mode="livemax",
)
SESSION_DURATION = Histogram(
    "pop3proxy_session_duration_seconds",
    "Time from login to the end of the session",
    ["tenant"],
    buckets=DURATION_BUCKETS,
)
KICKS = Counter("pop3proxy_kicks", "Kicks received by this replica, by scope", ["scope"])
BYTES = Counter("pop3proxy_bytes", "Bytes relayed", ["tenant", "direction"])
COMMANDS = Counter("pop3proxy_commands", "Client commands relayed", ["tenant", "command"])
BACKEND_CONNECT = Histogram(
    "pop3proxy_backend_connect_seconds",
    "Time to connect to a backend and log in",
    ["tenant"],
    buckets=LATENCY_BUCKETS,
)
BACKEND_ERRORS = Counter(
    "pop3proxy_backend_errors", "Backend connections that failed", ["tenant", "reason"]
)
BACKEND_UP = Gauge(
    "pop3proxy_backend_up",
    "Whether the backend answered last time",
    ["tenant", "backend"],
    multiprocess_mode="mostrecent",
)
BACKEND_STATE = Gauge(
    "pop3proxy_backend_state",
    "The operator-set state of a backend: 1 for its current state, 0 for the others",
    ["backend", "state"],
    multiprocess_mode="mostrecent",
)
BACKEND_STATE_CHANGES = Counter(
    "pop3proxy_backend_state_changes",
    "Backend state changes this process applied, by the new state",
    ["state"],
)
PROXY_PROTOCOL_ERRORS = Counter(
    "pop3proxy_proxy_protocol_errors",
    "Inbound connections closed for a missing, malformed or untrusted PROXY header",
    ["listener", "reason"],
)
DIRECTORY_LOOKUPS = Counter(
    "pop3proxy_directory_lookups", "Tenant lookups by where the answer came from", ["source"]
)
DIRECTORY_REDIS_SECONDS = Histogram(
    "pop3proxy_directory_redis_seconds",
    "Redis round trips of the directory",
    buckets=LATENCY_BUCKETS,
)
DIRECTORY_CORRUPT = Counter(
    "pop3proxy_directory_corrupt_records", "Reads of records that failed validation", ["kind"]
)
REDIS_UP = Gauge(
    "pop3proxy_redis_up", "Whether the last Redis call succeeded", multiprocess_mode="mostrecent"
)
BUILD_INFO = Gauge(
    "pop3proxy_build_info", "Build information", ["version"], multiprocess_mode="max"
)
BUILD_INFO.labels(__version__).set(1)

OTHER = "other"

Labels = tuple[str, ...]
_pending: dict[tuple[Counter | Gauge, Labels], float] = {}
_observed: dict[tuple[Histogram, Labels], list[float]] = {}
"""Per histogram series: an observation count per bucket, then their sum."""
_gauge_values: dict[tuple[Gauge, Labels], float] = {}


def add(metric: Counter | Gauge, *labels: str, amount: float = 1) -> None:
    """Count, on the session path: the amounts are summed here and reach the
    exported value at the next :func:`fold`. Gauges take negative amounts."""
    # Batched because ``labels(...).inc()`` per event takes two locks: a full
    # session takes 39 % more instructions without it (bench/instructions.py).
    key = (metric, labels)
    _pending[key] = _pending.get(key, 0) + amount


def observe(metric: Histogram, *labels: str, value: float) -> None:
    """A histogram observation, counted in its bucket here and folded in by
    :func:`fold` like :func:`add`'s counts."""
    # The one place that reaches into prometheus-client (here and in
    # _add_observations): its ``observe`` takes a lock for the sum and one for
    # the bucket, about 15,000 instructions under gevent, and a login session
    # makes two; counting per bucket and adding the counts at fold time saves
    # 5 % of a login session's instructions (bench/compare.py --instructions).
    key = (metric, labels)
    bounds = metric._upper_bounds
    counts = _observed.get(key)
    if counts is None:
        counts = _observed[key] = [0] * (len(bounds) + 1)
    counts[bisect_left(bounds, value)] += 1
    counts[-1] += value


def set_gauge(metric: Gauge, *labels: str, value: float) -> None:
    """Set a gauge at once (a state, such as whether Redis answers, not a count)."""
    key = (metric, labels)
    if _gauge_values.get(key) != value:
        _gauge_values[key] = value
        (metric.labels(*labels) if labels else metric).set(value)


def fold() -> None:
    """Move what :func:`add` and :func:`observe` gathered into the exported values.

    Runs before every scrape of this process, every ``metrics.flush_interval``
    (the only way counts of a ``workers: N`` worker reach the merged
    ``/metrics``) and when the process stops.
    """
    pending = list(_pending.items())
    _pending.clear()
    observed = list(_observed.items())
    _observed.clear()
    for (metric, labels), amount in pending:
        counter = metric.labels(*labels) if labels else metric  # a series at 0 is still shown
        if amount:
            counter.inc(amount)
    for (histogram, labels), counts in observed:
        _add_observations(histogram.labels(*labels) if labels else histogram, counts)


def _add_observations(series: object, counts: list[float]) -> None:
    """What ``observe`` would have done for each observation, a bucket at a time:
    ``_buckets`` holds each bucket's own count, ``_sum`` the sum; a unit test
    holds the result to ``observe``'s."""
    buckets = series._buckets  # type: ignore[attr-defined]
    for index, count in enumerate(counts[:-1]):
        if count:
            buckets[index].inc(count)
    series._sum.inc(counts[-1])  # type: ignore[attr-defined]


class TenantLabels:
    """Caps the distinct tenant label values; later tenants share ``other``."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str | None) -> str:
        if not tenant:
            return "none"
        if tenant in self._known:
            return tenant
        with self._lock:
            if len(self._known) < self.limit:
                self._known.add(tenant)
                return tenant
        return OTHER


tenant_label = TenantLabels()

DIRECTIONS = ("client_to_backend", "backend_to_client")


def init_listener_labels(names: Iterable[str]) -> None:
    """Create the label sets at start so dashboards see zeros, not gaps."""
    for name in names:
        CONNECTIONS.labels(name)
        CONNECTIONS_ACTIVE.labels(name)


def set_certificate_expiries(expiries: Mapping[str, float]) -> None:
    """Replace the certificates' expiry series: a certificate no longer served
    leaves no series behind (in one process; with workers, until a restart:
    prometheus-client cannot remove a series in its multiprocess mode)."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        CERTIFICATE_EXPIRY.clear()
    for name, expires in expiries.items():
        CERTIFICATE_EXPIRY.labels(name).set(expires)


def configure(max_tenant_labels: int) -> None:
    """Apply ``metrics.max_tenant_labels``; tenants already labelled keep their label."""
    tenant_label.limit = max_tenant_labels


def merged_registry(directory: str) -> CollectorRegistry:
    """A registry that reads every worker's files in ``directory`` (the supervisor's)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def wsgi_app(ready: Callable[[], bool], registry: CollectorRegistry = REGISTRY) -> Callable:
    """``/metrics``, ``/healthz`` (the process serves) and ``/readyz``."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            fold()
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest(registry)]
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path == "/readyz":
            if ready():
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ready\n"]
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"not ready\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app
