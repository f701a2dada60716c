"""charmlibs.rollingops identifies itself without impersonating PyPI's charmlibs-rollingops.

The scheme (package docstring, CHANGELOG.md): distribution `coordinated-ops-rollingops`, version
`1.1.5+coordinated.N` where 1.1.5 is the API followed and N is LIBPATCH.
"""

from __future__ import annotations

import re
import sys

import charmlibs.rollingops as rollingops
from packaging.version import Version

from tests.unit.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # the test group installs tomli on 3.10
    import tomli as tomllib  # pyright: ignore[reportMissingImports]

PACKAGE_DIR = ROOT / "lib" / "charmlibs" / "rollingops"


def test_version_is_the_followed_api_plus_our_release_number():
    version = Version(rollingops.__version__)
    assert version.public == "1.1.5"
    assert version.local == f"coordinated.{rollingops.LIBPATCH}"
    assert version.major == rollingops.LIBAPI


def test_the_distribution_is_not_named_charmlibs_rollingops():
    project = tomllib.loads((PACKAGE_DIR / "pyproject.toml").read_text())
    assert project["project"]["name"] == "coordinated-ops-rollingops"
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["hatch"]["version"]["path"] == "__init__.py"


def test_the_changelog_starts_with_this_version():
    changelog = (PACKAGE_DIR / "CHANGELOG.md").read_text()
    first = re.search(r"^## (\S+)", changelog, re.MULTILINE)
    assert first is not None
    assert first.group(1) == rollingops.__version__
