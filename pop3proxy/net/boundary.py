"""The shell's one error boundary: whatever a connection's callback raises ends
that connection only.

Every step the event loop runs for a connection (a client session, its
relay, a backend login) goes through :meth:`ErrorBoundary.guarded`: a
socket error ends the connection with the class's ``connection_lost``
reason, anything else is logged with a traceback and ends it as
``internal_error``. The process and the other connections go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable


class Ended(Exception):
    """Ends a step from outside (timeout, drain): not an error, so not logged.
    Whoever raised it closes the connection. ``reason`` goes to the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ErrorBoundary:
    """A base for what the event loop calls back: subclasses say how they end."""

    __slots__ = ()

    log = logging.getLogger("pop3proxy")
    """Where the traceback of an internal error goes."""
    failure = "connection failed"
    """The log message of an internal error."""
    connection_lost = "connection_error"
    """The end reason for a socket error."""

    def guarded(self, step: Callable[..., None], *args: object) -> None:
        """Run ``step(*args)``; whatever it raises ends this connection only.

        The event loop's watchers and timers call this with the step to run,
        so no exception ever reaches the loop.
        """
        try:
            step(*args)
        except Ended:
            pass  # whoever ended it closes it
        except OSError:
            self.end_after_error(self.connection_lost)
        except Exception:
            self.log.exception(self.failure, extra=self.log_context())
            self.end_after_error("internal_error")

    def log_context(self) -> dict[str, object]:
        """Fields for the log line of an internal error."""
        return {}

    def end_after_error(self, reason: str) -> None:
        raise NotImplementedError
