"""The sans-IO core imports only pure standard-library modules and itself.

An allow-list, not a deny-list: a new import must be added here on purpose,
and only a module that neither touches the network, files, processes or
threads, nor blocks, belongs on it. ``socket``, ``ssl``, ``select``,
``asyncio``, ``os``, ``io``, ``threading`` or ``gevent`` in
``pop3proxy/protocol/`` fail this test, whether imported at the top of a
module or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pop3proxy.protocol

PROTOCOL_DIR = Path(pop3proxy.protocol.__file__).parent
MODULES = sorted(PROTOCOL_DIR.glob("*.py"))

PURE_STDLIB = frozenset(
    {
        "__future__",
        "base64",
        "binascii",
        "collections.abc",
        "dataclasses",
        "enum",
        "ipaddress",
        "re",
        "struct",
        "typing",
    }
)
"""The standard-library modules the core may import: computation only."""

IO_BUILTINS = frozenset({"open", "input", "print", "__import__", "exec", "eval", "breakpoint"})
"""Builtins that do I/O, or import or run code the checker cannot see."""


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


def io_builtins_used(tree: ast.Module) -> list[tuple[int, str]]:
    return [
        (node.lineno, node.id)
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and node.id in IO_BUILTINS
    ]


def allowed(module: str) -> bool:
    if module == "pop3proxy.protocol" or module.startswith("pop3proxy.protocol."):
        return True
    return module in PURE_STDLIB


def test_there_are_protocol_modules() -> None:
    assert {p.name for p in MODULES} >= {"framing.py", "replies.py", "client.py", "backend.py"}


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_protocol_imports_only_pure_modules(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    offending = [
        f"{path.name}:{line}: import {name}"
        for line, name in imported_modules(tree)
        if not allowed(name)
    ]
    offending += [f"{path.name}:{line}: {name}()" for line, name in io_builtins_used(tree)]
    assert not offending, "protocol core reaches beyond pure computation:\n" + "\n".join(offending)


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("import gevent", False),
        ("import socket", False),
        ("import ssl", False),
        ("import select, selectors", False),
        ("import asyncio", False),
        ("import threading", False),
        ("import subprocess", False),
        ("import os.path", False),
        ("from io import BytesIO", False),
        ("import collections", False),  # only collections.abc is on the list
        ("from pop3proxy import metrics", False),
        ("from pop3proxy.net import session", False),
        ("import redis.client", False),
        ("def f():\n    import yaml", False),
        ("def f():\n    import socket", False),
        ("data = open('x').read()", False),
        ("mod = __import__('socket')", False),
        ("from pop3proxy.protocol import replies", True),
        ("from . import framing", True),
        ("import binascii, dataclasses", True),
        ("from collections.abc import Callable", True),
    ],
)
def test_the_checker_itself(source: str, ok: bool) -> None:
    tree = ast.parse(source)
    names = [n for _, n in imported_modules(tree)]
    assert (all(allowed(n) for n in names) and not io_builtins_used(tree)) is ok
