"""Runtime requirements are declared once each way they are consumed, and the copies agree.

requirements.txt (read by charmcraft's charm plugin) is kept by hand next to pyproject.toml's
[project].dependencies (read by tox and uv): both must list the same requirements with the same
specifiers. charmlibs.rollingops ships inside the charm, so its own pyproject's dependencies must
be among the charm's, with the same specifiers, and must cover every third-party module it imports.
"""

from __future__ import annotations

import ast
import pathlib
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.unit.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test group installs tomli on 3.10
    import tomli as tomllib  # pyright: ignore[reportMissingImports]

PACKAGE_DIR = ROOT / "lib" / "charmlibs" / "rollingops"
# Import name -> distribution name, for the modules charmlibs.rollingops imports.
DISTRIBUTION_OF = {"grpc": "grpcio"}


def _key(requirement: Requirement) -> str:
    """One requirement in a normal form: `name[extras]spec,spec; marker`, specifiers sorted."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    specifiers = ",".join(sorted(str(spec) for spec in requirement.specifier))
    marker = f"; {requirement.marker}" if requirement.marker else ""
    return f"{canonicalize_name(requirement.name)}{extras}{specifiers}{marker}"


def requirements_txt(path: pathlib.Path) -> set[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {_key(Requirement(line)) for line in lines if line}


def pyproject_dependencies(path: pathlib.Path) -> set[str]:
    project = tomllib.loads(path.read_text())["project"]
    return {_key(Requirement(text)) for text in project["dependencies"]}


def test_requirements_txt_lists_exactly_the_pyproject_dependencies():
    txt = requirements_txt(ROOT / "requirements.txt")
    toml = pyproject_dependencies(ROOT / "pyproject.toml")
    assert txt == toml, (
        f"only in requirements.txt: {sorted(txt - toml)}; "
        f"only in pyproject.toml: {sorted(toml - txt)}"
    )


def test_the_charm_carries_the_rollingops_package_dependencies():
    package = pyproject_dependencies(PACKAGE_DIR / "pyproject.toml")
    charm = pyproject_dependencies(ROOT / "pyproject.toml")
    assert package <= charm, f"add to pyproject.toml and requirements.txt: {package - charm}"


def third_party_imports(directory: pathlib.Path) -> set[str]:
    """Top-level modules imported anywhere in directory/*.py that are not stdlib nor ours."""
    found = set()
    for path in directory.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"__future__", "charmlibs"}


def test_the_rollingops_pyproject_declares_what_the_package_imports():
    imported = {
        canonicalize_name(DISTRIBUTION_OF.get(m, m)) for m in third_party_imports(PACKAGE_DIR)
    }
    project = tomllib.loads((PACKAGE_DIR / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(Requirement(text).name) for text in project["dependencies"]}
    assert imported == declared, f"imported {sorted(imported)}, declared {sorted(declared)}"
