"""The package's imports form layers: no cycle, and no import hidden inside a function.

Read from the source with ``ast``, so that every module counts whatever a test happens to
import first. Imports under ``if TYPE_CHECKING:`` are for annotations only and never run.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "chatgpt_proxy"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _run_time_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: its top level, not in a function
    or class body, and not under ``if TYPE_CHECKING:``."""
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                pending += node.body
            pending += node.orelse
        elif isinstance(node, ast.Try):
            pending += [*node.body, *node.orelse, *node.finalbody]
            for handler in node.handlers:
                pending += handler.body
        elif isinstance(node, ast.With):
            pending += node.body


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The package's modules that ``node`` in ``module`` runs, parent packages included."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = _package_of(module).split(".")
            anchor = anchor[: len(anchor) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        # ``from package import name`` runs ``package.name`` when that is a module.
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    own_packages = {module.rsplit(".", n)[0] for n in range(module.count(".") + 1)}
    for name in names:
        if not name.startswith(PACKAGE):
            continue
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            target = ".".join(parts[:depth])
            # A module's own packages are already being imported when it runs.
            if target in MODULES and (target not in own_packages or target == name):
                yield target


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        edges = graph.setdefault(module, set())
        for node in _run_time_imports(tree):
            edges.update(t for t in _targets(module, node) if t != module)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, as the modules along it, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done and (found := visit(target)) is not None:
                return found
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done and (found := visit(module)) is not None:
            return found
    return None


def test_the_package_has_no_import_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_a_parent_package_counts_as_imported() -> None:
    node = ast.parse("from chatgpt_proxy.keystore.values import ClientKey").body[0]
    assert isinstance(node, ast.ImportFrom)
    targets = set(_targets("chatgpt_proxy.exchange", node))
    assert {"chatgpt_proxy.keystore", "chatgpt_proxy.keystore.values"} <= targets


def _optional_extras() -> frozenset[str]:
    """The top-level names of the optional extras (``redis``...), which may be absent."""
    project = tomllib.loads((SOURCE.parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names = (
        requirement.partition("==")[0]
        for n, group in extras.items()
        if n != "dev"
        for requirement in group
    )
    return frozenset(name.replace("-", "_") for name in names)


def _function_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports inside functions, but those of an optional extra: that one is imported where
    it is used, so that a user without it gets a one-line hint instead of a crash."""
    extras = _optional_extras()
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    imported = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    imported = [node.module or ""] if not node.level else [PACKAGE]
                else:
                    continue
                if any(name.partition(".")[0] not in extras for name in imported):
                    yield node


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_is_hidden_in_a_function(module: str) -> None:
    """A lazy import hides a dependency (often a cycle broken by hand) from the reader."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    hidden = [f"{path.name}:{node.lineno}" for node in _function_imports(tree)]
    assert hidden == [], f"imports inside functions: {hidden}"
