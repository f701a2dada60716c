"""The real coordinated-ops charm inside the multi-unit simulator, for the demo.

The simulator (simulator.py) plays the Juju controller; the charm code is the real charm
(src/charm.py and every library in lib/). What cannot exist in one process is replaced, and only
that:

- the demo service: each unit gets an in-memory `FakeService` (installed version, running flag);
  the functions of src/workload.py are swapped for ones that act on the service of the unit whose
  hook is running. A restart costs `RESTART_TICKS` logical ticks, an upgrade step about as much,
  so a critical section is visibly longer than a hook;
- the operation journal: `journal.operation` feeds the invariant recorder (invariants.py), which
  stamps each critical section from the start of the hook that entered it to that hook's commit;
- `restart.hold_lock_for(delay)` costs `delay` ticks instead of sleeping;
- each unit's local files (COORDINATED_OPS_ROOT: the rollingops state directory, ...) live in
  its own temporary directory.

    with DemoHarness() as harness:
        sim = harness.sim
        sim.deploy(APP, harness.spec, units=3)
        drain(sim)

`lock_holder(sim, operation, engine)` reads the committed relation data to say which unit holds
the lock; `fail_next_critical_section(unit)` makes that unit's next critical section crash its
hook (the hook fails, Juju discards its writes and puts the unit in error).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import tempfile
from collections.abc import Iterator
from typing import Any

import journal
import restart
import workload
from charm import CoordinatedOpsCharm

from .invariants import Recorder
from .runner import CharmSpec
from .simulator import InjectedFault, Running, Simulator
from .truth import Bags

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = "coordinated-ops"
RESTART_TICKS = 3  # a restart takes this many ticks on top of its hook's one
START_TICKS = 2  # starting a stopped service
INSTALL_TICKS = 1  # installing another version


@dataclasses.dataclass
class FakeService:
    """One unit's demo service, in memory."""

    installed: str | None = None
    running: bool = False
    config: tuple[int, float] | None = None
    restarts: int = 0


class DemoHarness:
    """Builds a Simulator running the real charm with per-unit fake services (a context manager).

    Entering patches src/workload.py, journal.operation and restart.hold_lock_for; leaving puts
    the originals back and removes the units' temporary directories.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.sim = Simulator(seed=seed)
        self.recorder = Recorder(self.sim)
        self.spec = CharmSpec.from_dir(CoordinatedOpsCharm, ROOT)
        self.services: dict[str, FakeService] = {}
        self.crash_next: set[str] = set()  # units whose next critical section crashes its hook
        self.crashed: list[tuple[int, str]] = []  # (time, unit) of each injected crash
        self._tmp = tempfile.TemporaryDirectory(prefix="coordinated-ops-demo-")
        self._saved: list[tuple[Any, str, Any]] = []
        self._saved_root = os.environ.get("COORDINATED_OPS_ROOT")
        self.sim.listeners.append(self)

    # --- patching ---------------------------------------------------------------------------

    def __enter__(self) -> DemoHarness:
        fakes = {
            "is_installed": lambda: self._service().installed is not None,
            "install": self._install,
            "get_version": lambda: self._service().installed,
            "ensure_config": self._ensure_config,
            "start": self._start,
            "stop": self._stop,
            "restart": self._restart,
            "is_running": lambda: self._service().running,
            "health": self._health,
            "served_version": lambda: (
                self._service().installed if self._service().running else None
            ),
        }
        for name, fake in fakes.items():
            self._patch(workload, name, fake)
        self._patch(journal, "operation", self._operation)
        self._patch(restart, "hold_lock_for", lambda seconds: self.sim.add_cost(int(seconds)))
        return self

    def __exit__(self, *exc: object) -> None:
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved.clear()
        if self._saved_root is None:
            os.environ.pop("COORDINATED_OPS_ROOT", None)
        else:
            os.environ["COORDINATED_OPS_ROOT"] = self._saved_root
        self._tmp.cleanup()

    def _patch(self, module: Any, name: str, value: Any) -> None:
        self._saved.append((module, name, getattr(module, name)))
        setattr(module, name, value)

    # --- simulator listener: each unit's files in its own directory ---------------------------

    def on_start(self, sim: Simulator, run: Running) -> None:
        unit_root = pathlib.Path(self._tmp.name, run.unit.replace("/", "-"))
        unit_root.mkdir(exist_ok=True)
        os.environ["COORDINATED_OPS_ROOT"] = str(unit_root)

    def on_commit(self, sim: Simulator, run: Running, ok: bool) -> None:
        pass

    # --- the fake demo service ------------------------------------------------------------------

    def _service(self) -> FakeService:
        run = self.sim.current
        if run is None:
            raise RuntimeError("the demo service was used outside a simulated hook")
        return self.services.setdefault(run.unit, FakeService())

    def _install(self, version: str) -> None:
        service = self._service()
        if service.installed != version:
            self.sim.add_cost(INSTALL_TICKS)
        service.installed = version

    def _ensure_config(self, port: int, startup_seconds: float) -> bool:
        service = self._service()
        changed = service.config != (port, startup_seconds)
        service.config = (port, startup_seconds)
        return changed

    def _start(self) -> None:
        service = self._service()
        if not service.running:
            self.sim.add_cost(START_TICKS)
        service.running = True

    def _stop(self) -> None:
        self._service().running = False

    def _restart(self) -> None:
        service = self._service()
        self.sim.add_cost(RESTART_TICKS)
        service.running = True
        service.restarts += 1

    def _health(self) -> dict | None:
        service = self._service()
        return {"status": "ok", "version": service.installed} if service.running else None

    # --- the journal: every critical section goes to the recorder --------------------------------

    @contextlib.contextmanager
    def _operation(
        self, unit: str, operation: str, engine: str, token: Any = None, dirs: Any = ()
    ) -> Iterator[dict]:
        """Stands in for journal.operation: records the critical section, may crash the hook."""
        self.recorder.enter(operation, token)
        entry: dict = {"unit": unit, "operation": operation, "engine": engine, "token": token}
        if unit in self.crash_next:
            self.crash_next.discard(unit)
            self.crashed.append((self.sim.now, unit))
            raise InjectedFault(
                f"injected crash inside the {operation} critical section on {unit}"
            )
        yield entry

    def fail_next_critical_section(self, unit: str) -> None:
        """The next critical section of `unit` raises: its hook fails (B8 in_critical_section).

        The simulator's own `fail_hook` picks a hook by its label; which hook runs the critical
        section differs per engine (an action, a relation-changed, a custom event), so the demo
        arms the crash on the critical section itself.
        """
        self.crash_next.add(unit)


# --- who holds the lock: read from the committed relation data ----------------------------------


def lock_holder(sim: Simulator, operation: str, engine: str) -> tuple[str | None, Any]:
    """(unit holding the lock or None, its fencing token or None), from the committed truth."""
    if APP not in sim.apps:
        return None, None
    bags = Bags.from_truth(sim.relations, APP)
    if operation == "upgrade":
        return _upgrade_holder(bags)
    if engine == "rollingops":
        return _rollingops_holder(bags)
    if engine == "v0":
        return _v0_holder(bags)
    if engine == "coordinator":
        return _coordinator_holder(bags)
    return None, None


def _json(raw: str | None) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _rollingops_holder(bags: Bags) -> tuple[str | None, Any]:
    grant = _json(bags.app("rollingops").get("rollingops-grant"))
    if isinstance(grant, dict) and isinstance(grant.get("unit"), str):
        return grant["unit"], grant.get("token")
    return None, None


def _v0_holder(bags: Bags) -> tuple[str | None, Any]:
    app = bags.app("restart")
    token = app.get("rolling-ops-token")
    for key, value in app.items():
        if value == "granted" and key.startswith("<ops.model.Unit "):
            return key[len("<ops.model.Unit ") : -1], int(token) if token else None
    return None, None


def _coordinator_holder(bags: Bags) -> tuple[str | None, Any]:
    grants = _json(bags.app("coordinator").get("coordinator"))
    if isinstance(grants, dict):
        for unit, locks in sorted(grants.items()):
            if isinstance(locks, dict) and "restart" in locks:
                return unit, None
    return None, None


def _upgrade_holder(bags: Bags) -> tuple[str | None, Any]:
    for unit in bags.units("upgrade"):
        if bags.unit("upgrade", unit).get("state") == "upgrading":
            return unit, None
    return None, None
