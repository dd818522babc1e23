"""The session path's metrics: counted in dicts, folded into prometheus-client."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pop3proxy import metrics

BUCKETS = (0.1, 0.5, 1, 5)


def _histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("t_seconds", "test", ["tenant"], buckets=BUCKETS, registry=registry)


@pytest.mark.parametrize(
    "values",
    [[], [0.0], [0.1], [0.1000001, 0.5, 0.75, 1, 4.99, 5, 5.01, 1e9], [0.3] * 7 + [2.0] * 3],
)
def test_folded_observations_export_what_observe_would(values: list[float]) -> None:
    """Bucket edges included: a value equal to a bound falls in that bound's bucket."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    folded, observed = _histogram(ours), _histogram(theirs)
    for value in values:
        metrics.observe(folded, "acme", value=value)
        observed.labels("acme").observe(value)
    metrics.fold()
    if values:
        assert generate_latest(ours) == generate_latest(theirs)
    else:
        assert b"t_seconds_count" not in generate_latest(ours)


def test_counts_reach_the_exported_value_only_when_folded() -> None:
    registry = CollectorRegistry()
    counter = Counter("t_things", "test", ["tenant"], registry=registry)
    metrics.add(counter, "acme")
    metrics.add(counter, "acme", amount=2)
    assert registry.get_sample_value("t_things_total", {"tenant": "acme"}) is None
    metrics.fold()
    assert registry.get_sample_value("t_things_total", {"tenant": "acme"}) == 3
    metrics.add(counter, "acme")
    metrics.fold()
    assert registry.get_sample_value("t_things_total", {"tenant": "acme"}) == 4


def test_a_gauge_that_went_up_and_down_again_still_shows_its_series() -> None:
    """Dashboards see a zero, not a gap, for a tenant whose sessions all ended."""
    registry = CollectorRegistry()
    gauge = Gauge("t_active", "test", ["tenant"], registry=registry)
    metrics.add(gauge, "acme")
    metrics.add(gauge, "acme", amount=-1)
    metrics.fold()
    assert registry.get_sample_value("t_active", {"tenant": "acme"}) == 0
    metrics.add(gauge, "acme", amount=2)
    metrics.fold()
    assert registry.get_sample_value("t_active", {"tenant": "acme"}) == 2


def test_set_gauge_is_seen_at_once_and_follows_every_change() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("t_up", "test", ["backend"], registry=registry)
    unlabelled = Gauge("t_redis_up", "test", registry=registry)
    for value in (1, 0, 0, 1):
        metrics.set_gauge(gauge, "a", value=value)
        metrics.set_gauge(unlabelled, value=value)
        assert registry.get_sample_value("t_up", {"backend": "a"}) == value
        assert registry.get_sample_value("t_redis_up") == value
