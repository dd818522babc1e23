"""The circuit breaker: open after N failures in a window, one probe after the cool-down."""

from __future__ import annotations

from pop3proxy.health import Health, State

A = "10.0.0.1:110"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(threshold: int = 3) -> tuple[Health, Clock]:
    clock = Clock()
    return Health(threshold, failure_window=30, cooldown=10, clock=clock), clock


def test_opens_after_threshold_failures_within_the_window() -> None:
    health, _ = breaker()
    assert not health.failed(A)
    assert not health.failed(A)
    assert health.allow(A), "still closed below the threshold"
    assert health.failed(A), "the third failure opens it"
    assert health.state(A) is State.OPEN
    assert not health.allow(A)


def test_failures_outside_the_window_are_forgotten() -> None:
    health, clock = breaker()
    health.failed(A)
    health.failed(A)
    clock.now += 31
    assert not health.failed(A)
    assert health.state(A) is State.CLOSED


def test_success_resets_the_count() -> None:
    health, _ = breaker()
    health.failed(A)
    health.failed(A)
    health.succeeded(A)
    assert not health.failed(A)
    assert health.state(A) is State.CLOSED


def test_one_probe_after_the_cooldown_and_its_success_closes() -> None:
    health, clock = breaker(threshold=1)
    health.failed(A)
    clock.now += 9.9
    assert not health.allow(A)
    clock.now += 0.2
    assert health.allow(A), "the probe"
    assert health.state(A) is State.HALF_OPEN
    assert not health.allow(A), "only one probe at a time"
    assert health.succeeded(A), "recovered"
    assert health.state(A) is State.CLOSED
    assert health.allow(A) and health.allow(A)


def test_failed_probe_opens_for_another_cooldown() -> None:
    health, clock = breaker(threshold=1)
    health.failed(A)
    clock.now += 10
    assert health.allow(A)
    assert health.failed(A)
    assert health.state(A) is State.OPEN
    clock.now += 5
    assert not health.allow(A)
    clock.now += 5
    assert health.allow(A)


def test_a_probe_that_never_reports_is_replaced() -> None:
    health, clock = breaker(threshold=1)
    health.failed(A)
    clock.now += 10
    assert health.allow(A)
    clock.now += 10
    assert health.allow(A), "the lost probe does not block the backend forever"
    health.release(A)
    assert health.allow(A), "a released probe lets the next one go at once"


def test_backends_are_independent() -> None:
    health, _ = breaker(threshold=1)
    health.failed(A)
    assert health.allow("10.0.0.2:110")
