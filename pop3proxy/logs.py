"""Logging: JSON lines for machines, text for a terminal, never a secret.

Structured fields travel in ``extra=`` and become JSON keys. Field names that
could carry a secret are dropped before formatting, as a second line of
defence: the code never logs passwords, and this makes sure it cannot.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sys
import time
import unicodedata

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SECRET_MARKERS = ("pass", "secret", "token", "credential", "auth_data")
"""A field whose name contains one of these is never written, whatever its case."""


def utc_text(when: float) -> str:
    """A Unix time as operators read it in log lines and the CLI's output:
    ``2026-03-01T12:00:00Z`` (UTC, to the second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def _secret(key: str) -> bool:
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not _secret(key) and value is not None
    }


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        line = (
            f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        )
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


USER_FORMS = ("plain", "hash", "off")
"""``logging.user``: how a user name appears on session and login lines."""

USER_HASH_PREFIX = "h:"
"""Marks a hashed user on a log line, so that nobody takes it for a name."""

_MAX_NAME = 128
"""A name the login could not parse is cut to this many characters."""


def loggable_name(typed: str) -> str:
    """A name as typed, fit for a log line: control and format characters
    (newlines, escapes, bidi overrides) become ``?`` and it is cut to
    :data:`_MAX_NAME` characters, so a client cannot forge or flood lines."""
    cleaned = "".join(
        "?" if unicodedata.category(char)[0] == "C" else char for char in typed[:_MAX_NAME]
    )
    return cleaned + "..." if len(typed) > _MAX_NAME else cleaned


class UserLogForm:
    """How a user appears in the logs (``logging.user``).

    ``plain``: the name; ``hash``: a keyed digest (HMAC-SHA256, the first 16
    bytes in hex, behind :data:`USER_HASH_PREFIX`), the same on every replica
    that has the same key, so one user's lines can be found without the name
    being written; ``off``: no user field at all.
    """

    def __init__(self, form: str = "plain", key: bytes = b"") -> None:
        if form == "hash" and not key:
            raise ValueError("a hashed user needs a key")
        self.form = form
        self._key = key

    def __repr__(self) -> str:
        return f"UserLogForm({self.form!r})"  # never the key

    def __call__(self, user: str) -> str | None:
        if self.form == "plain":
            return user
        if self.form == "off":
            return None
        digest = hmac.new(self._key, user.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return USER_HASH_PREFIX + digest.hexdigest()[:32]


LOG_HASH_KEY_ENV = "POP3PROXY_LOG_HASH_KEY"
"""The key of ``logging.user: hash`` when no ``logging.user_hash_key_file`` is set."""


def read_hash_key(path: str | None) -> bytes:
    """The key of ``logging.user: hash``: the file's bytes without a trailing
    newline, or (no file) the environment variable :data:`LOG_HASH_KEY_ENV`."""
    if path is None:
        return os.environ.get(LOG_HASH_KEY_ENV, "").encode()
    with open(path, "rb") as key_file:
        return key_file.read().rstrip(b"\r\n")


LEVELS = ("debug", "info", "warning", "error")
"""Most verbose first: SIGUSR1 moves one step left, SIGUSR2 one step right."""


class _Fields(logging.Filter):
    """Adds fixed fields (such as ``worker``) to every record of this process."""

    def __init__(self, fields: dict[str, object]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def use_json(fmt: str) -> bool:
    """``json``, ``text``, or ``auto``: text when stderr is a terminal, else JSON."""
    if fmt == "auto":
        return not sys.stderr.isatty()
    return fmt == "json"


def setup_logging(level: str, fmt: str, fields: dict[str, object] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if use_json(fmt) else TextFormatter())
    if fields:
        handler.addFilter(_Fields(fields))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_format(fmt: str) -> None:
    """Switch the format of the running handlers (SIGHUP reload)."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JSONFormatter() if use_json(fmt) else TextFormatter())


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()


def step_level(steps: int) -> str:
    """Move the level ``steps`` along :data:`LEVELS` (negative: more verbose); clamped."""
    level = current_level()
    index = LEVELS.index(level) if level in LEVELS else LEVELS.index("info")
    new = LEVELS[max(0, min(len(LEVELS) - 1, index + steps))]
    set_level(new)
    return new
