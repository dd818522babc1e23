"""Greenlets for the steps of a session that block, parked between uses.

A login (directory, Redis, argon2, and one wait for the backend's login) or
an admission that asks Redis runs in a greenlet; everything else a session
does runs on loop callbacks. A busy proxy starts a login per session, and
starting a greenlet costs several times a switch into a waiting one: a new
greenlet object, its first frame, and a frame stack mapped for it and unmapped
when it ends. So a greenlet whose task is done waits,
parked, for the next task instead of ending.

The hazard of reuse is a stale wake-up meant for the task before: a throw
queued for a task that has ended since must not land in the next one.
:meth:`Task.throw` therefore checks that its worker still runs that task.
Waits inside a task (gevent's ``Waiter``, ``Hub.wait``, ``sleep``) stop
their watchers when a throw ends them, so nothing else can wake a parked
worker but :meth:`Tasks.spawn`.
"""

from __future__ import annotations

from collections.abc import Callable

from gevent.hub import get_hub
from greenlet import getcurrent, greenlet


class Task:
    """One run of a function in a worker greenlet."""

    __slots__ = ("args", "function", "worker")

    def __init__(self, function: Callable[..., None], args: tuple) -> None:
        self.function = function
        self.args = args
        self.worker: _Worker | None = None

    def running_here(self) -> bool:
        """Is the caller this task (rather than the loop or another task)?"""
        worker = self.worker
        return worker is not None and worker.task is self and worker is getcurrent()

    def throw(self, error: BaseException) -> None:
        """Raise ``error`` in the task where it waits, if it still runs; call it
        from the loop (not from inside the task)."""
        worker = self.worker
        if worker is not None and worker.task is self and not worker.dead:
            worker.throw(error)


class _Worker(greenlet):
    task: Task | None = None


class Tasks:
    """Runs tasks in greenlets, keeping up to ``keep`` of them parked when idle."""

    def __init__(self, keep: int = 64) -> None:
        """``keep``: enough for the logins in flight at once on a busy proxy; a
        parked greenlet holds its frame stack (16 KiB) and a copy of its C stack."""
        self.keep = keep
        self._parked: list[_Worker] = []
        self._hub = get_hub()

    def spawn(self, function: Callable[..., None], *args: object) -> Task:
        """Run ``function(*args)`` in a greenlet from the loop's next turn, as
        ``gevent.spawn_raw`` does. What it raises ends its worker, not the loop."""
        task = Task(function, args)
        worker = self._parked.pop() if self._parked else _Worker(self._work, self._hub)
        task.worker = worker
        self._hub.loop.run_callback(worker.switch, task)
        return task

    @property
    def parked(self) -> int:
        return len(self._parked)

    def _work(self, task: Task | None) -> None:
        worker = getcurrent()
        assert isinstance(worker, _Worker)
        while task is not None:
            worker.task = task
            try:
                task.function(*task.args)
            finally:
                worker.task = None
            task = self._park(worker)

    def _park(self, worker: _Worker) -> Task | None:
        """Wait for the next task; ``None`` ends the worker (enough are parked)."""
        if len(self._parked) >= self.keep:
            return None
        self._parked.append(worker)
        return self._hub.switch()
