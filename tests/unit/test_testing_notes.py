"""The "Testing your charm with this library" notes of the library docstrings, checked in Scenario.

Each note tells a charm author a trap or a way in; each test here runs exactly what the note says
with the public ops.testing API: Scenario's default `planned_units=1` holds the grants of
charmlibs.rollingops, the coordinator and the upgrade library once a peer exists (and not those
of rolling_ops v0), a grant is driven by the runs the notes name, and the coordinator's wake-up
is fired with `ctx.on.custom(Serial.on.wake_up)`, no private class.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pytest
from charms.coordinated_ops.v0.coordinator import Serial
from ops import testing

from tests.simulation.example_charm import (
    CHARM_DIR,
    RESTARTS,
    CoordinatorCharm,
    RollingOpsCharm,
    V0Charm,
)
from tests.unit import test_upgrade_lib as upgrade_lib

LIBRARIES = {
    "rollingops": (RollingOpsCharm, "restart"),
    "v0": (V0Charm, "restart-v0"),
    "coordinator": (CoordinatorCharm, "coordinator"),
}


@pytest.fixture(autouse=True)
def _quiet() -> Any:
    logging.disable(logging.CRITICAL)
    RESTARTS.clear()
    yield
    logging.disable(logging.NOTSET)


def context(charm: type, unit_id: int = 0) -> testing.Context:
    import yaml

    meta = yaml.safe_load((CHARM_DIR / "charmcraft.yaml").read_text())
    actions = meta.pop("actions")
    return testing.Context(charm, meta=meta, actions=actions, app_name="app", unit_id=unit_id)


def leader_restart_with_one_peer(library: str, **state: Any) -> list[str]:
    """The leader runs `restart`, then the peer relation-changed three times."""
    charm, endpoint = LIBRARIES[library]
    ctx = context(charm)
    relation = testing.PeerRelation(endpoint, peers_data={1: {}})
    out = ctx.run(
        ctx.on.action("restart"), testing.State(leader=True, relations={relation}, **state)
    )
    for _ in range(3):
        changed = ctx.on.relation_changed(out.get_relation(relation.id), remote_unit=1)
        out = ctx.run(changed, out)
    return list(RESTARTS)


@pytest.mark.parametrize("library", ["rollingops", "coordinator"])
def test_default_planned_units_holds_the_grant_once_a_peer_exists(library):
    assert leader_restart_with_one_peer(library) == []
    RESTARTS.clear()
    assert leader_restart_with_one_peer(library, planned_units=2) == ["app/0"]


def test_rolling_ops_v0_does_not_read_planned_units():
    assert leader_restart_with_one_peer("v0") == ["app/0"]


@pytest.mark.parametrize("library", ["rollingops", "v0"])
def test_the_leaders_own_grant_runs_in_the_next_update_status_not_in_the_request(library):
    charm, endpoint = LIBRARIES[library]
    ctx = context(charm)
    state = testing.State(leader=True, relations={testing.PeerRelation(endpoint)})
    out = ctx.run(ctx.on.action("restart"), state)
    assert RESTARTS == []
    ctx.run(ctx.on.update_status(), out)
    assert RESTARTS == ["app/0"]


def test_the_coordinator_wake_up_fires_with_public_names():
    ctx = context(CoordinatorCharm)
    relation = testing.PeerRelation("coordinator")
    out = ctx.run(ctx.on.action("restart"), testing.State(leader=True, relations={relation}))
    assert RESTARTS == []
    assert "app/0" in out.get_relation(relation.id).local_app_data["coordinator"]

    out = ctx.run(ctx.on.custom(Serial.on.wake_up), out)

    assert RESTARTS == ["app/0"]
    assert out.get_relation(relation.id).local_app_data["coordinator"] == "{}"  # released


def upgrade_grant_on_top_unit(**state: Any) -> list[str]:
    """Unit 1 on top of `upgrade-stack`, itself and its peer ready: its relation-changed."""
    ctx = upgrade_lib._ctx(unit_id=1)
    relation = testing.PeerRelation(
        "upgrade",
        local_app_data={"upgrade-stack": "[0, 1]"},
        local_unit_data={"state": "ready"},
        peers_data={0: {"state": "ready"}},
    )
    changed = ctx.on.relation_changed(relation, remote_unit=0)
    ctx.run(changed, testing.State(relations={relation}, **state))
    return list(upgrade_lib.Behaviour.granted)


def test_upgrade_default_planned_units_holds_the_grant_once_a_peer_exists():
    upgrade_lib.Behaviour.granted = []
    assert upgrade_grant_on_top_unit() == []
    assert upgrade_grant_on_top_unit(planned_units=2) == [f"{upgrade_lib.APP}/1"]


@pytest.mark.parametrize("library", ["rollingops", "v0", "coordinator"])
def test_another_units_turn_is_driven_through_the_leaders_relation_changed(library):
    charm, endpoint = LIBRARIES[library]
    leader_ctx, unit_ctx = context(charm), context(charm, unit_id=1)
    mine = testing.PeerRelation(endpoint, peers_data={0: {}})
    asked = unit_ctx.run(
        unit_ctx.on.action("restart"), testing.State(relations={mine}, planned_units=2)
    )
    request = asked.get_relation(mine.id).local_unit_data

    at_leader = testing.PeerRelation(endpoint, peers_data={1: dict(request)})
    granted = leader_ctx.run(
        leader_ctx.on.relation_changed(at_leader, remote_unit=1),
        testing.State(leader=True, relations={at_leader}, planned_units=2),
    )
    grant = granted.get_relation(at_leader.id)
    assert RESTARTS == []

    with_grant = testing.PeerRelation(
        endpoint,
        local_unit_data=dict(request),
        local_app_data=dict(grant.local_app_data),
        peers_data={0: dict(grant.local_unit_data)},
    )
    unit_ctx.run(
        unit_ctx.on.relation_changed(with_grant, remote_unit=0),
        dataclasses.replace(asked, relations={with_grant}),
    )
    assert RESTARTS == ["app/1"]
