"""The package's layers, read from its import statements.

* neutral: value types, configuration, metrics, the sans-IO core; they
  import nothing of the layers above;
* the gevent shell (``pop3proxy.net``): sockets, TLS, the event loop; it
  reaches the domain only through :mod:`pop3proxy.interfaces`;
* the domain: tenants, budgets, logins, backend choice; it knows no socket
  and never imports the shell;
* the composition root and the process (``app``, ``supervisor``, ``cli``,
  ``reload``, ``commands``), which wire the two together.

No import cycle anywhere, function-level imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pop3proxy

ROOT = Path(pop3proxy.__file__).parent

NEUTRAL = {
    "pop3proxy",
    "pop3proxy.config",
    "pop3proxy.interfaces",
    "pop3proxy.logs",
    "pop3proxy.metrics",
    "pop3proxy.names",
    "pop3proxy.schema",
    "pop3proxy.tlspolicy",
}
DOMAIN = {
    "pop3proxy.auth",
    "pop3proxy.backends",
    "pop3proxy.cache",
    "pop3proxy.directory",
    "pop3proxy.filestore",
    "pop3proxy.health",
    "pop3proxy.history",
    "pop3proxy.invalidation",
    "pop3proxy.limits",
    "pop3proxy.login",
    "pop3proxy.redisconn",
    "pop3proxy.routing",
    "pop3proxy.tenants",
    "pop3proxy.userrecords",
}
SOCKET_MODULES = {"socket", "_socket", "ssl", "_ssl", "select", "selectors"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module ``path`` imports (anywhere in it), package modules resolved:
    ``from pop3proxy import metrics`` is an import of ``pop3proxy.metrics``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in known else base)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    """The package's modules and what each imports of the package."""
    found = modules(root)
    known = set(found)
    return {
        name: {each for each in imports(path, name, known) if each in known and each != name}
        for name, path in found.items()
    }


def everything_imported(root: Path = ROOT) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    return {name: imports(path, name, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules (Tarjan), if any."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def in_shell(name: str) -> bool:
    return name == "pop3proxy.net" or name.startswith("pop3proxy.net.")


def in_protocol(name: str) -> bool:
    return name == "pop3proxy.protocol" or name.startswith("pop3proxy.protocol.")


def shell_breaches(edges: dict[str, set[str]]) -> list[str]:
    """Imports from the shell of anything but the shell, the neutral modules
    and the sans-IO core."""
    return [
        f"{name} -> {target}"
        for name, targets in sorted(edges.items())
        if in_shell(name)
        for target in sorted(targets)
        if not (in_shell(target) or in_protocol(target) or target in NEUTRAL)
    ]


def test_the_layers_name_real_modules() -> None:
    known = set(modules())
    assert known >= NEUTRAL
    assert known >= DOMAIN


def test_there_is_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_the_shell_reaches_the_domain_only_through_the_interfaces() -> None:
    assert shell_breaches(graph()) == []


@pytest.mark.parametrize("name", sorted(DOMAIN))
def test_the_domain_knows_no_socket_and_no_shell(name: str) -> None:
    imported = everything_imported()[name]
    assert not {each for each in imported if in_shell(each)}
    assert not imported & SOCKET_MODULES


@pytest.mark.parametrize("name", sorted(NEUTRAL - {"pop3proxy"}))
def test_neutral_modules_import_only_neutral_ones(name: str) -> None:
    imported = graph()[name]
    assert {each for each in imported if not (each in NEUTRAL or in_protocol(each))} == set()


def test_the_checks_see_a_cycle_and_a_breach() -> None:
    """The checks themselves: a cycle and a shell-to-domain import do show."""
    edges = {
        "pop3proxy.app": {"pop3proxy.supervisor"},
        "pop3proxy.supervisor": {"pop3proxy.app"},
        "pop3proxy.net.session": {"pop3proxy.login", "pop3proxy.interfaces"},
    }
    assert cycles(edges) == [["pop3proxy.app", "pop3proxy.supervisor"]]
    assert shell_breaches(edges) == ["pop3proxy.net.session -> pop3proxy.login"]
