"""The floor plan holds: which packages may import which, read from the sources with `ast`.

- `relay.upstream` is a general HTTP/1.1 client: it imports nothing else of `relay`.
- `backends` and `migrations` serve the relay and never import it (a migration run needs no
  relay settings, and a store knows nothing of providers or HTTP).
- `relay.ops` holds commands that run once and exit: no module outside it imports it at module
  level, so serving never loads them (the CLI imports each inside the command that runs it).
- Every package of `relay` says in its docstring what lives there and what it may import, and
  imports no more than `MAY_IMPORT` below says (the same, as data).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What each package of `relay` may import of the rest of `relay` (its own modules aside).
MAY_IMPORT: Final[dict[str, frozenset[str]]] = {
    "relay.upstream": frozenset(),
    "relay.usage": frozenset(),
    "relay.telemetry": frozenset(),
    "relay.web": frozenset(),
    "relay.pricing": frozenset(),
    "relay.providers": frozenset({"relay.errors"}),
    "relay.security": frozenset({"relay.errors", "relay.providers"}),
    "relay.server": frozenset(
        {
            "relay.errors",
            "relay.config",
            "relay.providers",
            "relay.proxy.inflight",
            "relay.telemetry.access",
            "relay.telemetry.metrics",
        }
    ),
    "relay.api": frozenset(
        {
            "relay.errors",
            "relay.config",
            "relay.services",
            "relay.security",
            "relay.providers",
            "relay.pricing",
            "relay.server.ratelimit",
            "relay.telemetry.metrics",
        }
    ),
    "relay.proxy": frozenset(
        {
            "relay.errors",
            "relay.services",
            "relay.security",
            "relay.providers",
            "relay.upstream",
            "relay.usage",
            "relay.pricing",
            "relay.api.bodies",
            "relay.server.ratelimit",
            "relay.server.edge",
            "relay.telemetry.access",
        }
    ),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def imports(path: Path, *, module_level_only: bool = False) -> Iterator[str]:
    """Every module `path` imports (relative imports resolved), optionally only those at its
    top level (including `if TYPE_CHECKING:` blocks, which type checkers follow)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    nodes = _top_level(tree) if module_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def _top_level(tree: ast.Module) -> Iterator[ast.stmt]:
    """The module's own statements, with those under a top-level `if` or `try` (they run at
    import too)."""
    for node in tree.body:
        yield node
        if isinstance(node, ast.If | ast.Try):
            yield from (*node.body, *node.orelse)


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_package_imports_only_what_it_may(package: str) -> None:
    allowed = MAY_IMPORT[package] | {package}
    found = {
        (module_name(path), name)
        for path in sources(package.replace(".", "/"))
        for name in imports(path)
        if within(name, "relay")
        and name not in ("relay", "relay.__version__")
        and not any(within(name, a) for a in allowed)
    }
    assert not found


def test_every_package_has_a_row() -> None:
    """A package the table does not name would import anything unchecked (`relay.ops` runs once
    and may import all of the relay; no serving module imports it, below)."""
    packages = {f"relay.{p.parent.name}" for p in (ROOT / "relay").glob("*/__init__.py")}
    assert packages - {"relay.ops"} == set(MAY_IMPORT)


def test_the_upstream_client_imports_nothing_else_of_the_relay() -> None:
    found = {
        (module_name(path), name)
        for path in sources("relay/upstream")
        for name in imports(path)
        if within(name, "relay") and not within(name, "relay.upstream")
    }
    assert not found


@pytest.mark.parametrize("package", ["backends", "migrations"])
def test_stores_and_migrations_never_import_the_relay(package: str) -> None:
    found = {
        (module_name(path), name)
        for path in sources(package)
        for name in imports(path)
        if within(name, "relay")
    }
    assert not found


def test_serving_never_loads_the_operator_commands() -> None:
    found = {
        (module_name(path), name)
        for path in sources("relay", "backends", "bench")
        if not within(module_name(path), "relay.ops")
        for name in imports(path, module_level_only=True)
        if within(name, "relay.ops")
    }
    assert not found


def test_the_checks_above_see_imports() -> None:
    """The reader resolves what the checks rely on: absolute, relative and nested imports."""
    cli = ROOT / "relay" / "cli.py"
    assert "relay.ops.rotation" in set(imports(cli))
    assert "relay.ops.rotation" not in set(imports(cli, module_level_only=True))
    assert "relay.upstream.http11" in set(imports(ROOT / "relay" / "upstream" / "pool.py"))


@pytest.mark.parametrize(
    "package", sorted(p.parent.name for p in (ROOT / "relay").glob("*/__init__.py"))
)
def test_every_package_says_what_it_holds_and_may_import(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / "relay" / package / "__init__.py").read_text()))
    assert doc is not None
    assert "import" in doc.lower()
