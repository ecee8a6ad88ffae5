"""The layering, read from the source: lsp -> fim, eval -> fim, fim -> codegemma, eval -> codegemma (benchmarks).

No package imports one above it or skips a layer (lsp never imports codegemma). Imports inside functions count.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("codegemma", "fim", "lsp", "eval")
ALLOWED = {("lsp", "fim"), ("eval", "fim"), ("fim", "codegemma"), ("eval", "codegemma")}


def imported_packages(path: Path) -> set[str]:
    """The project packages a module imports (top-level names only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def import_graph() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) package arrows, each with the modules that draw it."""
    arrows: dict[tuple[str, str], list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for target in imported_packages(path) - {package}:
                arrows.setdefault((package, target), []).append(str(path.relative_to(ROOT)))
    return arrows


def test_imports_follow_the_layers():
    arrows = import_graph()
    wrong = {arrow: modules for arrow, modules in arrows.items() if arrow not in ALLOWED}
    assert not wrong, f"imports against the layering: {wrong}"
    assert ("lsp", "fim") in arrows and ("fim", "codegemma") in arrows  # the check reads real imports
