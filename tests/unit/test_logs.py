"""JSON log lines: one object per line, extra fields kept, secrets dropped."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from pop3proxy import logs
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


def test_a_typed_name_is_bounded_and_loses_its_control_characters() -> None:
    assert logs.loggable_name("alice@acme.example") == "alice@acme.example"
    assert logs.loggable_name("a\r\nb\x1b\u202ec") == "a??b??c"
    assert logs.loggable_name("x" * 500) == "x" * 128 + "..."


def test_a_hashed_user_depends_on_the_key_and_never_shows_the_name() -> None:
    one, same, other = (logs.UserLogForm("hash", key) for key in (b"k1", b"k1", b"k2"))
    digest = one("alice@acme.example")
    assert digest == same("alice@acme.example") != other("alice@acme.example")
    assert digest is not None and digest.startswith("h:") and "alice" not in digest
    assert "k1" not in repr(one)
    assert logs.UserLogForm("off")("alice@acme.example") is None
    assert logs.UserLogForm("plain")("alice@acme.example") == "alice@acme.example"
