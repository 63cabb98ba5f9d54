"""The package layers of docs/foundation.md hold: imports only point down, no package cycle,
no module past 400 lines.

core ← infrastructure ← auth ← domain ← services ← web ← entry points. Every import in
app/ counts, including imports inside functions and under TYPE_CHECKING: a lower layer that
needs something from above is handed it (a callback, a protocol, a list of jobs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"

LAYERS = ("core", "infrastructure", "auth", "domain", "services", "web", "entry")
PACKAGE_LAYER = {
    "config": "core",
    "current": "core",
    "db": "core",
    "observability": "core",
    "pagination": "core",
    "runtime": "core",
    "notifier": "infrastructure",
    "jobs": "infrastructure",
    "cache": "infrastructure",
    "pubsub": "infrastructure",
    "activity": "infrastructure",
    "auth": "auth",
    "tasks": "domain",
    "search": "domain",
    "stats": "domain",
    "signals": "domain",
    "services": "services",
    "deps": "web",
    "main": "entry",
    "cli": "entry",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def node(module: str) -> str:
    """The unit the cycle check looks at: a top-level package, or "web" for routes."""
    parts = module.split(".")
    if module == "app.deps" or parts[-1] == "router":
        return "web"
    return parts[1] if len(parts) > 1 else "app"


def layer(module: str) -> str:
    found = node(module)
    return "web" if found == "web" else PACKAGE_LAYER[found]


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for statement in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom) and statement.module:
            if statement.module == "app":
                found.update(f"app.{alias.name}" for alias in statement.names)
            else:
                found.add(statement.module)
    return {name for name in found if name == "app" or name.startswith("app.")}


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(APP.rglob("*.py"))}


def test_every_package_has_a_layer() -> None:
    unknown = {node(module) for module in graph()} - set(PACKAGE_LAYER) - {"web", "app"}
    assert not unknown, f"packages without a layer: {sorted(unknown)} (add them to PACKAGE_LAYER)"


def test_imports_only_point_down_the_layers() -> None:
    upward = [
        f"{importer} ({layer(importer)}) imports {imported} ({layer(imported)})"
        for importer, imported_modules in graph().items()
        if importer != "app"
        for imported in imported_modules
        if imported != "app" and LAYERS.index(layer(imported)) > LAYERS.index(layer(importer))
    ]
    assert not upward, "\n".join(upward)


def test_no_package_imports_form_a_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for importer, imported_modules in graph().items():
        for imported in imported_modules:
            if node(imported) != node(importer):
                edges.setdefault(node(importer), set()).add(node(imported))
    cycles: list[list[str]] = []

    def visit(current: str, path: list[str]) -> None:
        for following in sorted(edges.get(current, ())):
            if following == path[0]:
                cycles.append([*path, following])
            elif following not in path and following > path[0]:
                visit(following, [*path, following])

    for start in sorted(edges):
        visit(start, [start])
    assert not cycles, "\n".join(" → ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize(
    ("module", "expected"),
    [("app.cache.postgres", "infrastructure"), ("app.tasks.router", "web"), ("app.cli", "entry")],
)
def test_modules_are_placed_in_their_layer(module: str, expected: str) -> None:
    assert layer(module) == expected


MAX_MODULE_LINES = 400


def test_no_module_outgrows_one_reading() -> None:
    # A module past ~400 lines holds more than one idea: split it along the seams the
    # cache and the worker were split on, rather than raising the limit.
    too_long = {
        module_name(path): lines
        for path in APP.rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert too_long == {}
