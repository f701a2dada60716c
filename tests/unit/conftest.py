"""Fixtures for the charm's unit tests.

The workload is the one thing replaced here: ops.testing runs no machine, so `fake_workload`
swaps the functions of src/workload.py for an in-memory service that records what was asked of it.
(tests/functional runs the real service.)
"""

import dataclasses
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
