"""No import cycles: among the charm's modules in src/, and among each library's modules in lib/.

The graph is read from the source with `ast`, not by importing: every `import` statement counts,
wherever it is (a function body, an `if TYPE_CHECKING:` block), because an import moved into a
function hides a two-way dependency without removing it. An edge goes to the module named, or to
the package when the name is not a module of the group (`from pkg import name`). A package does
not depend on its submodules merely by containing them; `import pkg.sub` is an edge to pkg.sub.

Groups: src/ (the charm, with its packages) and each library under lib/: every single-file
library under lib/charms, and each package under lib/charmlibs.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

from tests.unit.conftest import ROOT

KNOWN_CYCLES: dict[str, str] = {}  # group -> why its cycle is tolerated (none today)


def modules(base: pathlib.Path, package: str = "") -> dict[str, pathlib.Path]:
    """Module name -> file for every .py under `base` (named relative to `base`'s parent)."""
    found = {}
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join([p for p in (package, *parts) if p])
        found[name] = path
    return found


def imports(name: str, path: pathlib.Path, group: set[str]) -> set[str]:
    """The modules of `group` that module `name` (at `path`) imports, anywhere in its source."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def in_group(target: str) -> str | None:
        while target and target not in group:  # `import pkg.name` of a non-module: the package
            target = target.rpartition(".")[0]
        return target or None

    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(in_group(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x`, `from .mod import x`
                parts = here.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            subs = {f"{base}.{alias.name}" for alias in node.names} & group
            # `from pkg import sub` imports the submodule; `from pkg import name`, the package.
            found.update(subs if subs else {in_group(base)})
    return {target for target in found if target is not None and target != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in `graph` as [a, b, ..., a], or None (depth-first search, colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def groups() -> dict[str, dict[str, pathlib.Path]]:
    """Group name -> its modules: src/, each lib/charms library, each lib/charmlibs package."""
    found = {"src": modules(ROOT / "src")}
    for path in sorted((ROOT / "lib" / "charms").glob("*/v*/*.py")):
        name = ".".join(path.relative_to(ROOT / "lib").with_suffix("").parts)
        found[name] = {name: path}
    for package in sorted((ROOT / "lib" / "charmlibs").iterdir()):
        if (package / "__init__.py").exists():
            name = f"charmlibs.{package.name}"
            found[name] = modules(package, name)
    return found


def graph_of(group: dict[str, pathlib.Path]) -> dict[str, set[str]]:
    return {name: imports(name, path, set(group)) for name, path in group.items()}


def cycle_report(cycle: list[str], graph: dict[str, set[str]]) -> str:
    edges = "\n".join(f"  {a} -> {', '.join(sorted(b))}" for a, b in sorted(graph.items()) if b)
    return f"import cycle: {' -> '.join(cycle)}\nthe group's imports:\n{edges}"


@pytest.mark.parametrize("name", sorted(groups()))
def test_no_import_cycle(name):
    graph = graph_of(groups()[name])
    cycle = find_cycle(graph)
    if name in KNOWN_CYCLES:
        assert cycle is not None, f"{name} has no cycle now: remove it from KNOWN_CYCLES"
        pytest.xfail(f"{KNOWN_CYCLES[name]}: {' -> '.join(cycle)}")
    if cycle:
        print(cycle_report(cycle, graph))
    assert cycle is None, cycle_report(cycle, graph)


def test_the_graph_sees_imports_in_functions_and_type_checking_blocks(tmp_path):
    """The reader finds the cycles the issue named: a function-level and a TYPE_CHECKING import."""
    (tmp_path / "a.py").write_text("def f():\n    import b\n")
    (tmp_path / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a import f\n"
    )
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.sub import x\n")
    (tmp_path / "pkg" / "sub.py").write_text("from . import other\n")
    (tmp_path / "pkg" / "other.py").write_text("import pkg\n")
    graph = graph_of(modules(tmp_path))
    assert graph["a"] == {"b"} and graph["b"] == {"a"}
    assert graph["pkg"] == {"pkg.sub"} and graph["pkg.sub"] == {"pkg.other"}
    assert graph["pkg.other"] == {"pkg"}
    assert find_cycle(graph) == ["a", "b", "a"]
    assert find_cycle({k: v for k, v in graph.items() if k not in ("a", "b")}) == [
        "pkg",
        "pkg.sub",
        "pkg.other",
        "pkg",
    ]
