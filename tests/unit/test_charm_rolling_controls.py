"""The charm's operator controls of the rollingops engine (src/restart/controls.py).

Real library, mocked controller (ops.testing) and demo service (conftest.py).
"""

from __future__ import annotations

import json

import pytest
from ops import testing

from tests.unit.conftest import charm_context

PEER = "rollingops"
APP = "coordinated-ops"


def ctx(unit_id=0):
    return charm_context(app_name=APP, unit_id=unit_id)


def queued_bag(*units: int) -> dict[int, dict[str, str]]:
    op = {"id": 1, "callback_id": "restart", "kwargs": {}, "max_retry": 2, "attempt": 0,
          "requested_at": "2026-01-01T00:00:00.000000Z"}  # fmt: skip
    bag = {"rollingops-version": "1", "rollingops-queue": json.dumps([op]), "rollingops-seq": "1",
           "rollingops-intent": "request", "rollingops-backend": "peer"}  # fmt: skip
    return {unit: dict(bag) for unit in units}


def grants(state: testing.State, rel: testing.PeerRelation) -> list[str]:
    app = state.get_relation(rel.id).local_app_data
    found = [json.loads(app["rollingops-grant"])] if "rollingops-grant" in app else []
    found += json.loads(app.get("rollingops-more-grants", "[]"))
    return [grant["unit"] for grant in found]


def test_the_leader_grants_max_parallel_units_at_once(fake_workload):
    rel = testing.PeerRelation(PEER, peers_data=queued_bag(1, 2, 3))
    state = testing.State(
        leader=True, planned_units=4, relations={rel}, config={"max-parallel": 2}
    )
    out = ctx().run(ctx().on.update_status(), state)
    assert grants(out, rel) == [f"{APP}/1", f"{APP}/2"]


@pytest.mark.parametrize(
    ("value", "fix"),
    [
        (0, "max-parallel=0: set it to 1 or more"),
        (-2, "max-parallel=-2: set it to 1 or more"),
        (5, "max-parallel=5 is above the 4 units: lower it"),
    ],
)
def test_a_bad_max_parallel_blocks_naming_the_fix_and_changes_nothing(fake_workload, value, fix):
    rel = testing.PeerRelation(PEER, peers_data=queued_bag(1, 2, 3))
    state = testing.State(
        leader=True, planned_units=4, relations={rel}, config={"max-parallel": value}
    )
    out = ctx().run(ctx().on.update_status(), state)
    assert out.unit_status == testing.BlockedStatus(f"{fix} (config unchanged in effect)")
    assert grants(out, rel) == [f"{APP}/1"]  # the default, 1, stays in force
