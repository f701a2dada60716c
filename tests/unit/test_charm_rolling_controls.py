"""The charm's operator controls of the rollingops engine (src/restart/controls.py).

Real library, mocked controller (ops.testing) and demo service (conftest.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import json

import pytest
from charmlibs.rollingops import _controls
from ops import testing

from tests.unit.conftest import charm_context

PEER = "rollingops"
APP = "coordinated-ops"


def ctx(unit_id=0):
    return charm_context(app_name=APP, unit_id=unit_id)


def queued_bag(*units: int, callback: str = "restart") -> dict[int, dict[str, str]]:
    """Each of `units` with one `callback` op queued on the one lock (its peer databag)."""
    op = {"id": 1, "callback_id": callback, "kwargs": {}, "max_retry": 2, "attempt": 0,
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


# --- pause, resume, rolling-status, halt --------------------------------------------------------


def test_pause_on_a_non_leader_fails_clearly_and_changes_nothing(fake_workload):
    rel = testing.PeerRelation(PEER, peers_data=queued_bag(1))
    state = testing.State(planned_units=4, relations={rel})
    with pytest.raises(testing.ActionFailed, match="only the leader can pause or resume"):
        ctx(2).run(ctx(2).on.action("pause"), state)


def test_resume_when_not_paused_fails_clearly(fake_workload):
    rel = testing.PeerRelation(PEER, peers_data=queued_bag(1))
    state = testing.State(leader=True, planned_units=4, relations={rel})
    with pytest.raises(testing.ActionFailed, match="not paused: nothing to resume"):
        ctx().run(ctx().on.action("resume"), state)


def test_pause_stops_new_grants_and_resume_grants_again(fake_workload):
    rel = testing.PeerRelation(PEER, peers_data=queued_bag(1, 2))
    state = testing.State(leader=True, planned_units=3, relations={rel})
    out = ctx().run(ctx().on.action("pause"), state)
    app = out.get_relation(rel.id).local_app_data
    assert app["rollingops-paused"] == "paused by the operator"
    rel = dataclasses.replace(rel, local_app_data=dict(app))
    out = ctx().run(ctx().on.update_status(), dataclasses.replace(out, relations={rel}))
    assert grants(out, rel) == []  # queues kept, nothing granted
    # the next leader reads the pause from the app databag: it still grants nothing
    out2 = ctx(3).run(ctx(3).on.update_status(), dataclasses.replace(out, relations={rel}))
    assert grants(out2, rel) == []
    out = ctx().run(ctx().on.action("resume"), dataclasses.replace(out, relations={rel}))
    assert "rollingops-paused" not in out.get_relation(rel.id).local_app_data
    assert grants(out, rel) == [f"{APP}/1"]


def test_rolling_status_reports_and_writes_nothing(fake_workload):
    app = {"rollingops-version": "2", "rollingops-token": "3", "rollingops-mode": "peer",
           "rollingops-grant": json.dumps({"unit": f"{APP}/1", "token": 3, "op": 1}),
           "rollingops-order": json.dumps([f"{APP}/3", f"{APP}/2"]),
           "rollingops-roll": json.dumps({"done": 2, "failed": [f"{APP}/4"], "strikes": 0,
                                          "active": True})}  # fmt: skip
    rel = testing.PeerRelation(PEER, local_app_data=app, peers_data=queued_bag(1, 2, 3))
    state = testing.State(planned_units=5, relations={rel})
    context = ctx(4)
    out = context.run(context.on.action("rolling-status"), state)
    results = context.action_results or {}
    assert results["backend"] == "peer" and results["holders"] == f"{APP}/1"
    assert results["queue"] == f"{APP}/3,{APP}/2"  # grant order: the leader's FIFO
    assert (results["done"], results["failed"], results["remaining"]) == ("2", "1", "3")
    assert results["failed-units"] == f"{APP}/4" and results["paused"] == "false"
    assert "inside coordinated-ops/1 (max 1)" in results["summary"]
    after = out.get_relation(rel.id)
    assert dict(after.local_app_data) == app
    assert not [key for key in after.local_unit_data if key.startswith("rollingops-")]


def test_a_failed_restart_halts_the_roll_naming_the_unit_and_resume_continues(fake_workload):
    peers = queued_bag(1, 2)
    peers[1]["rollingops-done"] = json.dumps({"token": 1, "op": 1, "result": "retry-release"})
    peers[1]["rollingops-intent"] = "retry-release"
    app = {"rollingops-version": "2", "rollingops-token": "1", "rollingops-mode": "peer",
           "rollingops-grant": json.dumps({"unit": f"{APP}/1", "token": 1, "op": 1}),
           "rollingops-roll": json.dumps({"done": 0, "failed": [], "strikes": 0,
                                          "active": True})}  # fmt: skip
    rel = testing.PeerRelation(PEER, local_app_data=app, peers_data=peers)
    state = testing.State(leader=True, planned_units=3, relations={rel})
    out = ctx().run(ctx().on.update_status(), state)
    bag = out.get_relation(rel.id).local_app_data
    assert bag["rollingops-paused"] == f"halted after 1 failed operation(s): {APP}/1"
    assert grants(out, rel) == []
    assert isinstance(out.app_status, testing.BlockedStatus)
    assert f"paused (halted after 1 failed operation(s): {APP}/1)" in out.app_status.message
    rel = dataclasses.replace(rel, local_app_data=dict(bag))
    out = ctx().run(ctx().on.action("resume"), dataclasses.replace(out, relations={rel}))
    assert len(grants(out, rel)) == 1  # the roll goes on


def test_halt_after_failures_0_never_halts(fake_workload):
    peers = queued_bag(1, 2)
    peers[1]["rollingops-done"] = json.dumps({"token": 1, "op": 1, "result": "retry-release"})
    app = {
        "rollingops-version": "2",
        "rollingops-token": "1",
        "rollingops-mode": "peer",
        "rollingops-grant": json.dumps({"unit": f"{APP}/1", "token": 1, "op": 1}),
    }
    rel = testing.PeerRelation(PEER, local_app_data=app, peers_data=peers)
    state = testing.State(
        leader=True, planned_units=3, relations={rel}, config={"halt-after-failures": 0}
    )
    out = ctx().run(ctx().on.update_status(), state)
    assert "rollingops-paused" not in out.get_relation(rel.id).local_app_data
    assert len(grants(out, rel)) == 1


def test_rolling_status_on_50_units_is_one_hook_with_no_relation_writes(fake_workload):
    """50 units, 2 inside, 47 queued: one dispatch that reads the peer data and writes none."""
    n = 50
    peers = queued_bag(*range(1, n))
    order = [f"{APP}/{i}" for i in range(3, n)]
    app = {"rollingops-version": "2", "rollingops-token": "9", "rollingops-mode": "peer",
           "rollingops-grant": json.dumps({"unit": f"{APP}/1", "token": 8, "op": 1}),
           "rollingops-more-grants": json.dumps([{"unit": f"{APP}/2", "token": 9, "op": 1}]),
           "rollingops-order": json.dumps(order),
           "rollingops-roll": json.dumps({"done": 0, "failed": [], "strikes": 0,
                                          "active": True})}  # fmt: skip
    rel = testing.PeerRelation(PEER, local_app_data=app, peers_data=peers)
    state = testing.State(planned_units=n, relations={rel}, config={"max-parallel": 2})
    context = ctx(0)
    out = context.run(context.on.action("rolling-status"), state)
    results = context.action_results or {}
    assert results["holders"] == f"{APP}/1,{APP}/2" and results["queue"] == ",".join(order)
    assert results["remaining"] == str(n - 1) and results["max-parallel"] == "2"
    assert len(context.emitted_events) == 1  # one hook: the action itself
    after = out.get_relation(rel.id)
    assert isinstance(after, testing.PeerRelation)
    assert dict(after.local_app_data) == app
    assert {unit: dict(bag) for unit, bag in after.peers_data.items()} == peers
    assert not [key for key in after.local_unit_data if key.startswith("rollingops-")]


# --- a paused lock in the statuses: what waits on it, and that `resume` continues ---------------

PAUSED_APP = {"rollingops-version": "2", "rollingops-token": "4", "rollingops-mode": "peer",
              "rollingops-paused": "paused by the operator",
              "rollingops-roll": json.dumps({"done": 1, "failed": [], "strikes": 0,
                                             "active": True})}  # fmt: skip
RESUME = "`resume` on the leader continues"


def rollout_rel(states: dict[int, str], me: str = "ready") -> testing.PeerRelation:
    """The upgrade library's peer relation with a workload rollout in flight (unit 2's turn)."""
    rollout = {"round": 1, "target": "1.1.0", "previous": "1.0.0", "done": False}
    return testing.PeerRelation(
        "upgrade",
        local_app_data={"upgrade-stack": "[0, 1, 2]", "workload-rollout": json.dumps(rollout)},
        local_unit_data={"state": me},
        peers_data={unit: {"state": state} for unit, state in states.items()},
    )


def test_a_paused_lock_with_only_an_upgrade_step_waiting_says_so(fake_workload):
    """No restart in flight: the upgrade's own progress line must not hide the pause."""
    fake_workload.installed, fake_workload.running = "1.0.0", True
    lock = testing.PeerRelation(
        PEER, local_app_data=PAUSED_APP, peers_data=queued_bag(2, callback="upgrade")
    )
    upgrade = rollout_rel({1: "ready", 2: "upgrading"})
    state = testing.State(leader=True, planned_units=3, relations={lock, upgrade})
    out = ctx().run(ctx().on.update_status(), state)
    assert grants(out, lock) == []
    assert out.app_status == testing.BlockedStatus(
        "rollingops lock paused (paused by the operator): upgrade step of coordinated-ops/2 "
        "waits; run resume"
    )
    # The waiting unit itself (its step queued, as the upgrade's grant left it):
    mine = testing.PeerRelation(
        PEER, local_app_data=PAUSED_APP, local_unit_data=queued_bag(2, callback="upgrade")[2],
        peers_data={0: {}, 1: {}},
    )  # fmt: skip
    upgrading = rollout_rel({0: "ready", 1: "ready"}, me="upgrading")
    out = ctx(2).run(ctx(2).on.update_status(), testing.State(
        planned_units=3, relations={mine, upgrading}))  # fmt: skip
    assert out.unit_status == testing.WaitingStatus(
        f"upgrade queued (rollingops, peer) on a paused lock (paused by the operator): {RESUME}"
    )
    assert fake_workload.calls == []  # the step did not run


def test_a_paused_lock_with_only_a_remount_waiting_says_so(fake_workload):
    fake_workload.installed, fake_workload.running = "1.0.0", True
    lock = testing.PeerRelation(
        PEER, local_app_data=PAUSED_APP, peers_data=queued_bag(1, callback="remount")
    )
    state = testing.State(leader=True, planned_units=2, relations={lock})
    out = ctx().run(ctx().on.update_status(), state)
    assert out.app_status == testing.BlockedStatus(
        "rollingops lock paused (paused by the operator): remount of coordinated-ops/1 waits; "
        "run resume"
    )
    mine = testing.PeerRelation(
        PEER, local_app_data=PAUSED_APP, local_unit_data=queued_bag(1, callback="remount")[1],
        peers_data={0: {}},
    )  # fmt: skip
    out = ctx(1).run(ctx(1).on.update_status(), testing.State(planned_units=2, relations={mine}))
    assert out.unit_status == testing.WaitingStatus(
        f"remount queued (rollingops, peer) on a paused lock (paused by the operator): {RESUME}"
    )


def test_a_lock_halted_by_a_failed_remount_names_the_failure_and_what_waits(fake_workload):
    """The remount of unit 1 failed: the leader halts the lock in this hook and says so."""
    fake_workload.installed, fake_workload.running = "1.0.0", True
    peers = {**queued_bag(1, callback="remount"), **queued_bag(2, callback="upgrade")}
    peers[1]["rollingops-done"] = json.dumps({"token": 4, "op": 1, "result": "retry-release"})
    peers[1]["rollingops-intent"] = "retry-release"
    app = {"rollingops-version": "2", "rollingops-token": "4", "rollingops-mode": "peer",
           "rollingops-grant": json.dumps({"unit": f"{APP}/1", "token": 4, "op": 1}),
           "rollingops-order": json.dumps([f"{APP}/2"]),
           "rollingops-roll": json.dumps({"done": 0, "failed": [], "strikes": 0,
                                          "active": True})}  # fmt: skip
    lock = testing.PeerRelation(PEER, local_app_data=app, peers_data=peers)
    upgrade = rollout_rel({1: "ready", 2: "upgrading"})
    state = testing.State(leader=True, planned_units=3, relations={lock, upgrade})
    out = ctx().run(ctx().on.update_status(), state)
    halt = f"halted after 1 failed operation(s): {APP}/1"
    assert out.get_relation(lock.id).local_app_data["rollingops-paused"] == halt
    assert out.app_status == testing.BlockedStatus(
        f"rollingops lock paused ({halt}): {APP}/2 (upgrade step), {APP}/1 (remount) wait; "
        "run resume"
    )
    mine = testing.PeerRelation(
        PEER, local_app_data=dict(out.get_relation(lock.id).local_app_data),
        local_unit_data=queued_bag(2, callback="upgrade")[2], peers_data={0: {}, 1: {}},
    )  # fmt: skip
    out = ctx(2).run(ctx(2).on.update_status(), testing.State(planned_units=3, relations={mine}))
    assert out.unit_status == testing.WaitingStatus(
        f"upgrade queued (rollingops, peer) on a paused lock ({halt}): {RESUME}"
    )


def test_an_idle_leader_remembers_its_pause_for_the_status_and_resume_clears_it(fake_workload):
    """Nothing waits (the lock is quiet): the status still says it is paused, until resume."""
    fake_workload.installed, fake_workload.running = "1.0.0", True
    rel = testing.PeerRelation(PEER)
    out = ctx().run(ctx().on.update_status(), testing.State(
        leader=True, planned_units=1, relations={rel}))  # fmt: skip
    assert out.app_status == testing.ActiveStatus()
    paused = testing.BlockedStatus(
        "rollingops lock paused (paused by the operator): nothing waits; run resume"
    )
    out = ctx().run(ctx().on.action("pause"), out)
    assert out.app_status == paused
    out = ctx().run(ctx().on.update_status(), out)  # quiet: from what the leader remembers
    assert out.app_status == paused
    out = ctx().run(ctx().on.action("resume"), out)
    assert out.app_status == testing.ActiveStatus()
    out = ctx().run(ctx().on.update_status(), out)
    assert out.app_status == testing.ActiveStatus()


def test_a_long_pause_reason_is_cut_in_the_statuses(fake_workload):
    app = {**PAUSED_APP, "rollingops-paused": "x" * 200}
    lock = testing.PeerRelation(PEER, local_app_data=app, peers_data=queued_bag(*range(1, 6)))
    out = ctx().run(ctx().on.update_status(), testing.State(
        leader=True, planned_units=6, relations={lock}))  # fmt: skip
    assert out.app_status == testing.BlockedStatus(
        f"rollingops lock paused ({'x' * 97}...): {APP}/1 (restart), {APP}/2 (restart), "
        f"{APP}/3 (restart) and 2 more wait; run resume"
    )


# --- maintenance window -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "hour", "open_"),
    [("02:00-04:00", 3, True), ("02:00-04:00", 4, False), ("22:00-02:00", 23, True),
     ("22:00-02:00", 1, True), ("22:00-02:00", 12, False), (None, 12, True)],
)  # fmt: skip
def test_window_open_reads_only_the_given_clock(window, hour, open_):
    now = datetime.datetime(2026, 12, 3, hour, 30, tzinfo=datetime.timezone.utc)
    assert _controls.window_open(window, now) is open_


@pytest.mark.parametrize("text", ["2-4", "02:00-24:00", "02:60-03:00", "03:00-03:00", "x"])
def test_a_window_that_does_not_parse_is_refused_with_the_fix(text):
    with pytest.raises(ValueError, match=r"window|hours|like 02:00-04:00"):
        _controls.parse_window(text)


def at(hour: int) -> datetime.datetime:
    return datetime.datetime(2026, 1, 1, hour, tzinfo=datetime.timezone.utc)


def test_outside_the_window_the_leader_grants_nothing_and_status_says_closed(
    fake_workload, monkeypatch
):
    monkeypatch.setattr(
        _controls,
        "utcnow",
        lambda: datetime.datetime(2026, 1, 1, 12, tzinfo=datetime.timezone.utc),
    )
    rel = testing.PeerRelation(PEER, peers_data=queued_bag(1, 2))
    config = {"maintenance-window": "02:00-04:00"}
    state = testing.State(leader=True, planned_units=3, relations={rel}, config=config)
    out = ctx().run(ctx().on.update_status(), state)
    assert grants(out, rel) == []
    app = dict(out.get_relation(rel.id).local_app_data)
    assert app["rollingops-window"] == "closed"
    rel = dataclasses.replace(rel, local_app_data=app)
    context = ctx(3)
    context.run(context.on.action("rolling-status"), testing.State(
        planned_units=4, relations={rel}, config=config))  # fmt: skip
    results = context.action_results or {}
    assert (results["window"], results["window-open"]) == ("02:00-04:00", "false")
    monkeypatch.setattr(_controls, "utcnow", lambda: at(3))
    out = ctx().run(ctx().on.update_status(), dataclasses.replace(state, relations={rel}))
    assert grants(out, rel) == [f"{APP}/1"]
    assert "rollingops-window" not in out.get_relation(rel.id).local_app_data


def test_an_unparsable_window_blocks_and_changes_nothing(fake_workload):
    rel = testing.PeerRelation(PEER, peers_data=queued_bag(1))
    state = testing.State(
        leader=True, planned_units=2, relations={rel}, config={"maintenance-window": "2am-4am"}
    )
    out = ctx().run(ctx().on.update_status(), state)
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "maintenance-window: '2am-4am' is not a daily UTC window like 02:00-04:00" in (
        out.unit_status.message
    )
    assert grants(out, rel) == [f"{APP}/1"]  # the last good value (always) stays in force


def test_a_malformed_roll_record_is_shown_and_ignored(fake_workload):
    fake_workload.installed, fake_workload.running = "1.0.0", True
    app = {"rollingops-version": "2", "rollingops-token": "0", "rollingops-mode": "peer",
           "rollingops-roll": "{not json"}  # fmt: skip
    rel = testing.PeerRelation(PEER, local_app_data=app, peers_data=queued_bag(1))
    out = ctx(2).run(ctx(2).on.update_status(), testing.State(planned_units=3, relations={rel}))
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "rollingops-roll" in out.unit_status.message
    state = testing.State(leader=True, planned_units=3, relations={rel})
    out = ctx().run(ctx().on.update_status(), state)
    assert grants(out, rel) == [f"{APP}/1"]  # counting starts again; granting goes on
