"""gdn_serve.envs: every GDN_SERVE_* variable is declared there, read through it, and
documented."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gdn_serve import envs

ROOT = Path(__file__).resolve().parents[1]
CODE = [ROOT / "gdn_serve", ROOT / "operator" / "gdn_operator", ROOT / "tools", ROOT / "tests"]


def test_nonnegative_int_reads_the_default_the_value_and_refuses_nonsense() -> None:
    var = envs.DECODE_SAMPLE_EVERY
    assert envs.nonnegative_int(var, {}) == 64
    assert envs.nonnegative_int(var, {var.name: " 1 "}) == 1
    assert envs.nonnegative_int(var, {var.name: "0"}) == 0  # timing off
    for bad in ("-3", "often", "1.5"):
        with pytest.raises(ValueError, match=f"{var.name} must be an integer >= 0"):
            envs.nonnegative_int(var, {var.name: bad})


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """String constants of a module, docstrings left out (those may name a variable)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_no_module_but_envs_spells_a_variable_name() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {text[:60]!r}"
        for folder in CODE
        for path in sorted(folder.rglob("*.py"))
        if path != ROOT / "gdn_serve" / "envs.py" and path != Path(__file__)
        for line, text in _string_literals(path)
        if "GDN_SERVE_" in text
    ]
    assert offenders == []


def test_every_variable_is_documented() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    assert [var.name for var in envs.ALL if f"`{var.name}`" not in doc] == []
