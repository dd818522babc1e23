"""JSON log lines: one object per line, extra fields kept, secrets dropped."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from pop3proxy.logs import JSONFormatter, TextFormatter


def record(
    message: str = "hello %s", args: tuple = ("world",), **extra: object
) -> logging.LogRecord:
    logger = logging.getLogger("pop3proxy.test")
    return logger.makeRecord(
        "pop3proxy.test", logging.INFO, __file__, 1, message, args, None, extra=extra
    )


def test_one_json_object_per_line_with_extra_fields() -> None:
    line = JSONFormatter().format(
        record("login failed\nfor %s", ("x",), session="a-1", tenant="acme", bytes_in=12)
    )
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "login failed\nfor x"
    assert entry["level"] == "info"
    assert entry["logger"] == "pop3proxy.test"
    assert entry["time"].endswith("Z")
    assert (entry["session"], entry["tenant"], entry["bytes_in"]) == ("a-1", "acme", 12)
    assert "args" not in entry and "msg" not in entry and "levelno" not in entry


def test_none_fields_are_dropped_and_odd_values_stringified() -> None:
    entry = json.loads(JSONFormatter().format(record(tenant=None, peer=("10.0.0.1", 5), raw=b"x")))
    assert "tenant" not in entry
    assert entry["peer"] == ["10.0.0.1", 5]
    assert entry["raw"] == "b'x'"


@pytest.mark.parametrize("field", ["password", "pass", "secret", "token", "credentials"])
def test_secret_named_fields_never_appear(field: str) -> None:
    for formatter in (JSONFormatter(), TextFormatter()):
        line = formatter.format(record(**{field: "hunter2", "user": "alice"}))
        assert "hunter2" not in line
        assert "alice" in line


@pytest.mark.parametrize("field", ["passwd", "Password", "backend_password", "api_token"])
def test_secret_like_field_names_never_appear(field: str) -> None:
    line = JSONFormatter().format(record(**{field: "hunter2"}))
    assert "hunter2" not in line


def test_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = record()
        rec.exc_info = sys.exc_info()
    line = JSONFormatter().format(rec)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]
