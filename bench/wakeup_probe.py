"""pop3proxy with its CPU time charged to what the loop woke it up for.

    python -m wakeup_probe serve --config FILE     # (bench/ on PYTHONPATH)

Run by ``bench/wakeups.py``, never in production. Before serving, it wraps
the proxy's loop callbacks (accepting a connection, a client socket's step,
a backend login's step, a relay step) and follows greenlet switches
(``greenlet.settrace``), so that every nanosecond of the process's CPU time
(``CLOCK_THREAD_CPUTIME_ID``: user and kernel, the time of the system calls
made from a callback included) is charged to exactly one account:

* the callback running in the hub, named by its step (``client
  _read_commands``, ``backend login _readable (AUTH)``, ``relay
  _on_backend_readable``, ...);
* ``login task``: the greenlet of a login (directory, limits, connect; after
  the backend's answer, the session's start of the relay);
* ``other greenlets`` (lease renewal, metrics, health checks);
* ``event loop``: everything else in the hub: ``epoll_wait``, libev, gevent's
  dispatch between callbacks.

Two pieces of Python are also timed where they run (``details``, inside
the accounts): building a client session and relaying one command through
the protocol core, to set beside the same code timed warm in a loop.

SIGWINCH writes both so far to ``$POP3PROXY_WAKEUPS`` as JSON:
``{"accounts": {name: [count, nanoseconds]}, "details": {...}}`` (a count is
the number of times a callback ran, or a greenlet was switched into).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
import greenlet
from gevent.hub import get_hub

from pop3proxy import cli
from pop3proxy.net import backend, listener, relay, session, tasks

_clock = time.thread_time_ns
LOOP = "event loop"
TASK = "login task"
OTHER = "other greenlets"


class Accounts:
    """Thread CPU time by account, switched at callback edges and greenlet switches."""

    def __init__(self) -> None:
        self.totals: dict[str, list[int]] = {}
        self.details: dict[str, list[int]] = {}
        self.hub = get_hub()
        self.current = LOOP
        self.last = _clock()
        self._hub_account = LOOP
        """What the hub was charging when it switched to a greenlet: it resumes there."""

    def charge_to(self, account: str, *, counted: bool = True) -> None:
        """Charge the time since the last switch to the current account; ``account`` is next."""
        now = _clock()
        self.totals.setdefault(self.current, [0, 0])[1] += now - self.last
        self.last = now
        self.current = account
        entry = self.totals.setdefault(account, [0, 0])
        if counted:
            entry[0] += 1

    def on_switch(self, event: str, args: tuple) -> None:
        if event not in ("switch", "throw"):
            return
        origin, target = args
        if origin is self.hub:
            self._hub_account = self.current
        if target is self.hub:  # back to the callback that switched away, or to the loop
            self.charge_to(self._hub_account, counted=False)
        else:
            self.charge_to(TASK if isinstance(target, tasks._Worker) else OTHER)

    def callback(self, label: Callable[[tuple], str]) -> Callable:
        """Wrap a loop callback: its time, in the hub, goes to ``label(args)``."""

        def wrap(function: Callable) -> Callable:
            @functools.wraps(function)
            def wrapped(*args: Any) -> Any:
                if greenlet.getcurrent() is not self.hub or self.current != LOOP:
                    return function(*args)  # not from the loop, or nested: the caller's
                self.charge_to(label(args))
                try:
                    return function(*args)
                finally:
                    self._hub_account = LOOP
                    self.charge_to(LOOP)

            return wrapped

        return wrap

    def detail(self, name: str) -> Callable:
        """Wrap a function: its inclusive time goes to ``details[name]`` (no account changes)."""

        def wrap(function: Callable) -> Callable:
            @functools.wraps(function)
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                started = _clock()
                try:
                    return function(*args, **kwargs)
                finally:
                    entry = self.details.setdefault(name, [0, 0])
                    entry[0] += 1
                    entry[1] += _clock() - started

            return wrapped

        return wrap

    def write(self, path: str) -> None:
        """Whole or not at all: the reader waits for the file to appear."""
        self.charge_to(self.current, counted=False)
        partial = f"{path}.partial"
        with open(partial, "w") as file:
            json.dump({"accounts": self.totals, "details": self.details}, file)
        os.replace(partial, path)


def _step_name(args: tuple) -> str:
    step = args[1]
    return getattr(step, "__name__", type(step).__name__)


def _login_step(args: tuple) -> str:
    attempt = args[0]
    login = attempt.login
    where = login._step.name if login is not None else "check"
    return f"backend login {_step_name(args)} ({where})"


def install(accounts: Accounts) -> None:
    wrap = accounts.callback
    listener.Listener._accept = wrap(lambda args: "accept (session start, greeting)")(
        listener.Listener._accept
    )
    session.ClientSession.guarded = wrap(lambda args: f"client {_step_name(args)}")(
        session.ClientSession.guarded
    )
    backend.LoginAttempt.guarded = wrap(_login_step)(backend.LoginAttempt.guarded)
    relay.Relay.guarded = wrap(lambda args: f"relay {_step_name(args)}")(relay.Relay.guarded)
    session.ClientSession.__init__ = accounts.detail("ClientSession.__init__")(
        session.ClientSession.__init__
    )
    client = session.core.ClientConnection
    client.relay_data = accounts.detail("ClientConnection.relay_data")(client.relay_data)
    greenlet.settrace(accounts.on_switch)


def main() -> int:
    accounts = Accounts()
    install(accounts)
    path = os.environ["POP3PROXY_WAKEUPS"]
    gevent.signal_handler(signal.SIGWINCH, accounts.write, path)
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
