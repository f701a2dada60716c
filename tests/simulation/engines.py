"""The engine registry: how the simulator drives each coordination engine of the demo charm.

One entry per engine. Adding an engine is adding one `Engine(...)` to ENGINES:

- `request(sim, unit)`: ask for the operation on one unit, the way an operator would (an action);
- `holds_grant(bags, unit)`: does this view of relation data show `unit` holding the grant? Used
  for I2 (on the entering unit's own view) and I3 (on the truth, for removed units);
- `k`: how many units may be inside at once (1 for every engine today);
- `actors(sim)`: optional background workers (e.g. a worker process talking to a fake etcd),
  objects with `next_time() -> int | None` and `step(sim)`, appended to `sim.actors`;
- `custom_delay`: ticks a library waits before its juju-exec dispatch runs (R22);
- `fakes(sim)`: the context manager that patches what cannot exist here (the demo workload, the
  journal); the demo charm's `DemoFakes` unless the engine needs more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .fakes import DemoFakes, demo_spec
from .runner import CharmSpec
from .simulator import Simulator
from .truth import Bags

APP = "coordinated-ops"


def _v0_holds_grant(bags: Bags, unit: str) -> bool:
    """rolling_ops v0 wire format: the leader's app-bag key for the unit says "granted"."""
    return bags.app("restart").get(f"<ops.model.Unit {unit}>") == "granted"


def _restart_with(engine: str) -> Callable[[Simulator, str], Any]:
    def request(sim: Simulator, unit: str) -> Any:
        return sim.request(unit, "restart", "restart", engine=engine)

    return request


def _no_actors(sim: Simulator) -> list[Any]:
    return []


@dataclasses.dataclass(frozen=True)
class Engine:
    """How to drive and judge one engine in the simulator."""

    name: str
    request: Callable[[Simulator, str], Any]
    holds_grant: Callable[[Bags, str], bool]
    operation: str = "restart"
    k: int = 1
    charm: Callable[[], CharmSpec] = demo_spec
    app: str = APP
    actors: Callable[[Simulator], list[Any]] = _no_actors
    custom_delay: dict[str, int] = dataclasses.field(default_factory=dict)
    fakes: Callable[[Simulator], DemoFakes] = DemoFakes


ENGINES: dict[str, Engine] = {
    "v0": Engine(name="v0", request=_restart_with("v0"), holds_grant=_v0_holds_grant),
}
