"""The demo charm (src/charm.py) inside the simulator: fakes for what cannot exist here.

Each simulated unit gets an in-memory stand-in for the demo service (the functions of
src/workload.py listed in notes/CHARM_CONTRACT.md), keyed by the unit whose hook is running, and
its own COORDINATED_OPS_ROOT directory for any local file the charm keeps. The operation journal
(`journal.operation`) feeds the invariant recorder instead of a file: the entry is stamped at the
start of the hook that makes it and the exit at that hook's commit (rule: logical time and commit).
A restart declares its cost in logical ticks (`RESTART_TICKS`), and `restart.hold_lock_for(delay)`
adds the action's `delay` (one tick per second), so a critical section spans a longer hook and can
overlap other units' hooks. Nothing is asked of the charm beyond that contract.

    fakes = DemoFakes(sim)
    with fakes.installed():
        sim.deploy("coordinated-ops", demo_spec(), units=3)
        drain(sim)
        fork = sim.fork(seed=7)
        fakes.attach(fork)  # the fakes now serve the fork (its workloads were copied with it)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from typing import Any
from unittest import mock

from jujusim.runner import CharmSpec
from jujusim.simulator import Running, Simulator

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESTART_TICKS = 2  # a restart (stop, start, health check) costs 2 ticks on top of its hook
WORKLOAD_FUNCTIONS = (
    "is_installed",
    "install",
    "get_version",
    "ensure_config",
    "start",
    "stop",
    "restart",
    "is_running",
    "health",
    "served_version",
)


def demo_spec() -> CharmSpec:
    """The real demo charm class with the repo's metadata.yaml, actions.yaml and config.yaml."""
    from charm import CoordinatedOpsCharm  # src/ is on sys.path (tests/conftest.py, tox)

    return CharmSpec.from_dir(CoordinatedOpsCharm, ROOT)


@dataclasses.dataclass
class FakeService:
    """One unit's demo service, in memory."""

    version: str | None = None
    running: bool = False
    port: int = 0
    startup_seconds: float = 0.0
    restarts: int = 0
    mounts: dict[str, str] = dataclasses.field(default_factory=dict)  # mount point -> source


class DemoFakes:
    """Per-unit fake workloads and the journal-to-recorder bridge for one simulator."""

    def __init__(self, sim: Simulator):
        self.sim = sim
        self._tmp = pathlib.Path(tempfile.mkdtemp(prefix="sim-units-"))
        weakref.finalize(self, shutil.rmtree, self._tmp, ignore_errors=True)
        self.attach(sim)

    def attach(self, sim: Simulator) -> DemoFakes:
        """Serve `sim` from now on (its workloads live in sim.workloads, so forks copy them)."""
        self.sim = sim
        if self not in sim.listeners:
            sim.listeners.insert(0, self)
        return self

    def _service(self) -> FakeService:
        run = self.sim.current
        if run is None:
            raise RuntimeError("the demo workload was called outside a simulated hook")
        service = self.sim.workloads.setdefault(run.unit, FakeService())
        assert isinstance(service, FakeService)
        return service

    # --- simulator listener: each unit's files in its own directory ------------------------

    def on_start(self, sim: Simulator, run: Running) -> None:
        root = self._tmp / f"seed-{sim.seed}" / run.unit.replace("/", "-")
        root.mkdir(parents=True, exist_ok=True)
        os.environ["COORDINATED_OPS_ROOT"] = str(root)

    def on_commit(self, sim: Simulator, run: Running, ok: bool) -> None:
        pass

    # --- workload.* -----------------------------------------------------------------------

    def is_installed(self) -> bool:
        return self._service().version is not None

    def install(self, version: str) -> None:
        self._service().version = version

    def get_version(self) -> str | None:
        return self._service().version

    def ensure_config(self, port: int, startup_seconds: float) -> bool:
        service = self._service()
        changed = (service.port, service.startup_seconds) != (port, startup_seconds)
        service.port, service.startup_seconds = port, startup_seconds
        return changed

    def start(self) -> None:
        self._service().running = True

    def stop(self) -> None:
        self._service().running = False

    def restart(self) -> None:
        service = self._service()
        service.running = True
        service.restarts += 1
        self.sim.add_cost(RESTART_TICKS)

    def is_running(self) -> bool:
        return self._service().running

    def health(self) -> dict | None:
        service = self._service()
        return {"status": "ok", "version": service.version} if service.running else None

    def served_version(self) -> str | None:
        service = self._service()
        return service.version if service.running else None

    def hold_lock_for(self, seconds: float) -> None:
        self.sim.add_cost(int(seconds))

    # --- journal.operation ----------------------------------------------------------------

    @contextlib.contextmanager
    def operation(
        self, unit: str, operation: str, engine: str, token: Any = None, dirs: Any = ()
    ) -> Iterator[dict[str, Any]]:
        """Stands in for journal.operation: the critical section goes to the recorder."""
        entry: dict[str, Any] = {"unit": unit, "operation": operation, "engine": engine}
        entry["token"] = token
        interval = None
        if self.sim.recorder is not None:
            interval = self.sim.recorder.enter(operation, token)
        try:
            self.sim.checkpoint("in_critical_section")  # fail_hook(point="in_critical_section")
            yield entry
        except BaseException:
            if interval is not None:  # the journal records result "failed": not a service
                interval.failed = True
            raise

    def patches(self) -> list[tuple[object, str, object]]:
        """(module, name, stand-in) for `installed`; a subclass adds its own."""
        import journal
        import restart
        import workload

        return [
            *((workload, name, getattr(self, name)) for name in WORKLOAD_FUNCTIONS),
            (journal, "operation", self.operation),
            (restart, "hold_lock_for", self.hold_lock_for),
        ]

    @contextlib.contextmanager
    def installed(self) -> Iterator[DemoFakes]:
        """Patch src/workload.py, journal.operation and restart.hold_lock_for for the block."""
        saved_root = os.environ.get("COORDINATED_OPS_ROOT")
        with contextlib.ExitStack() as stack:
            for module, name, value in self.patches():
                stack.enter_context(mock.patch.object(module, name, value))
            try:
                yield self
            finally:
                if saved_root is None:
                    os.environ.pop("COORDINATED_OPS_ROOT", None)
                else:
                    os.environ["COORDINATED_OPS_ROOT"] = saved_root
