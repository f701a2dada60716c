"""README.md's simulator example, run exactly as written, and jujusim's ready-made grant checks.

The example is the README's ```python block under "Testing your charm on N units"; it runs here
against `example_charm.RollingOpsCharm` (charmlibs.rollingops on its peer backend) and must fail
against `UnlockedCharm`, which restarts every unit at once. The same check, with each library's
grant check, passes for the v0 and coordinator example charms.
"""

from __future__ import annotations

import logging
import pathlib
import re
from typing import Any

import pytest

from jujusim import CharmSpec, check_charm, grants

from .example_charm import CHARM_DIR, CoordinatorCharm, StaticCharm, UnlockedCharm, V0Charm

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
HEADING = "## Testing your charm on N units"


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    logging.disable(logging.CRITICAL)  # every unit's every hook logs
    yield
    logging.disable(logging.NOTSET)


def readme_example() -> str:
    text = README.read_text()
    assert HEADING in text, f"README.md has no section {HEADING!r}"
    section = text.split(HEADING, 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert block is not None, "the section has no python example"
    return block.group(1)


def run_example(charm: type) -> None:
    code = readme_example()
    namespace: dict[str, Any] = {"MyCharm": charm, "CHARM_DIR": CHARM_DIR}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 1, "the example defines one test function"
    tests[0]()


def test_readme_example_passes_on_a_charm_using_rollingops():
    from .example_charm import RollingOpsCharm

    run_example(RollingOpsCharm)


def test_readme_example_fails_on_a_charm_that_restarts_without_a_lock():
    with pytest.raises(AssertionError, match=r"I1 .* units inside the critical section"):
        run_example(UnlockedCharm)


def test_readme_example_is_short_and_uses_public_names_only():
    import jujusim

    code = readme_example()
    assert len(code.splitlines()) <= 22, "the README promises about 20 lines"
    imported = re.search(r"from jujusim import (.*)", code)
    assert imported is not None
    names = [name.strip() for name in imported.group(1).split(",")]
    assert set(names) <= set(jujusim.__all__)
    assert not re.search(r"\._[a-z]", code), "the example reaches into a private member"
    assert "sys.path" not in code


@pytest.mark.parametrize(
    ("charm", "holds_grant"),
    [
        (V0Charm, grants.rolling_ops_v0("restart-v0")),
        (CoordinatorCharm, grants.coordinator("restart")),
    ],
    ids=["v0", "coordinator"],
)
def test_each_library_passes_the_check_with_its_grant_check(charm, holds_grant):
    report = check_charm(
        CharmSpec.from_dir(charm, CHARM_DIR),
        request="restart",
        critical_section=(charm, "_restart"),
        holds_grant=holds_grant,
        seeds=range(2),
        faults=("none", "leader-removed", "holder-removed", "hook-failure"),
    )
    assert report.ok, report
    assert all(s.operations >= 2 for s in report.schedules), report.schedules


def test_a_grant_check_catches_work_done_without_the_grant():
    report = check_charm(
        CharmSpec.from_dir(UnlockedCharm, CHARM_DIR),
        request="restart",
        critical_section=(UnlockedCharm, "_restart"),
        holds_grant=grants.rolling_ops_v0("restart-v0"),
        seeds=[0],
    )
    assert not report.ok
    assert any("without holding the grant" in p for p in report.schedules[0].problems), report


def test_the_critical_section_is_restored_after_the_check():
    original = UnlockedCharm._restart
    check_charm(
        CharmSpec.from_dir(UnlockedCharm, CHARM_DIR),
        request="restart",
        critical_section=(UnlockedCharm, "_restart"),
        seeds=[0],
    )
    assert UnlockedCharm._restart is original


def test_unknown_faults_are_refused_with_the_list_of_known_ones():
    with pytest.raises(ValueError, match="holder-removed"):
        check_charm(
            CharmSpec.from_dir(V0Charm, CHARM_DIR),
            request="restart",
            critical_section=(V0Charm, "_restart"),
            faults=("machine-on-fire",),
        )


def test_a_module_function_can_be_the_critical_section():
    """`critical_section` may name a function of a module the charm calls (here a staticmethod)."""
    report = check_charm(
        CharmSpec.from_dir(StaticCharm, CHARM_DIR),
        request="restart",
        critical_section=(StaticCharm, "restart_service"),
        seeds=[0],
    )
    assert not report.ok  # the static section is seen: three units inside at once
    assert StaticCharm.__dict__["restart_service"].__class__ is staticmethod
