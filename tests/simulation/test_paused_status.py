"""The statuses of a paused one lock, on the simulator: every unit runs its own hooks.

A roll is in flight on the demo charm (tests/benchmarks/rolling_status.py: one holder in its
critical section, two units queued); the operator pauses the lock, leadership moves, Juju's
update-status comes, the operator resumes. What `juju status` shows at each step is what the
units committed (docs/one-lock.md, "What the statuses say").
"""

from __future__ import annotations

import logging

import pytest

from demo.fakes import demo_spec
from demo.rollingops_engines import LEASE_TTL_TICKS
from tests.benchmarks.rolling_status import APP, roll_in_flight, settle_around

PAUSED_UNIT = "on a paused lock (paused by the operator): `resume` on the leader continues"


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


@pytest.mark.parametrize("backend", ["peer", "etcd"])
def test_a_paused_lock_shows_in_the_statuses_across_a_leader_change_until_resume(backend):
    roll = roll_in_flight(demo_spec(), 5, 2, backend)
    sim, holder, order = roll["sim"], roll["holder"], roll["order"]
    margin = LEASE_TTL_TICKS if backend == "etcd" else 0
    waits = (
        f"{order[0]} (restart), {order[1]} (restart) wait"
        if backend == "peer"
        else "`rolling-status` shows what waits"  # units on etcd publish no queue
    )
    paused_app = f"rollingops lock paused (paused by the operator): {waits}; run resume"

    def statuses() -> tuple[str, list[str]]:
        app = sim.apps[APP].app_status
        return f"{app.name}: {app.message}", [sim.units[u].unit_status.message for u in order]

    with roll["fakes"].installed():
        sim.run_action(roll["leader"], "pause")
        settle_around(sim, holder, margin)
        app, units = statuses()
        assert app == f"blocked: {paused_app}"
        assert units == [f"restart queued (rollingops, {backend}) {PAUSED_UNIT}"] * 2

        sim.set_leader(roll["bystander"])  # the new leader reads the pause in leader-elected
        sim.update_status(APP)  # and an idle update-status keeps the line
        settle_around(sim, holder, margin)
        assert statuses() == (app, units)

        record = sim.run_action(f"{APP}/leader", "resume")
        settle_around(sim, holder, margin)
        assert record.status == "completed", record.message
        app, units = statuses()
        assert "paused" not in app
        assert units == [f"restart queued (rollingops, {backend})"] * 2
