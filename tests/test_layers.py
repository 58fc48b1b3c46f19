"""The layers point one way: faces → tasks → engine → models, and the engine never sees Celery."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "models": {"pipeline", "tasks", "ihub", "celery"},
    "pipeline": {"tasks", "ihub", "celery", "kombu"},
    "tasks": {"ihub"},
}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_layers_below_it(package: str) -> None:
    """No module of a lower layer imports a higher one (including inside functions)."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_roots(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported_roots(path) & FORBIDDEN[package]
    }
    assert offenders == {}, f"{package}/ imports a layer above it: {offenders}"
