"""The real coordinated-ops charm inside the multi-unit simulator, as the demo drives it.

The simulator (jujusim) plays the Juju controller; the charm code is the real charm
(src/charm.py and every library in lib/). How each restart engine is driven (its request, its
"holds the grant" predicate, background workers, extra applications such as the etcd provider)
comes from the engine registry (engines.py); what cannot exist in one process (the demo service,
the journal file, sleeping, etcd and the rollingops worker) is replaced by that engine's fakes.
This module adds what the demo needs on top:

- `demo_engines()`: the registry's engines under the names the demo offers, plus `coordinator`
  and the `upgrade` action, which the registry does not have;
- `DemoHarness(engine)`: a fresh simulator with an invariant recorder and the engine's fakes
  installed, as a context manager; `deploy(units)`;
- `fail_next_critical_section(unit)`: that unit's next critical section crashes its hook (the
  hook fails, Juju discards its writes and puts the unit in error, unless the library catches it)
  — whichever hook runs it;
- `lock_holder(harness)`: which unit holds the lock now, from the committed truth.

    with DemoHarness(demo_engines()["v0"]) as harness:
        harness.deploy(3)
        drain(harness.sim)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from typing import Any

from jujusim.invariants import Interval, Recorder
from jujusim.simulator import InjectedFault, Running, Simulator
from jujusim.truth import Bags

from .engines import ENGINES, Engine
from .fakes import DemoFakes

APP = "coordinated-ops"
UPGRADE_TICKS = 2  # installing another version, on top of its hook's tick


@dataclasses.dataclass
class Crash:
    """One injected crash: when, where, the hook it hit and the critical section it broke."""

    t: int
    unit: str
    run: Running  # run.ok tells, once committed, whether the hook failed (None until then)
    section: Interval | None


class CrashingFakes(DemoFakes):
    """DemoFakes whose critical section can be made to crash its hook, once per armed unit.

    Installing another version also costs `UPGRADE_TICKS`, so that an upgrade, like a restart,
    is visibly longer than a hook in the timeline.
    """

    def __init__(self, sim: Simulator):
        super().__init__(sim)
        self.crash_next: set[str] = set()
        self.crashed: list[Crash] = []

    def install(self, version: str) -> None:
        """Installing another version over a running install takes time, as in an upgrade."""
        if self.get_version() not in (None, version):
            self.sim.add_cost(UPGRADE_TICKS)
        super().install(version)

    @contextlib.contextmanager
    def operation(
        self, unit: str, operation: str, engine: str, token: Any = None, dirs: Any = ()
    ) -> Iterator[dict[str, Any]]:
        """The recorded critical section; raises inside it when `unit` is armed."""
        with super().operation(unit, operation, engine, token, dirs) as entry:
            if unit in self.crash_next:
                self.crash_next.discard(unit)
                recorder = self.sim.recorder
                section = recorder.intervals[-1] if recorder and recorder.intervals else None
                assert self.sim.current is not None
                self.crashed.append(Crash(self.sim.now, unit, self.sim.current, section))
                raise InjectedFault(f"injected crash inside the {operation} section on {unit}")
            yield entry


class DemoHarness:
    """A Simulator running the real charm for one engine, with a Recorder and the fakes."""

    def __init__(self, engine: Engine, *, seed: int = 0) -> None:
        self.engine = engine
        self.sim = Simulator(seed=seed)
        self.recorder = Recorder(
            self.sim, k=engine.k, holds_grant=engine.holds_grant, domains=engine.domains
        )
        factory = engine.fakes
        if not (isinstance(factory, type) and issubclass(factory, DemoFakes)):
            raise TypeError(f"engine {engine.name}: fakes must be a DemoFakes subclass")
        crashing = type(f"Crashing{factory.__name__}", (CrashingFakes, factory), {})
        self.fakes: CrashingFakes = crashing(self.sim)
        self.sim.actors.extend(engine.actors(self.sim))
        self.sim.custom_delay.update(engine.custom_delay)
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> DemoHarness:
        self._stack.enter_context(self.fakes.installed())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def deploy(self, units: int) -> None:
        """`juju deploy -n units` (plus whatever the engine integrates); run nothing yet."""
        self.sim.deploy(self.engine.app, self.engine.charm(), units=units)
        self.engine.setup(self.sim)

    def request(self, unit: str) -> None:
        """Ask for the engine's operation on `unit`, as an operator would."""
        self.engine.request(self.sim, unit)

    @property
    def crashed(self) -> list[Crash]:
        return self.fakes.crashed

    def fail_next_critical_section(self, unit: str) -> None:
        """The next critical section of `unit` raises inside the charm (fault in_critical_section).

        `sim.fail_hook` picks a hook by its label, and which hook runs the critical section
        differs per engine (an action, a relation-changed, a custom event); this arms the crash
        on the critical section itself.
        """
        self.fakes.crash_next.add(unit)


# --- engines the registry does not have --------------------------------------------------------


def _coordinator_holds_grant(bags: Bags, unit: str) -> bool:
    """Serial coordinator: the leader's grants map (app bag, key `coordinator`) names the unit."""
    grants = _json(bags.app("coordinator").get("coordinator"))
    return isinstance(grants, dict) and "restart" in (grants.get(unit) or {})


def _upgrade_holds_grant(bags: Bags, unit: str) -> bool:
    """data_platform upgrade: the unit is upgrading, or on top of the upgrade stack."""
    if bags.unit("upgrade", unit).get("state") == "upgrading":
        return True
    stack = _json(bags.app("upgrade").get("upgrade-stack"))
    return isinstance(stack, list) and bool(stack) and f"{APP}/{stack[-1]}" == unit


def _restart_with(engine: str) -> Callable[[Simulator, str], Any]:
    def request(sim: Simulator, unit: str) -> Any:
        return sim.request(unit, "restart", "restart", engine=engine)

    return request


def _upgrade_request(target: str) -> Callable[[Simulator, str], Any]:
    """`juju run <app>/leader upgrade version=<target>` once; every unit counts as requested."""

    def request(sim: Simulator, unit: str) -> Any:
        if not any(a.name == "upgrade" for a in sim.actions.values()):
            sim.run_action(f"{APP}/leader", "upgrade", version=target)
        if sim.recorder is not None:
            sim.recorder.request(unit, "upgrade")

    return request


UPGRADE_TARGET = "1.1.0"


def demo_engines() -> dict[str, Engine]:
    """What `--engine` (and `--operation upgrade`) can pick, by the demo's names."""
    return {
        "rollingops": ENGINES["rollingops-etcd"],
        "rollingops-peer": ENGINES["rollingops-peer"],
        "v0": ENGINES["v0"],
        "coordinator": ENGINES.get("coordinator")
        or Engine("coordinator", _restart_with("coordinator"), _coordinator_holds_grant),
        "upgrade": Engine(
            "upgrade", _upgrade_request(UPGRADE_TARGET), _upgrade_holds_grant, operation="upgrade"
        ),
    }


# --- who holds the lock: read from the committed relation data ----------------------------------


def lock_holder(harness: DemoHarness) -> tuple[str | None, Any]:
    """(unit holding the lock, its token if the wire format shows one), from the truth."""
    sim = harness.sim
    bags = Bags.from_truth(sim.relations, APP)
    for unit in sim.members(APP):
        if harness.engine.holds_grant(bags, unit):
            return unit, _token(bags, unit)
    return None, None


def _token(bags: Bags, unit: str) -> Any:
    grant = _json(bags.app("rollingops").get("rollingops-grant"))
    if isinstance(grant, dict) and grant.get("unit") == unit:
        return grant.get("token")
    token = bags.app("restart").get("rolling-ops-token")
    if bags.app("restart").get(f"<ops.model.Unit {unit}>") == "granted" and token:
        return int(token) if token.isdigit() else None
    return None


def _json(raw: str | None) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
