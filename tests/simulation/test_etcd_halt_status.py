"""A roll halted in etcd, in the statuses: every unit runs its own hooks on the simulator.

The demo charm on the etcd backend (stand-in provider, fake etcd, one simulated worker per unit:
demo/etcd_world.py). A unit's restart fails inside its critical section; its worker records the
failure and halts the roll in etcd (the pause key, in the release transaction). The units whose
restarts then wait on the lock learn the halt from their own worker (worker-status.json) and say
so at their next hook (update-status here), with the failed unit and how to go on; the leader's
app status too, since it waits as well. After `resume` on the leader the lines go, and every
restart runs. Failed on the old code: the statuses said only "restart queued (rollingops, etcd)".
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from demo import rollingops_engines
from demo.fakes import demo_spec
from demo.rollingops_engines import RollingOpsEtcdFakes
from jujusim.scheduler import RoundRobin, drain
from jujusim.simulator import Simulator

APP = "coordinated-ops"
RESUME = "`resume` on the leader continues"


class FailingRestartFakes(RollingOpsEtcdFakes):
    """The etcd fakes, whose next critical section of an armed unit finds the service dead."""

    def __init__(self, sim: Simulator):
        super().__init__(sim)
        self.fail_next: set[str] = set()
        self.failed: list[str] = []

    @contextlib.contextmanager
    def operation(self, unit: str, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        import workload

        with super().operation(unit, *args, **kwargs) as entry:
            if unit in self.fail_next:
                self.fail_next.clear()
                self.failed.append(unit)
                raise workload.WorkloadError("injected: the service does not come back")
            yield entry


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("waiters", ["after", "before"])
def test_units_waiting_on_an_etcd_halt_name_it_until_resume(waiters):
    """The other units ask after the halt or before the failure.

    After: their workers' first attempt meets the halt. Before: they wait already, and the
    halt's transaction deletes the failed unit's slot, which wakes them.
    """
    sim = Simulator(seed=3)
    fakes = FailingRestartFakes(sim)
    with fakes.installed():
        fakes.attach(sim)
        members = sim.deploy(APP, demo_spec(), units=4)
        rollingops_engines.etcd_setup(sim)
        drain(sim, RoundRobin())
        leader = sim.leader(APP)
        first, *others = [unit for unit in members if unit != leader]
        assert rollingops_engines.etcd_halt(sim) is None

        fakes.fail_next.update(members)  # the first restart that runs fails, whichever it is
        sim.run_action(first, "restart")
        if waiters == "after":
            drain(sim, RoundRobin())
            assert fakes.failed == [first]
        for unit in [*others, leader]:
            sim.run_action(unit, "restart")
        drain(sim, RoundRobin())
        assert len(fakes.failed) == 1
        halt = f"halted after 1 failed operation(s): {fakes.failed[0]}"
        assert rollingops_engines.etcd_halt(sim) == halt
        sim.update_status(APP)  # the next hook of each unit: its worker has tried by now
        drain(sim, RoundRobin())

        waiting = f"restart queued (rollingops, etcd) on a paused lock ({halt}): {RESUME}"
        statuses = {unit: sim.units[unit].unit_status.message for unit in members}
        assert statuses == dict.fromkeys(members, waiting)  # the failed unit's retry waits too
        app = sim.apps[APP].app_status
        assert (app.name, app.message) == (
            "blocked",
            f"rollingops lock paused ({halt}): `rolling-status` shows what waits; run resume",
        )

        record = sim.run_action(f"{APP}/leader", "resume")
        drain(sim, RoundRobin())
        assert record.status == "completed", record.message
        sim.update_status(APP)
        drain(sim, RoundRobin())
        assert rollingops_engines.etcd_halt(sim) is None
        statuses = {unit: sim.units[unit].unit_status.message for unit in members}
        assert not any("paused" in message for message in statuses.values()), statuses
        assert "paused" not in sim.apps[APP].app_status.message
        restarts = {unit: sim.workloads[unit].restarts for unit in members}  # type: ignore[attr-defined]
        assert all(count >= 1 for count in restarts.values()), restarts
