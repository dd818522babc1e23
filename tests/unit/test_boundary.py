"""The shell's one error boundary: what a loop callback raises ends that connection only."""

from __future__ import annotations

import logging

import pytest

from pop3proxy.net.backend import LoginAttempt
from pop3proxy.net.boundary import Ended, ErrorBoundary
from pop3proxy.net.relay import Relay
from pop3proxy.net.session import ClientSession, SessionEnded


class Connection(ErrorBoundary):
    failure = "test connection failed"

    def __init__(self) -> None:
        self.ended: list[str] = []

    def log_context(self) -> dict[str, object]:
        return {"session": "s-1"}

    def end_after_error(self, reason: str) -> None:
        self.ended.append(reason)


def raising(error: BaseException):
    def step(*args: object) -> None:
        raise error

    return step


def test_a_step_that_works_ends_nothing() -> None:
    connection, seen = Connection(), []
    connection.guarded(seen.append, "ran")
    assert seen == ["ran"]
    assert connection.ended == []


def test_a_socket_error_ends_the_connection_quietly(caplog: pytest.LogCaptureFixture) -> None:
    connection = Connection()
    connection.guarded(raising(ConnectionResetError()))
    assert connection.ended == ["connection_error"]
    assert not caplog.records


def test_a_surprise_is_logged_with_context_and_ends_the_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    connection = Connection()
    with caplog.at_level(logging.ERROR, logger="pop3proxy"):
        connection.guarded(raising(KeyError("oops")))
    assert connection.ended == ["internal_error"]
    (record,) = caplog.records
    assert record.getMessage() == "test connection failed"
    assert record.session == "s-1"  # type: ignore[attr-defined]
    assert record.exc_info is not None


def test_an_end_from_outside_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    connection = Connection()
    connection.guarded(raising(SessionEnded("auth_timeout")))
    connection.guarded(raising(Ended("draining")))
    assert connection.ended == []
    assert not caplog.records


def test_every_loop_driven_part_of_the_shell_uses_it() -> None:
    for part in (ClientSession, Relay, LoginAttempt):
        assert issubclass(part, ErrorBoundary)
        assert "guarded" not in vars(part), f"{part.__name__} has a boundary of its own"
    assert LoginAttempt.connection_lost == "connection_lost"  # the backend's own reason
