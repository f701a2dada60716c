"""Fixtures for the charm's unit tests.

The workload is the one thing replaced here: ops.testing runs no machine, so `fake_workload`
swaps the functions of src/workload.py for an in-memory service that records what was asked of it.
(tests/functional runs the real service.)
"""

import dataclasses
import json
import os
import pathlib

import pytest
import yaml
from ops import testing

import workload

ROOT = pathlib.Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class FakeWorkload:
    """An in-memory demo service: installed version, running flag, health and a call log."""

    installed: str | None = None
    running: bool = False
    healthy_after_restart: bool = True
    config: tuple | None = None
    calls: list = dataclasses.field(default_factory=list)

    def install(self, version):
        self.calls.append(("install", version))
        self.installed = version

    def ensure_config(self, port, startup_seconds):
        changed = self.config != (port, startup_seconds)
        self.config = (port, startup_seconds)
        return changed

    def start(self):
        self.calls.append(("start",))
        self.running = True

    def stop(self):
        self.calls.append(("stop",))
        self.running = False

    def restart(self):
        self.calls.append(("restart",))
        self.running = self.healthy_after_restart

    def health(self):
        return {"status": "ok", "version": self.installed} if self.running else None

    def served_version(self):
        return self.installed if self.running else None


@pytest.fixture
def fake_workload(monkeypatch, tmp_path):
    """Patch src/workload.py with a FakeWorkload; journal lines go under tmp_path."""
    monkeypatch.setenv("COORDINATED_OPS_ROOT", str(tmp_path))
    fake = FakeWorkload()
    for name in (
        "install",
        "ensure_config",
        "start",
        "stop",
        "restart",
        "health",
        "served_version",
    ):
        monkeypatch.setattr(workload, name, getattr(fake, name))
    monkeypatch.setattr(workload, "is_installed", lambda: fake.installed is not None)
    monkeypatch.setattr(workload, "get_version", lambda: fake.installed)
    monkeypatch.setattr(workload, "is_running", lambda: fake.running)
    return fake


def charm_context(**kwargs) -> testing.Context:
    """A Context for the real charm with its real metadata, actions and config files."""
    from charm import CoordinatedOpsCharm

    return testing.Context(
        CoordinatedOpsCharm,
        meta=yaml.safe_load((ROOT / "metadata.yaml").read_text()),
        actions=yaml.safe_load((ROOT / "actions.yaml").read_text()),
        config=yaml.safe_load((ROOT / "config.yaml").read_text()),
        **kwargs,
    )


@dataclasses.dataclass
class GoalState:
    """A real `goal-state` executable on PATH that prints the units it is given.

    `units` maps unit name to goal status ("active", "dying", ...); a unit not in it is one Juju
    has removed. `calls` counts how often a hook ran the tool (a line per call in `log`).
    """

    script: pathlib.Path
    log: pathlib.Path

    def set(self, units: dict[str, str]) -> None:
        body = {
            "units": {u: {"status": s, "since": "2026-01-01T00:00:00Z"} for u, s in units.items()},
            "relations": {},
        }
        self.script.write_text(
            f"#!/bin/sh\necho call >> '{self.log}'\ncat <<'JSON'\n{json.dumps(body)}\nJSON\n"
        )
        self.script.chmod(0o755)

    @property
    def calls(self) -> int:
        return len(self.log.read_text().splitlines()) if self.log.exists() else 0


@pytest.fixture
def goal_state(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> GoalState:
    """The goal-state hook tool as Juju runs it; call `.set(units)` before the hook runs."""
    bin_dir = tmp_path / "goal-state-bin"
    bin_dir.mkdir()
    tool = GoalState(bin_dir / "goal-state", tmp_path / "goal-state.log")
    tool.set({})
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return tool
