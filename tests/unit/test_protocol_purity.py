"""The sans-IO core imports only the standard library and itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import pop3proxy.protocol

PROTOCOL_DIR = Path(pop3proxy.protocol.__file__).parent
MODULES = sorted(PROTOCOL_DIR.glob("*.py"))


def imported_modules(tree: ast.Module) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside pop3proxy.protocol
                found.append((node.lineno, "pop3proxy.protocol"))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def allowed(module: str) -> bool:
    if module == "pop3proxy.protocol" or module.startswith("pop3proxy.protocol."):
        return True
    return module.split(".")[0] in sys.stdlib_module_names


def test_there_are_protocol_modules() -> None:
    assert {p.name for p in MODULES} >= {"framing.py", "replies.py", "client.py", "backend.py"}


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_protocol_imports_only_stdlib_and_itself(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    offending = [
        f"{path.name}:{line}: import {name}"
        for line, name in imported_modules(tree)
        if not allowed(name)
    ]
    assert not offending, "protocol core imports outside the stdlib:\n" + "\n".join(offending)


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("import gevent", False),
        ("from pop3proxy import metrics", False),
        ("from pop3proxy.net import session", False),
        ("import redis.client", False),
        ("from pop3proxy.protocol import replies", True),
        ("from . import framing", True),
        ("import binascii, dataclasses", True),
        ("def f():\n    import yaml", False),
    ],
)
def test_the_checker_itself(source: str, ok: bool) -> None:
    names = [n for _, n in imported_modules(ast.parse(source))]
    assert all(allowed(n) for n in names) is ok
