"""The goal-state readers of the four libraries on a malformed, hostile or hung `goal-state`.

Each reader decides which peers Juju has removed, and a removed peer's grant is given away: an
answer that wrongly makes a live peer look removed breaks the one-at-a-time guarantee. So any
answer that is not goal-state (no units, not this unit, too deep, too slow) removes nobody, and
never raises into the hook.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Callable

import pytest
from charmlibs.rollingops import _goal_state
from charms.coordinated_ops.v0 import coordinator
from charms.data_platform_libs.v0 import upgrade
from charms.rolling_ops.v0 import rollingops

READERS: dict[str, tuple[object, Callable[[list[str]], set[str]]]] = {
    "charmlibs.rollingops": (_goal_state, _goal_state.removed_units),
    "coordinator": (coordinator, coordinator._removed_units),  # pyright: ignore[reportPrivateUsage]
    "upgrade": (upgrade, upgrade._removed_units),  # pyright: ignore[reportPrivateUsage]
    "rollingops v0": (rollingops, rollingops._gone_from_goal_state),  # pyright: ignore[reportPrivateUsage]
}
PEERS = ["app/1", "app/2"]


@pytest.fixture
def tool(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Install a `goal-state` on PATH whose shell body is given; this unit is app/0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("JUJU_UNIT_NAME", "app/0")

    def install(body: str) -> None:
        script = bin_dir / "goal-state"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)

    return install


def _printing(value: object, tmp_path: pathlib.Path) -> str:
    out = tmp_path / "answer.json"
    out.write_text(value if isinstance(value, str) else json.dumps(value))
    return f"cat '{out}'"


@pytest.mark.parametrize("lib", READERS)
def test_a_well_formed_answer_still_finds_the_removed_peer(lib, tool, tmp_path):
    tool(_printing({"units": {"app/0": {}, "app/2": {}}, "relations": {}}, tmp_path))
    assert READERS[lib][1](PEERS) == {"app/1"}


@pytest.mark.parametrize(
    "answer",
    [
        {"units": {}, "relations": {}},  # no unit at all: every peer would look removed
        {"units": {"app/2": {}}, "relations": {}},  # not this unit: not our application's list
        "[" * 100_000 + "]" * 100_000,  # too deep for the decoder (RecursionError)
    ],
    ids=["no-units", "not-this-unit", "deep"],
)
@pytest.mark.parametrize("lib", READERS)
def test_an_answer_that_is_not_goal_state_removes_nobody(lib, answer, tool, tmp_path):
    tool(_printing(answer, tmp_path))
    assert READERS[lib][1](PEERS) == set()


@pytest.mark.parametrize("lib", READERS)
def test_a_hung_goal_state_does_not_hang_the_hook(lib, tool, monkeypatch):
    module, reader = READERS[lib]
    monkeypatch.setattr(module, "_GOAL_STATE_TIMEOUT", 0.5, raising=False)
    tool("exec sleep 5")
    start = time.monotonic()
    assert reader(PEERS) == set()
    assert time.monotonic() - start < 4
