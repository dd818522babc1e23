"""The session path's metrics: counted in dicts, folded into prometheus-client."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

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
