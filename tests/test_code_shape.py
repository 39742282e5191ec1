"""Short functions, formatting left to the formatter: checked over every package and the tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("moe_rbench", "moe_rbench_tasks", "moe_rbench_models", "tests", "tests_vllm", "benchmarks")
LONGEST_FUNCTION = 80  # lines, signature and docstring included


def python_files() -> list[Path]:
    return sorted(path for folder in CHECKED for path in (ROOT / folder).rglob("*.py"))


def test_no_function_is_longer_than_80_lines():
    too_long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in python_files()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION
    ]
    assert not too_long, f"split these into functions of at most {LONGEST_FUNCTION} lines: {too_long}"


@pytest.mark.parametrize("marker", ["fmt: skip", "fmt: off"])
def test_nothing_is_exempted_from_the_formatter(marker):
    this_file = Path(__file__).resolve()
    exempted = [
        str(path.relative_to(ROOT))
        for path in python_files()
        if path != this_file and marker in path.read_text(encoding="utf-8")
    ]
    assert not exempted, f"remove {marker!r} from {exempted}: ruff format decides the layout"
