"""Parked task greenlets: reused, and never woken by what was meant for an earlier task."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event
from greenlet import getcurrent

from pop3proxy.net.tasks import Tasks


class Ended(Exception):
    pass


def run_until(condition, what: str) -> None:
    with gevent.Timeout(5, AssertionError(f"timed out waiting for {what}")):
        while not condition():
            gevent.sleep(0.001)


def throw_from_the_loop(task, error: BaseException) -> None:
    """As a session does: the throw runs from the loop, not from a greenlet."""
    gevent.get_hub().loop.run_callback(task.throw, error)


def test_a_finished_task_leaves_its_greenlet_for_the_next() -> None:
    tasks = Tasks()
    seen: list[object] = []
    tasks.spawn(lambda: seen.append(getcurrent()))
    run_until(lambda: tasks.parked == 1, "the first task")
    tasks.spawn(lambda: seen.append(getcurrent()))
    run_until(lambda: len(seen) == 2 and tasks.parked == 1, "the second task")
    assert seen[0] is seen[1]


def test_a_throw_reaches_the_waiting_task_and_the_worker_serves_on() -> None:
    tasks = Tasks()
    outcome: list[str] = []

    def waits() -> None:
        try:
            Event().wait()
        except Ended:
            outcome.append("ended")

    task = tasks.spawn(waits)
    gevent.sleep(0)
    throw_from_the_loop(task, Ended())
    run_until(lambda: outcome == ["ended"] and tasks.parked == 1, "the worker to park")
    tasks.spawn(outcome.append, "next")
    run_until(lambda: outcome == ["ended", "next"], "the next task")


def test_a_stale_throw_misses_the_next_task_on_the_same_greenlet() -> None:
    tasks = Tasks()
    first = tasks.spawn(lambda: None)
    run_until(lambda: tasks.parked == 1, "the first task")
    release = Event()
    done: list[str] = []

    def second() -> None:
        release.wait()
        done.append("second")

    later = tasks.spawn(second)
    gevent.sleep(0)
    assert later.worker is first.worker
    throw_from_the_loop(first, Ended())  # for the first task, which has ended
    release.set()
    run_until(lambda: done == ["second"], "the second task")


def test_a_task_not_started_yet_is_not_thrown_into() -> None:
    tasks = Tasks()
    ran: list[str] = []
    task = tasks.spawn(ran.append, "ran")
    task.throw(Ended())  # before the loop's next turn starts it: nothing to interrupt
    run_until(lambda: ran == ["ran"], "the task")


def test_running_here_is_true_only_inside_the_task() -> None:
    tasks = Tasks()
    inside: list[bool] = []
    task = tasks.spawn(lambda: inside.append(task.running_here()))
    assert not task.running_here()
    run_until(lambda: inside, "the task")
    assert inside == [True]
    assert not task.running_here()


def test_a_task_that_raises_ends_its_greenlet_not_the_pool() -> None:
    tasks = Tasks()
    hub = gevent.get_hub()
    errors: list[type] = []
    handle_error = hub.handle_error
    hub.handle_error = lambda context, kind, value, tb: errors.append(kind)
    try:
        tasks.spawn(lambda: 1 / 0)
        run_until(lambda: errors, "the error")
    finally:
        hub.handle_error = handle_error
    assert errors == [ZeroDivisionError]
    assert tasks.parked == 0
    ran: list[str] = []
    tasks.spawn(ran.append, "ran")
    run_until(lambda: ran == ["ran"], "a new task")


@pytest.mark.parametrize("keep", [0, 2])
def test_no_more_than_keep_greenlets_stay_parked(keep: int) -> None:
    tasks = Tasks(keep=keep)
    release = Event()
    done: list[int] = []
    for number in range(5):
        tasks.spawn(lambda n=number: (release.wait(), done.append(n)))
    gevent.sleep(0)
    release.set()
    run_until(lambda: len(done) == 5, "every task")
    gevent.sleep(0)
    assert tasks.parked == keep
