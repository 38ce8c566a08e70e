"""The test tree mirrors the source tree: every module has its own test module.

The rule, read from the tree each run (so a module added or renamed is held to it at once):

* ``src/chatgpt_proxy/<path>/<name>.py`` is tested by ``tests/<path>/test_<name>.py``, e.g.
  ``upstream/pool.py`` by ``tests/upstream/test_pool.py`` and ``streaming.py`` by
  ``tests/test_streaming.py``.
* Where two source modules share a name (``limits/rules.py`` and ``moderation/rules.py``),
  ``tests/<path>/test_<package>_<name>.py`` is accepted as well: pytest imports test
  directories without an ``__init__.py`` by file name, so two ``test_rules.py`` would collide.
* A test module counts once it holds a test function; an empty stand-in does not.
* Exempt: packages' ``__init__.py`` (their public names are tested through the modules that
  define them), ``__main__.py`` (one line calling the CLI), and the Alembic migration
  environment and revisions under ``keystore/migrations/`` (tested by migrating real databases
  in ``tests/keystore/test_migrate.py``).

Tests grouped by behaviour (``tests/api/test_api_*.py``, ``tests/reliability/test_rel_*.py``)
stay where they are; they come in addition to a module's own test file, not instead of it.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "chatgpt_proxy"
EXEMPT_NAMES = {"__init__.py", "__main__.py"}
EXEMPT_DIRS = {PurePosixPath("keystore/migrations")}


def source_modules() -> list[PurePosixPath]:
    """Every module under the package that must have a test module, relative to it."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = PurePosixPath(path.relative_to(PACKAGE).as_posix())
        if module.name in EXEMPT_NAMES:
            continue
        if any(module.is_relative_to(exempt) for exempt in EXEMPT_DIRS):
            continue
        found.append(module)
    return found


def expected_test_files(module: PurePosixPath, shared_names: set[str]) -> list[PurePosixPath]:
    """Where the test module of ``module`` may be, best name first."""
    names = [f"test_{module.name}"]
    if module.name in shared_names and module.parent.name:
        names.append(f"test_{module.parent.name}_{module.name}")
    return [PurePosixPath("tests") / module.parent / name for name in names]


def has_tests(path: Path) -> bool:
    """Whether ``path`` is a test module with at least one test in it (not an empty stand-in)."""
    if not path.is_file():
        return False
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
        for node in ast.walk(tree)
    )


def missing_test_files() -> list[str]:
    modules = source_modules()
    counts = Counter(module.name for module in modules)
    shared = {name for name, count in counts.items() if count > 1}
    missing = []
    for module in modules:
        candidates = expected_test_files(module, shared)
        if not any(has_tests(ROOT / candidate) for candidate in candidates):
            missing.append(f"src/chatgpt_proxy/{module} has no {candidates[0]}")
    return missing


def test_every_source_module_has_its_test_module() -> None:
    missing = missing_test_files()
    assert not missing, "\n".join([*missing, "(the rule is in tests/test_mirror.py)"])


def test_the_rule_finds_the_modules_and_names_their_tests() -> None:
    modules = source_modules()
    assert PurePosixPath("upstream/pool.py") in modules
    assert PurePosixPath("streaming.py") in modules
    assert not [m for m in modules if m.name in EXEMPT_NAMES]
    assert not [m for m in modules if any(m.is_relative_to(d) for d in EXEMPT_DIRS)]
    assert expected_test_files(PurePosixPath("upstream/pool.py"), set()) == [
        PurePosixPath("tests/upstream/test_pool.py")
    ]
    assert expected_test_files(PurePosixPath("streaming.py"), {"streaming.py"}) == [
        PurePosixPath("tests/test_streaming.py")
    ]
    assert expected_test_files(PurePosixPath("limits/rules.py"), {"rules.py"}) == [
        PurePosixPath("tests/limits/test_rules.py"),
        PurePosixPath("tests/limits/test_limits_rules.py"),
    ]
