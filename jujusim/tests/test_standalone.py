"""jujusim stands alone: it imports nothing from the charm, its libraries, the demo or tests/.

The check reads every module's imports (ast), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
import pathlib
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1]
# What a copy of jujusim may import besides itself and the standard library.
ALLOWED = {"ops", "scenario", "yaml", "jsonschema", "pytest", "hypothesis"}


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_jujusim_imports_only_itself_the_standard_library_and_ops_testing():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 10
    foreign = {
        f"{path.relative_to(PACKAGE)}: {root}"
        for path in modules
        for root in imported_roots(path)
        if root not in ALLOWED | {"jujusim", "__future__"} and root not in sys.stdlib_module_names
    }
    assert not foreign, f"jujusim must stand alone; it imports {sorted(foreign)}"
