"""The `restart` action with engine `coordinator` (src/restart/coordinator.py) in the real charm.

The workload is the in-memory FakeWorkload (conftest.py); the coordinator is the real library. Only
the juju-exec wake-up spawn is replaced by a recorder: no Juju unit agent exists here to run it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from charms.coordinated_ops.v0.coordinator import BaseCoordinator
from ops import testing
from scenario.state import _Event  # private: the only way to run a charm.on event ops defines

from tests.unit.conftest import charm_context

APP = "coordinated-ops"
PEER = "coordinator"
KEY = "coordinator"
ENGINE = {"engine": "coordinator"}
TS1 = "2026-11-22 01:33:01.000000Z"
TS2 = "2026-11-22 01:33:02.000000Z"


def make_state(**fields: Any) -> testing.State:
    """A State whose planned unit count matches the peers present (no unit being removed).

    Juju's planned units exclude dying units; the coordinator holds off while it is below the
    units a unit sees (a removal under way), so every State here says how many units are planned.
    """
    members = 1 + max(
        (len(getattr(r, "peers_data", {})) for r in fields.get("relations", ())), default=0
    )
    fields.setdefault("planned_units", members)
    return testing.State(**fields)


@pytest.fixture
def wakeups(monkeypatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(
        BaseCoordinator, "_dispatch_wakeup", lambda self: calls.append(self.model.unit.name)
    )
    return calls


@pytest.fixture
def running(fake_workload):
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    return fake_workload


def peer(own=None, peers=None, grants=None) -> testing.PeerRelation:
    def bag(value):
        return (
            {} if value is None else {KEY: value if isinstance(value, str) else json.dumps(value)}
        )

    return testing.PeerRelation(
        PEER,
        id=7,
        local_unit_data=bag(own),
        local_app_data=bag(grants),
        peers_data={unit: bag(data) for unit, data in (peers or {}).items()},
    )


def coordinator_relation(state: testing.State) -> testing.PeerRelation:
    relation = state.get_relation(7)
    assert isinstance(relation, testing.PeerRelation)
    return relation


def requests(state: testing.State) -> dict[str, str]:
    return json.loads(coordinator_relation(state).local_unit_data.get(KEY, "{}"))


def grants(state: testing.State) -> dict[str, dict[str, str]]:
    return json.loads(coordinator_relation(state).local_app_data.get(KEY, "{}"))


def journal_lines(tmp_path) -> list[dict]:
    path = tmp_path / "var/lib/coordinated-ops/coordinated-ops-journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_non_leader_request_queues_and_waits(running, wakeups):
    ctx = charm_context(app_name=APP, unit_id=1)
    state = make_state(relations=[peer(peers={0: {}})])
    out = ctx.run(ctx.on.action("restart", params={**ENGINE, "delay": 0}), state)
    assert ctx.action_results is not None
    assert ctx.action_results["engine"] == "coordinator"
    assert list(requests(out)) == ["restart"]
    assert out.unit_status == testing.WaitingStatus("Awaiting coordinator restart")
    assert ("restart",) not in running.calls
    assert wakeups == []


def test_granted_unit_restarts_once_journals_and_releases(running, wakeups, tmp_path):
    ctx = charm_context(app_name=APP, unit_id=1)
    state = ctx.run(
        ctx.on.action("restart", params={**ENGINE, "delay": 0}),
        make_state(relations=[peer(peers={0: {}})]),
    )
    mine = requests(state)["restart"]
    # The leader's grant arrives: relation-changed with the app databag granting our request.
    relation = peer(own={"restart": mine}, peers={0: {}}, grants={f"{APP}/1": {"restart": mine}})
    state = make_state(relations=[relation], stored_states=state.stored_states)
    out = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state)

    assert running.calls.count(("restart",)) == 1
    assert requests(out) == {}
    assert out.unit_status == testing.ActiveStatus("serving 1.0.0")
    (line,) = journal_lines(tmp_path)
    assert (line["unit"], line["engine"], line["result"], line.get("token")) == (
        f"{APP}/1",
        "coordinator",
        "ok",
        None,
    )

    # The same (not yet revoked) grant seen again: nothing pending, no second restart.
    again = peer(own={}, peers={0: {}}, grants={f"{APP}/1": {"restart": mine}})
    out = ctx.run(
        ctx.on.relation_changed(again, remote_unit=0),
        make_state(relations=[again], stored_states=out.stored_states),
    )
    assert running.calls.count(("restart",)) == 1
    assert requests(out) == {}  # and no new request: the restart is done


def test_grant_seen_in_an_unrelated_hook_is_used_not_lost(running, wakeups):
    ctx = charm_context(app_name=APP, unit_id=1)
    state = ctx.run(
        ctx.on.action("restart", params=ENGINE), make_state(relations=[peer(peers={0: {}})])
    )
    mine = requests(state)["restart"]
    relation = peer(own={"restart": mine}, peers={0: {}}, grants={f"{APP}/1": {"restart": mine}})
    out = ctx.run(
        ctx.on.config_changed(),
        make_state(relations=[relation], stored_states=state.stored_states),
    )
    assert running.calls.count(("restart",)) == 1
    assert requests(out) == {}


def test_leader_alone_grants_itself_and_restarts_on_the_wake_up(running, wakeups):
    ctx = charm_context(app_name=APP, unit_id=0)
    out = ctx.run(
        ctx.on.action("restart", params=ENGINE), make_state(leader=True, relations=[peer()])
    )
    assert wakeups == [f"{APP}/0"]
    assert ("restart",) not in running.calls
    assert grants(out) == {f"{APP}/0": requests(out)}
    assert out.app_status == testing.MaintenanceStatus("rolling restart in progress (coordinator)")

    final = charm_context(app_name=APP, unit_id=0).run(_Event("coordinator_wake_up"), out)
    assert running.calls.count(("restart",)) == 1
    assert requests(final) == {} and grants(final) == {}
    assert final.app_status == testing.ActiveStatus()


def test_leader_hands_over_to_the_next_unit_in_request_order(running, wakeups):
    ctx = charm_context(app_name=APP, unit_id=0)
    # app/2 restarted and released: its request is gone; app/1 is next.
    relation = peer(peers={1: {"restart": TS2}, 2: {}}, grants={f"{APP}/2": {"restart": TS1}})
    out = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=2),
        make_state(leader=True, relations=[relation]),
    )
    assert grants(out) == {f"{APP}/1": {"restart": TS2}}
    assert ("restart",) not in running.calls


def test_a_failed_restart_still_releases_the_lock(running, wakeups):
    running.healthy_after_restart = False
    relation = peer(own={"restart": TS1}, peers={0: {}}, grants={f"{APP}/1": {"restart": TS1}})
    ctx = charm_context(app_name=APP, unit_id=1)
    with ctx(ctx.on.update_status(), make_state(relations=[relation])) as manager:
        manager.charm.restarts.engines[
            "coordinator"
        ]._stored.pending_delay = 0  # a restart was queued
        out = manager.run()
    assert running.calls.count(("restart",)) == 1
    assert requests(out) == {}
    assert out.unit_status.name == "blocked"


def test_other_engine_is_refused_while_a_coordinator_restart_is_in_flight(running, wakeups):
    ctx = charm_context(app_name=APP, unit_id=0)
    state = make_state(
        relations=[peer(peers={1: {"restart": TS1}}), testing.PeerRelation("restart")]
    )
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("restart", params={"engine": "v0"}), state)
    assert "engine 'coordinator' is in flight" in failure.value.message


def test_coordinator_is_refused_while_v0_is_in_flight(running, wakeups):
    ctx = charm_context(app_name=APP, unit_id=1)
    v0 = testing.PeerRelation("restart", peers_data={0: {"state": "acquire"}})
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("restart", params=ENGINE), make_state(relations=[peer(), v0]))
    assert "engine 'v0' is in flight" in failure.value.message


def test_request_before_the_peer_relation_exists_is_published_later(running, wakeups):
    ctx = charm_context(app_name=APP, unit_id=1)
    out = ctx.run(ctx.on.action("restart", params=ENGINE), make_state())
    assert out.unit_status == testing.WaitingStatus("Awaiting coordinator restart")
    relation = peer(peers={0: {}})
    out = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=0),
        make_state(relations=[relation], stored_states=out.stored_states),
    )
    assert list(requests(out)) == ["restart"]


def test_malformed_coordinator_data_is_ignored_and_noted(running, wakeups, caplog):
    relation = peer(peers={1: "{oops"}, grants="not json")
    ctx = charm_context(app_name=APP, unit_id=0)
    out = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=1),
        make_state(leader=True, relations=[relation]),
    )
    assert "malformed" in caplog.text
    assert out.unit_status == testing.ActiveStatus(
        "ignored malformed coordinator data (see debug-log)"
    )
    assert grants(out) == {}
