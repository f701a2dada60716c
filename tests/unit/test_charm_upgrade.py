"""The demo charm's upgrades (src/upgrade.py): the `upgrade` action, the per-unit step, statuses.

The workload is the in-memory FakeWorkload (conftest.py: no machine here); the upgrade library and
the journal are the real ones. One unit per run: multi-unit rollouts are the simulator's job.
"""

import dataclasses
import json
import subprocess

import pytest
from charmlibs.rollingops import _dispatch
from ops import testing

import journal
import models
import upgrade
import workload
from tests.unit.conftest import charm_context

APP = "coordinated-ops"
LOCK = "rollingops"  # the peer relation of the one lock (charmlibs.rollingops)


@pytest.fixture(autouse=True)
def _no_wait(monkeypatch):
    monkeypatch.setattr(upgrade, "HEALTH_CHECK_WAIT", 0)


@pytest.fixture
def service(fake_workload):
    """A running, healthy 1.0.0 service."""
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    return fake_workload


def _state(**kwargs):
    """A State whose app plans as many units as any test shows (no removal in progress)."""
    kwargs.setdefault("planned_units", 10)
    return testing.State(**kwargs)


def _ctx(unit_id=0):
    return charm_context(app_name=APP, unit_id=unit_id)


def _upgrade_rel(app=None, unit=None, peers=None):
    return testing.PeerRelation(
        "upgrade",
        local_app_data=app or {},
        local_unit_data=unit if unit is not None else {"state": "idle"},
        peers_data=peers if peers is not None else {1: {"state": "idle"}, 2: {"state": "idle"}},
    )


def _rollout(round_=1, target="1.1.0", previous="1.0.0", done=False):
    return json.dumps({"round": round_, "target": target, "previous": previous, "done": done})


def _run_action(ctx, state, **params):
    return ctx.run(ctx.on.action("upgrade", params=params), state)


def _fails(ctx, state, **params):
    with pytest.raises(testing.ActionFailed) as failure:
        _run_action(ctx, state, **params)
    out = failure.value.state
    assert isinstance(out, testing.State)
    return failure.value.message, out


# --- the action ---------------------------------------------------------------------------------


def test_upgrade_action_starts_a_rollout_in_stack_order(service):
    ctx = _ctx()
    rel = _upgrade_rel()
    out = _run_action(ctx, _state(leader=True, relations={rel}), version="1.1.0")
    got = out.get_relation(rel.id)
    assert got.local_app_data["upgrade-stack"] == "[0, 1, 2]"
    assert json.loads(got.local_app_data["workload-rollout"]) == {
        "round": 1,
        "target": "1.1.0",
        "previous": "1.0.0",
        "done": False,
    }
    assert got.local_unit_data["state"] == "ready"
    assert ctx.action_results == {
        "target-version": "1.1.0",
        "previous-version": "1.0.0",
        "upgrade-stack": "[0, 1, 2]",
        "message": f"upgrade to 1.1.0 started; order {APP}/2, {APP}/1, {APP}/0",
    }
    assert ("install", "1.1.0") not in service.calls  # the action does not upgrade anything
    assert out.unit_status == testing.WaitingStatus("other units upgrading first...")
    assert out.app_status == testing.MaintenanceStatus("upgrading to 1.1.0: 0/3 units done")


@pytest.mark.parametrize(
    ("version", "message"),
    [
        ("banana", "invalid version 'banana': not a version number"),
        ("9.9.9", "unknown workload version 9.9.9; available: 1.0.0, 1.1.0, 1.2.0, 2.0.0"),
        ("1.2.0", "cannot upgrade from 1.0.0 to 1.2.0 (requires ^1.1)"),
        ("2.0.0", "cannot upgrade from 1.0.0 to 2.0.0 (requires ^1.2 || ^2)"),
        ("x" * 40_000, f"invalid version '{'x' * 35}...': not a version number"),
        ("1" * 40_000, f"invalid version '{'1' * 35}...': not a version number"),
        (
            "9." * 20_000 + "9",
            f"unknown workload version {('9.' * 18)[:35]}...; "
            "available: 1.0.0, 1.1.0, 1.2.0, 2.0.0",
        ),
    ],
)
def test_bad_version_fails_with_the_broken_constraint_and_changes_nothing(
    service, version, message
):
    ctx = _ctx()
    rel = _upgrade_rel()
    got, out = _fails(ctx, _state(leader=True, relations={rel}), version=version)
    assert got == message
    after = out.get_relation(rel.id)
    assert after.local_app_data == {}
    assert after.local_unit_data == {"state": "idle"}
    assert service.calls == []


def test_upgrade_from_1_1_to_1_2_is_allowed(service):
    service.installed = "1.1.0"
    ctx = _ctx()
    rel = _upgrade_rel()
    _run_action(ctx, _state(leader=True, relations={rel}), version="1.2.0")
    assert ctx.action_results is not None
    assert ctx.action_results["previous-version"] == "1.1.0"


def test_non_leader_is_refused(service):
    rel = _upgrade_rel(peers={0: {"state": "idle"}, 2: {"state": "idle"}})
    message, _ = _fails(_ctx(1), _state(relations={rel}), version="1.1.0")
    assert message == "upgrade must run on the leader unit"


def test_upgrade_while_an_upgrade_runs_names_it(service):
    rel = _upgrade_rel(
        app={"upgrade-stack": "[0, 1]", "workload-rollout": _rollout()},
        unit={"state": "ready"},
        peers={1: {"state": "ready"}, 2: {"state": "completed"}},
    )
    message, out = _fails(_ctx(), _state(leader=True, relations={rel}), version="1.1.0")
    assert message == "an upgrade is already in progress (upgrade to 1.1.0: 1/3 units done)"
    assert out.get_relation(rel.id).local_app_data["upgrade-stack"] == "[0, 1]"


def test_upgrade_while_a_restart_is_in_flight_names_the_engine(service):
    restart_rel = testing.PeerRelation("restart", peers_data={1: {"state": "acquire"}})
    state = _state(leader=True, relations={_upgrade_rel(), restart_rel})
    message, _ = _fails(_ctx(), state, version="1.1.0")
    assert message == "a restart with engine 'v0' is in flight; wait for it to finish"


def test_restart_is_refused_while_an_upgrade_is_in_flight(service):
    rel = _upgrade_rel(
        app={"upgrade-stack": "[0, 1, 2]", "workload-rollout": _rollout()},
        unit={"state": "ready"},
    )
    ctx = _ctx()
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(
            ctx.on.action("restart", params={"engine": "v0", "delay": 0}),
            _state(leader=True, relations={rel, testing.PeerRelation("restart")}),
        )
    assert failure.value.message == (
        "upgrade to 1.1.0: 0/3 units done; wait for it to finish or roll it back"
    )


def test_a_rollingops_restart_during_an_upgrade_queues_on_the_one_lock(service):
    rel = _upgrade_rel(
        app={"upgrade-stack": "[0, 1, 2]", "workload-rollout": _rollout()},
        unit={"state": "ready"},
        peers={0: {"state": "ready"}, 2: {"state": "upgrading"}},
    )
    lock = testing.PeerRelation(LOCK, peers_data={0: {}, 2: {}})
    ctx = _ctx(1)
    out = ctx.run(
        ctx.on.action("restart", params={"engine": "rollingops", "delay": 0, "sync": False}),
        _state(relations={rel, lock}),
    )
    assert "queued" in (ctx.action_results or {})["message"]
    queued = json.loads(out.get_relation(lock.id).local_unit_data["rollingops-queue"])
    assert [op["callback_id"] for op in queued] == ["restart"]
    assert service.calls == []


def test_pre_upgrade_check_refuses_an_unhealthy_service(fake_workload):
    fake_workload.installed = "1.0.0"  # installed but not running
    ctx = _ctx()
    rel = _upgrade_rel()
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("pre-upgrade-check"), _state(leader=True, relations={rel}))
    assert failure.value.message == f"the demo service on {APP}/0 is not healthy"


def test_pre_upgrade_check_refuses_while_a_restart_is_in_flight(service):
    restart_rel = testing.PeerRelation("restart", peers_data={1: {"state": "acquire"}})
    ctx = _ctx()
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(
            ctx.on.action("pre-upgrade-check"),
            _state(leader=True, relations={_upgrade_rel(), restart_rel}),
        )
    assert (
        failure.value.message == "a restart with engine 'v0' is in flight; wait for it to finish"
    )


# --- other units join the round -----------------------------------------------------------------


def test_unit_seeing_a_new_round_reports_ready(service):
    ctx = _ctx(1)
    rel = _upgrade_rel(
        app={"upgrade-stack": "[0, 2, 1]", "workload-rollout": _rollout()},
        peers={0: {"state": "ready"}, 2: {"state": "idle"}},
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}))
    assert out.get_relation(rel.id).local_unit_data["state"] == "ready"
    assert service.calls == []  # unit 1 is the top, but unit 2 is not ready yet
    # Same round again (a later relation-changed): no second transition, nothing else happens.
    again = ctx.run(ctx.on.relation_changed(out.get_relation(rel.id), remote_unit=0), out)
    assert again.get_relation(rel.id).local_unit_data["state"] == "ready"


def test_done_rollout_does_not_pull_a_newcomer_in(service):
    ctx = _ctx(1)
    rel = _upgrade_rel(app={"workload-rollout": _rollout(done=True)}, peers={0: {"state": "idle"}})
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}))
    assert out.get_relation(rel.id).local_unit_data["state"] == "idle"


# --- the per-unit step --------------------------------------------------------------------------


def _granted_top_unit(ctx):
    """Unit 2, on top of the stack, gets its turn: the step is queued on the one lock only."""
    rel = _upgrade_rel(
        app={"upgrade-stack": "[0, 1, 2]", "workload-rollout": _rollout()},
        unit={"state": "ready"},
        peers={0: {"state": "ready"}, 1: {"state": "ready"}},
    )
    lock = testing.PeerRelation(LOCK, peers_data={0: {}, 1: {}})
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=1), _state(relations={rel, lock}))
    return rel, lock, out


def _run_under_the_lock(ctx, lock, out, unit_id, token=7):
    """The leader grants the lock to the unit's first queued op; the unit's next hook runs it."""
    bag = out.get_relation(lock.id).local_unit_data
    first = json.loads(bag["rollingops-queue"])[0]
    grant = {"unit": f"{APP}/{unit_id}", "token": token, "op": first["id"]}
    app = {"rollingops-version": "1", "rollingops-token": str(token), "rollingops-mode": "peer"}
    lock = dataclasses.replace(
        lock,
        local_unit_data=dict(bag),
        local_app_data={**app, "rollingops-grant": json.dumps(grant)},
    )
    others = {r for r in out.relations if r.id != lock.id}
    return ctx.run(
        ctx.on.relation_changed(lock, remote_unit=0),
        dataclasses.replace(out, relations={*others, lock}),
    )


def test_top_unit_waits_for_the_lock_then_upgrades_checks_and_completes(service, tmp_path):
    ctx = _ctx(2)
    rel, lock, out = _granted_top_unit(ctx)
    # Its turn came, but the step waits for the one lock: queued, nothing touched, upgrading.
    assert service.calls == []
    assert out.get_relation(rel.id).local_unit_data["state"] == "upgrading"
    queued = json.loads(out.get_relation(lock.id).local_unit_data["rollingops-queue"])
    assert [op["callback_id"] for op in queued] == ["upgrade"]
    assert journal.read(journal.local_path()) == []
    assert out.unit_status == testing.WaitingStatus("upgrade queued (rollingops, peer)")

    out = _run_under_the_lock(ctx, lock, out, 2)
    assert service.calls == [("stop",), ("install", "1.1.0"), ("start",)]
    assert out.get_relation(rel.id).local_unit_data["state"] == "completed"
    assert out.workload_version == "1.1.0"
    assert out.unit_status == testing.MaintenanceStatus("upgrade completed")
    (entry,) = journal.read(journal.local_path())
    assert entry["unit"] == f"{APP}/2"
    assert (entry["operation"], entry["engine"], entry["result"]) == (
        "upgrade",
        "rollingops",
        "ok",
    )
    assert (entry["token"], entry["backend"]) == (7, "peer")
    assert (entry["from"], entry["version"]) == ("1.0.0", "1.1.0")
    done = json.loads(out.get_relation(lock.id).local_unit_data["rollingops-done"])
    assert done == {"token": 7, "op": queued[0]["id"], "result": "release"}


def test_the_grant_emitted_again_queues_the_step_once(service):
    ctx = _ctx(2)
    _, lock, out = _granted_top_unit(ctx)
    again = ctx.run(ctx.on.update_status(), out)  # the library reconciles and grants again
    queued = json.loads(again.get_relation(lock.id).local_unit_data["rollingops-queue"])
    assert [op["callback_id"] for op in queued] == ["upgrade"]
    assert service.calls == []


def test_a_step_no_longer_due_is_dropped_without_touching_the_service(service):
    ctx = _ctx(2)
    rel, lock, out = _granted_top_unit(ctx)
    got = out.get_relation(rel.id)
    halted = dataclasses.replace(got, peers_data={0: {"state": "ready"}, 1: {"state": "failed"}})
    out = dataclasses.replace(
        out, relations={*(r for r in out.relations if r.id != rel.id), halted}
    )
    out = _run_under_the_lock(ctx, lock, out, 2)
    assert service.calls == []
    assert journal.read(journal.local_path()) == []
    assert json.loads(out.get_relation(lock.id).local_unit_data["rollingops-done"])["result"] == (
        "release"
    )


def test_wrong_served_version_fails_the_unit_and_halts(service, monkeypatch):
    monkeypatch.setattr(workload, "served_version", lambda: "1.0.0")  # the old program still runs
    ctx = _ctx(2)
    rel, lock, out = _granted_top_unit(ctx)
    out = _run_under_the_lock(ctx, lock, out, 2)
    assert out.get_relation(rel.id).local_unit_data["state"] == "failed"
    assert out.unit_status == testing.BlockedStatus("health check failed after upgrade to 1.1.0")
    (entry,) = journal.read(journal.local_path())
    assert entry["result"] == "failed"


def test_unhealthy_after_start_fails_the_unit(service, monkeypatch):
    monkeypatch.setattr(workload, "health", lambda: None)
    ctx = _ctx(2)
    rel, lock, out = _granted_top_unit(ctx)
    out = _run_under_the_lock(ctx, lock, out, 2)
    assert out.get_relation(rel.id).local_unit_data["state"] == "failed"


def test_leader_shows_how_to_roll_back_after_a_failure(service):
    ctx = _ctx(0)
    rel = _upgrade_rel(
        app={"upgrade-stack": "[0, 1, 2]", "workload-rollout": _rollout()},
        unit={"state": "ready"},
        peers={1: {"state": "ready"}, 2: {"state": "failed"}},
    )
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=2), _state(leader=True, relations={rel})
    )
    assert out.app_status == testing.BlockedStatus(
        f"upgrade failed on {APP}/2: roll back with 'juju run {APP}/leader upgrade version=1.0.0'"
    )
    assert service.calls == []


def test_rollback_prepares_recovery_with_the_failed_unit_first(service):
    ctx = _ctx(0)
    rel = _upgrade_rel(
        app={"upgrade-stack": "[0, 2]", "workload-rollout": _rollout()},
        unit={"state": "ready"},
        peers={1: {"state": "completed"}, 2: {"state": "failed"}},
    )
    out = _run_action(ctx, _state(leader=True, relations={rel}), version="1.0.0")
    got = out.get_relation(rel.id)
    assert got.local_app_data["upgrade-stack"] == "[0, 1, 2]"
    assert json.loads(got.local_app_data["workload-rollout"]) == {
        "round": 2,
        "target": "1.0.0",
        "previous": "1.1.0",
        "done": False,
    }
    # The leader waits in recovery until units 1 and 2 have joined the rollback round.
    assert got.local_unit_data["state"] == "recovery"
    assert ctx.action_results is not None
    assert ctx.action_results["message"] == (
        f"rollback to 1.0.0 started; order {APP}/2, {APP}/1, {APP}/0"
    )


def test_leader_marks_the_rollout_done_when_everyone_is_idle(service):
    ctx = _ctx(0)
    rel = _upgrade_rel(app={"upgrade-stack": "[]", "workload-rollout": _rollout()})
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=1), _state(leader=True, relations={rel})
    )
    rollout = json.loads(out.get_relation(rel.id).local_app_data["workload-rollout"])
    assert rollout["done"] is True
    assert rollout["round"] == 1


def test_refresh_single_unit_installs_the_bundled_version(service, monkeypatch):
    spawns: list[list[str]] = []
    monkeypatch.setattr(_dispatch, "juju_exec_path", lambda: "/usr/bin/juju-exec")
    real_popen = subprocess.Popen

    def popen(argv: list[str], **kwargs: object):
        if argv[0] != "/usr/bin/juju-exec":  # goal-state and the like: no such tool here
            return real_popen(argv, **kwargs)  # type: ignore[call-overload]
        spawns.append(list(argv))

    monkeypatch.setattr(subprocess, "Popen", popen)
    service.installed = "0.9.0"
    ctx = _ctx(0)
    rel = _upgrade_rel(app={"upgrade-stack": "[0]"}, peers={})
    lock = testing.PeerRelation(LOCK)
    out = ctx.run(ctx.on.upgrade_charm(), _state(leader=True, relations={rel, lock}))
    assert len(spawns) == 1  # the leader granted itself the lock: the step runs in the wake-up
    assert ("install", workload.DEFAULT_VERSION) not in service.calls
    with ctx(ctx.on.update_status(), out) as mgr:  # the wake-up the grant spawned
        mgr.charm.on.rollingops_lock_granted.emit()
        out = mgr.run()
    assert ("install", workload.DEFAULT_VERSION) in service.calls
    got = out.get_relation(rel.id)
    assert got.local_unit_data["state"] == "idle"
    assert json.loads(got.local_app_data["dependencies"]) == upgrade.DEPENDENCIES
    assert out.unit_status == testing.ActiveStatus("serving 1.0.0")


# --- malformed peer data ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "reason"),
    [
        ({"upgrade-stack": "[0, oops"}, "upgrade relation: invalid upgrade-stack data"),
        ({"dependencies": "{not json"}, "upgrade relation: invalid dependencies data"),
        ({"workload-rollout": '{"round": "x"}'}, "upgrade relation: invalid workload-rollout"),
    ],
)
def test_malformed_peer_data_blocks_with_the_reason(service, app, reason):
    ctx = _ctx(1)
    rel = _upgrade_rel(app=app, peers={0: {"state": "idle"}})
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}))
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith(reason)
    assert out.get_relation(rel.id).local_unit_data["state"] == "idle"


def test_new_leader_does_not_end_a_rollout_that_has_not_reached_it(service):
    """A leader elected before it saw the round: everyone still idle, but the stack is set."""
    ctx = _ctx(1)
    rel = _upgrade_rel(
        app={"upgrade-stack": "[0, 1, 2]", "workload-rollout": _rollout()},
        peers={2: {"state": "idle"}},
    )
    out = ctx.run(ctx.on.leader_elected(), _state(leader=True, relations={rel}))
    got = out.get_relation(rel.id)
    assert json.loads(got.local_app_data["workload-rollout"])["done"] is False
    assert got.local_unit_data["state"] == "ready"  # it joined the round instead


def test_dependencies_constant_validates_as_built_in_every_hook():
    """DemoUpgrade builds DEPENDENCIES without validating it (every hook); it must be valid."""
    validated = models.DemoDependencies.model_validate(upgrade.DEPENDENCIES)
    assert validated.model_dump() == upgrade.dependencies().model_dump() == upgrade.DEPENDENCIES
    # The wire format too: unit_status skips validating stored data equal to this text.
    assert json.dumps(validated.model_dump()) == json.dumps(upgrade.DEPENDENCIES)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("[1]", "not a JSON object"),
        ('{"round": 1, "target": "1.1.0"}', "missing previous, done"),
        ('{"round": 0, "target": "1.1.0", "previous": "1.0.0", "done": false}', "at least 1"),
        ('{"round": true, "target": "1.1.0", "previous": "1.0.0", "done": false}', "round must"),
        ('{"round": 1, "target": 1.1, "previous": "1.0.0", "done": false}', "target must"),
        ('{"round": 1, "target": "1.1.0", "previous": "1.0.0", "done": "no"}', "done must"),
        ("{oops", "Expecting property name"),
    ],
)
def test_malformed_rollout_is_a_clear_value_error(raw, problem):
    with pytest.raises(ValueError, match=problem):
        upgrade.Rollout.from_json(raw)


def test_rollout_reads_what_it_writes_and_ignores_other_keys():
    rollout = upgrade.Rollout(round=2, target="1.1.0", previous="1.0.0", done=False)
    raw = json.dumps({**dataclasses.asdict(rollout), "note": "from a later revision"})
    assert upgrade.Rollout.from_json(raw) == rollout


def test_an_incompatible_refresh_shows_the_library_cause_in_the_unit_status(service):
    """The demo's status says why an incompatible refresh failed, not a bare "upgrade failed".

    The library fails the unit through `set_unit_failed()` without a cause (the original's
    signature), then shows the cause in the unit status.
    """
    stored = json.loads(json.dumps(upgrade.DEPENDENCIES))
    stored["demo_charm"]["version"] = "0.5"  # the running charm; ours supports >=1 only
    stored["demo_charm"]["upgrade_supported"] = ">=0.1"
    rel = _upgrade_rel(app={"upgrade-stack": "[0, 1, 2]", "dependencies": json.dumps(stored)})
    out = _ctx().run(_ctx().on.upgrade_charm(), _state(leader=True, relations={rel}))
    assert out.get_relation(rel.id).local_unit_data["state"] == "failed"
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message not in ("", "upgrade failed")
    assert "version" in out.unit_status.message.lower()
