"""Every row of the reliability checklist has its test, in the file README.md names for it.

A test is a row's when its docstring starts with ``Row N`` (or ``Rows N, M and K``). The
checklist itself lives outside the repository, so its row numbers (1 to ROWS) are fixed here.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROWS = 32
_ROW_DOC = re.compile(r"^Rows? (\d+(?:(?:,\s*|\s+and\s+)\d+)*)\b")
_README_ROW = re.compile(r"^\|\s*(\d+)\s*\|.*\|\s*`(test_rel_\w+\.py)`\s*\|\s*$")


def rows_tested(source: str) -> set[int]:
    """The rows named by the docstrings of the test functions in ``source``."""
    rows: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
            "test"
        ):
            match = _ROW_DOC.match(ast.get_docstring(node) or "")
            if match:
                rows.update(int(n) for n in re.findall(r"\d+", match.group(1)))
    return rows


def test_rows_tested_reads_docstrings() -> None:
    source = '''
def test_a():
    """Row 3: something."""
def test_b():
    """Rows 4, 5 and 6: more."""
def helper():
    """Row 7: not a test."""
def test_c():
    """About row 8, not starting with it."""
def test_d():
    """Row 9 and defect 6: only the row counts."""
def test_e():
    """Row 10 (and 19): the first number only."""
'''
    assert rows_tested(source) == {3, 4, 5, 6, 9, 10}


def test_every_row_has_a_test_in_its_file() -> None:
    """Each row 1..ROWS has a ``Row N:`` test, in the file the README's table names."""
    found: dict[int, set[str]] = {}
    for path in sorted(HERE.glob("test_rel_*.py")):
        for row in rows_tested(path.read_text()):
            found.setdefault(row, set()).add(path.name)
    table: dict[int, str] = {}
    for line in (HERE / "README.md").read_text().splitlines():
        if match := _README_ROW.match(line):
            table[int(match.group(1))] = match.group(2)
    assert sorted(table) == list(range(1, ROWS + 1)), "README.md must list every row once"
    assert not set(found) - set(table), f"rows outside the checklist: {set(found) - set(table)}"

    elsewhere = {row: sorted(files) for row, files in found.items() if table[row] not in files}
    assert not elsewhere, f"rows tested outside the file README.md names: {elsewhere}"
    missing = [row for row in range(1, ROWS + 1) if row not in found]
    message = f"rows without a test yet: {missing} (README.md names their files)"
    assert not missing, message
