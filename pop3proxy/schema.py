"""Reading untrusted mappings (YAML config, tenant records) into typed values.

Every problem is collected with its key path (``listeners[1].tls``) and what
was expected, so an operator sees all mistakes at once and where they are,
instead of a traceback for the first one. Unknown keys are errors: a typo
silently ignored is a setting silently not applied.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

TLS_MODES = ("none", "starttls", "implicit")
"""How a connection starts TLS, for a listener (``tls``) and a tenant's
backend alike: never, after ``STLS`` (RFC 2595), or from the first byte."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS: dict[str | None, int] = {
    None: 1,
    "b": 1,
    **{f"{unit}b": 1000**power for power, unit in enumerate("kmgt", 1)},
    **{f"{unit}ib": 1024**power for power, unit in enumerate("kmgt", 1)},
}


class SchemaError(ValueError):
    """One or more problems, each a line ``path: what was expected``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def parse_duration(value: object) -> float:
    """``30s``, ``10m``, ``1.5h``, ``250ms`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m or 1h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 30s, 10m or 1h, got {value!r}")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"expected a finite duration that is not negative, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """A byte count: ``1250MB``, ``2GiB``, ``500kB`` or a bare number of bytes.
    ``kB``/``MB``/``GB``/``TB`` count in thousands (as mail providers quote
    their limits), ``KiB``/``MiB``/``GiB``/``TiB`` in 1024s."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 500MB or 2GiB")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"expected a size such as 500MB or 2GiB, got {value!r}")
        unit = match.group(2).lower() if match.group(2) else None
        size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size < 0:
        raise ValueError(f"expected a size that is not negative, got {value!r}")
    return size


def parse_address(value: object, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT``."""
    text = str(value).strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    host = host.strip("[]") or default_host
    return host, port


class Reader:
    """Typed access to one mapping; problems go to a shared list."""

    def __init__(self, data: object, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.problem(None, f"expected a mapping, got {type(data).__name__}")
            data = {}
        self.data: Mapping[str, Any] = data

    def key_path(self, key: str | None) -> str:
        if key is None:
            return self.path or "(top level)"
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str | None, message: str) -> None:
        self.problems.append(f"{self.key_path(key)}: {message}")

    def raw(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        return self.data.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.data

    def string(self, key: str, default: str | None, *, required: bool = False) -> str | None:
        value = self.raw(key, default)
        if value is None:
            if required:
                self.problem(key, "is required")
            return default
        if not isinstance(value, str) or (required and not value):
            self.problem(key, f"expected a non-empty string, got {value!r}")
            return default
        return value

    def choice(self, key: str, default: str, choices: Iterable[str]) -> str:
        allowed = tuple(choices)
        value = self.raw(key, default)
        if value not in allowed:
            self.problem(key, f"expected one of {', '.join(allowed)}, got {value!r}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            self.problem(key, f"expected true or false, got {value!r}")
            return default
        return value

    def integer(
        self, key: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self.raw(key, default)
        too_big = maximum is not None and isinstance(value, int) and value > maximum
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or too_big:
            bounds = f">= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
            self.problem(key, f"expected an integer {bounds}, got {value!r}")
            return default
        return value

    def duration(self, key: str, default: float) -> float:
        value = self.raw(key, default)
        try:
            return parse_duration(value)
        except ValueError as error:
            self.problem(key, str(error))
            return default

    def size(self, key: str, default: int) -> int:
        value = self.raw(key, default)
        try:
            return parse_size(value)
        except ValueError as error:
            self.problem(key, str(error))
            return default

    def address(self, key: str, default: str) -> tuple[str, int]:
        value = self.raw(key, default)
        try:
            return parse_address(value)
        except ValueError as error:
            self.problem(key, str(error))
            return parse_address(default)

    def section(self, key: str) -> Reader:
        return Reader(self.raw(key), self.key_path(key), self.problems)

    def items(self, key: str) -> list[Reader]:
        value = self.raw(key, [])
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(key, f"expected a list, got {type(value).__name__}")
            return []
        return [
            Reader(item, f"{self.key_path(key)}[{i}]", self.problems)
            for i, item in enumerate(value)
        ]

    def finish(self) -> None:
        """Report keys nobody asked for: typos, or settings this version lacks."""
        for key in self.data:
            if key not in self._seen:
                self.problem(str(key), "unknown key")
