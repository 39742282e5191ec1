"""The documentation's front page stays short, and the names its Python examples import exist."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def example_imports() -> list[tuple[str, str, str | None]]:
    """(page, module, name) of every import line in the pages' ```python examples."""
    found = []
    for page in PAGES:
        for example in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S):
            lines = "\n".join(line for line in example.splitlines() if re.match(r"(from|import) \w", line))
            for node in ast.parse(lines).body:
                if isinstance(node, ast.ImportFrom):
                    found += [(page.name, node.module, alias.name) for alias in node.names]
                else:
                    found += [(page.name, alias.name, None) for alias in node.names]
    return found


@pytest.mark.parametrize(("page", "module", "name"), example_imports())
def test_the_examples_import_names_that_exist(page, module, name):
    imported = importlib.import_module(module)
    exists = name is None or hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}") is not None
    assert exists, f"{page}: `from {module} import {name}`: no such name"


def test_the_readme_is_a_front_page_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
