"""The engine registry: how the simulator drives each coordination engine of the demo charm.

One entry per engine. Adding an engine is adding one `Engine(...)` to ENGINES:

- `request(sim, unit)`: ask for the operation on one unit, the way an operator would (an action);
- `holds_grant(bags, unit)`: does this view of relation data show `unit` holding the grant? Used
  for I2 (on the entering unit's own view) and I3 (on the truth, for removed units);
- `k`: how many units may be inside at once (2 for the `-up-to-2` and `-k2` engines, else 1);
- `actors(sim)`: optional background workers (e.g. a worker process talking to a fake etcd),
  objects with `next_time() -> int | None` and `step(sim)`, appended to `sim.actors`;
- `custom_delay`: ticks a library waits before its juju-exec dispatch runs (rule: custom
  events through juju-exec);
- `fakes(sim)`: the context manager that patches what cannot exist here (the demo workload, the
  journal); the demo charm's `DemoFakes` unless the engine needs more;
- `setup(sim)`: deploy and integrate what else the engine needs (e.g. an etcd provider) before
  the deployment settles;
- `faults(sim, units)`: arm the engine's own faults (e.g. an etcd outage) with the simulator's
  RNG; returns their descriptions;
- `domains`: the lock domain of each operation, for I1 and I6 (jujusim/invariants.py). The
  demo charm's restart (engine rollingops), remount and upgrade step share one lock
  (`ONE_LOCK`): no two of them may run on two units at once, whichever they are.

The `one-lock` engine mixes operations: every unit asks for a rollingops restart and the upgrade
(the upgrade engine's operator, rollback fault included), and the NFS provider moves the share
(nfs_engine.py), all at once, so restarts, upgrade steps and remounts queue behind each other on
the one lock.
- `unstick(sim)`: what the operator does when a request stays unserved (rollingops: resume a
  roll the charm halted after failures), or None.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jujusim.protocols import Actor
from jujusim.runner import CharmSpec
from jujusim.simulator import Simulator
from jujusim.truth import Bags

from . import coordinator_engines, nfs_engine, rollingops_engines, upgrade_engine
from .fakes import DemoFakes, demo_spec

APP = "coordinated-ops"
ONE_LOCK: dict[str, str] = dict.fromkeys(("restart", "remount", "upgrade"), "one-lock")


def _v0_holds_grant(bags: Bags, unit: str) -> bool:
    """rolling_ops v0 wire format: the leader's app-bag key for the unit says "granted"."""
    return bags.app("restart").get(f"<ops.model.Unit {unit}>") == "granted"


def _restart_with(engine: str) -> Callable[[Simulator, str], Any]:
    def request(sim: Simulator, unit: str) -> Any:
        return sim.request(unit, "restart", "restart", engine=engine)

    return request


def _restart_upgrade_remount(sim: Simulator, unit: str) -> None:
    """`one-lock`: a rollingops restart of `unit`, its part in the upgrade and the remount.

    The upgrade and the endpoint change are one command for all units, issued with the first
    request; the order of the three requests is random.
    """
    steps = [_restart_with("rollingops"), upgrade_engine.request, _remount]
    sim.rng.shuffle(steps)
    for step in steps:
        step(sim, unit)


def _remount(sim: Simulator, unit: str) -> None:
    nfs_engine.request_remount(sim)


def _no_actors(sim: Simulator) -> list[Actor]:
    return []


def _no_setup(sim: Simulator) -> None:
    return None


def _no_faults(sim: Simulator, units: list[str]) -> list[str]:
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
    actors: Callable[[Simulator], list[Actor]] = _no_actors
    custom_delay: dict[str, int] = dataclasses.field(default_factory=dict)
    fakes: Callable[[Simulator], DemoFakes] = DemoFakes
    setup: Callable[[Simulator], None] = _no_setup  # more apps/relations, before settling
    faults: Callable[[Simulator, list[str]], list[str]] = _no_faults  # engine-specific faults
    domains: dict[str, str] = dataclasses.field(default_factory=dict)  # operation -> lock
    unstick: Callable[[Simulator], Any] | None = None


ENGINES: dict[str, Engine] = {
    "v0": Engine(name="v0", request=_restart_with("v0"), holds_grant=_v0_holds_grant),
    "rollingops-peer": Engine(
        name="rollingops-peer",
        request=_restart_with("rollingops"),
        holds_grant=rollingops_engines.peer_holds_grant,
        domains=ONE_LOCK,
        unstick=rollingops_engines.resume_if_halted,
    ),
    "rollingops-etcd": Engine(
        name="rollingops-etcd",
        request=_restart_with("rollingops"),
        holds_grant=rollingops_engines.etcd_holds_grant,
        actors=rollingops_engines.etcd_actors,
        fakes=rollingops_engines.RollingOpsEtcdFakes,
        setup=rollingops_engines.etcd_setup,
        faults=rollingops_engines.etcd_faults,
        domains=ONE_LOCK,
        unstick=rollingops_engines.resume_if_halted,
    ),
    "coordinator": Engine(
        name="coordinator",
        request=_restart_with("coordinator"),
        holds_grant=coordinator_engines.holds_grant,
    ),
    "coordinator-up-to-2": Engine(
        name="coordinator-up-to-2",
        request=_restart_with("coordinator"),
        holds_grant=coordinator_engines.holds_grant,
        k=coordinator_engines.N_HOLDERS,
        charm=coordinator_engines.up_to_two_spec,
    ),
    "upgrade": Engine(
        name="upgrade",
        operation="upgrade",
        request=upgrade_engine.request,
        holds_grant=upgrade_engine.holds_grant,
        fakes=upgrade_engine.UpgradeFakes,
        faults=upgrade_engine.faults,
        domains=ONE_LOCK,
        # The step runs under the one lock: a step that raises halts it (halt-after-failures).
        unstick=rollingops_engines.resume_if_halted,
    ),
    "one-lock": Engine(
        name="one-lock",
        request=_restart_upgrade_remount,
        holds_grant=rollingops_engines.peer_holds_grant,  # the one lock's peer grant
        fakes=nfs_engine.NfsFakes,
        setup=nfs_engine.setup,
        faults=upgrade_engine.faults,
        domains=ONE_LOCK,
        unstick=rollingops_engines.resume_if_halted,
    ),
}


def with_max_parallel(engine: Engine, k: int, faults: Callable | None = None) -> Engine:
    """`engine` with `juju config max-parallel=k` before the deployment settles (rollingops)."""

    def setup(sim: Simulator) -> None:
        engine.setup(sim)
        sim.config(engine.app, **{"max-parallel": k})

    return dataclasses.replace(
        engine, name=f"{engine.name}-k{k}", k=k, setup=setup, faults=faults or engine.faults
    )


ENGINES["rollingops-peer-k2"] = with_max_parallel(
    ENGINES["rollingops-peer"], 2, rollingops_engines.control_faults
)
ENGINES["rollingops-etcd-k2"] = with_max_parallel(
    ENGINES["rollingops-etcd"], 2, rollingops_engines.etcd_control_faults
)
