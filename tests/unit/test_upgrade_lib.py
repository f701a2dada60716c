"""charms.data_platform_libs.v0.upgrade with ops.testing, one unit at a time.

A small test charm subclasses DataUpgrade; its grant handler records what it was asked to do.
Multi-unit schedules (exclusion, liveness, rollbacks) live in the simulator suite.
"""

import dataclasses
import json
import logging

import pytest
from charms.data_platform_libs.v0.upgrade import (
    BaseModel,
    ClusterNotReadyError,
    DataUpgrade,
    DependencyError,
    DependencyModel,
    KubernetesClientError,
    UpgradeError,
    VersionError,
    verify_requirements,
)
from ops import CharmBase, testing
from pydantic import ValidationError

APP = "test-app"
META = {"name": APP, "peers": {"upgrade": {"interface": "upgrade"}}}
ACTIONS = {"pre-upgrade-check": {}, "resume-upgrade": {}}
DEPS = {
    "test_charm": {
        "dependencies": {},
        "name": "test",
        "upgrade_supported": ">=1",
        "version": "2",
    }
}


class LibTestDependencies(BaseModel):
    test_charm: DependencyModel


class Behaviour:
    """What the test charm's overrides do; tests set it before a run."""

    stack: list[int] = [1, 2, 3]
    check_error: Exception | None = None
    grant_result: str = "completed"  # completed|failed|nothing|reenter|dependency-error
    granted: list[str] = []
    rollback_logged: int = 0


class _TestUpgrade(DataUpgrade):
    def pre_upgrade_check(self) -> None:
        if Behaviour.check_error is not None:
            raise Behaviour.check_error

    def build_upgrade_stack(self) -> list[int]:
        return list(Behaviour.stack)

    def log_rollback_instructions(self) -> None:
        Behaviour.rollback_logged += 1

    def _on_upgrade_granted(self, event) -> None:
        Behaviour.granted.append(self.charm.unit.name)
        if Behaviour.grant_result == "completed":
            self.set_unit_completed()
        elif Behaviour.grant_result == "failed":
            self.set_unit_failed("boom")
        elif Behaviour.grant_result == "reenter":
            self.set_unit_completed()
            self.on_upgrade_changed(event)  # what anchor-era charms did; must be harmless
        elif Behaviour.grant_result == "dependency-error":
            raise DependencyError("dependency not met", cause="db too old")


class _TestCharm(CharmBase):
    def __init__(self, framework):
        super().__init__(framework)
        self.upgrade = _TestUpgrade(self, LibTestDependencies.model_validate(DEPS))


@pytest.fixture(autouse=True)
def _reset():
    Behaviour.stack = [1, 2, 3]
    Behaviour.check_error = None
    Behaviour.grant_result = "completed"
    Behaviour.granted = []
    Behaviour.rollback_logged = 0


def _state(**kwargs):
    """A State whose app plans as many units as any test shows (no removal in progress)."""
    kwargs.setdefault("planned_units", 10)
    return testing.State(**kwargs)


def _ctx(unit_id=0, actions=ACTIONS):
    return testing.Context(_TestCharm, meta=META, actions=actions, app_name=APP, unit_id=unit_id)


def _peer(app=None, unit=None, peers=None):
    return testing.PeerRelation(
        "upgrade",
        local_app_data=app or {},
        local_unit_data=unit or {},
        peers_data=peers or {},
    )


def _deps_json(version="2", supported=">=1"):
    model = {**DEPS["test_charm"], "version": version, "upgrade_supported": supported}
    return json.dumps({"test_charm": model})


# --- verify_requirements ------------------------------------------------------------------------

ALLOWED = [
    ("1.2.3", "^1.2.3"),
    ("1.3.4", "^1.2.3"),
    ("1.2.3", "^1.2"),
    ("0.2.5", "^0.2.3"),
    ("0", "^0.0"),
    ("0.0.1", "^0.0"),
    ("0.9.9", "^0"),
    ("1.2.3", "~1.2.3"),
    ("1.2.9", "~1.2"),
    ("1.9", "~1"),
    ("1.5", "1.*"),
    ("7", "*"),
    ("6", ">5"),
    ("5", ">=5"),
    ("4.9", "<5"),
    ("5", "<=5"),
    ("5", "==5"),
    ("5.1", "!=5"),
    ("1.5", ">=1,<2"),
    ("2.1", "^1 || ^2"),
]
REJECTED = [
    ("2.0.0", "^1.2.3"),
    ("1.2.2", "^1.2.3"),
    ("0.3.0", "^0.2.3"),
    ("0.1", "^0.0"),
    ("1.0", "^0"),
    ("1.2", "~1.2.3"),
    ("1.3.0", "~1.2"),
    ("2.0", "1.*"),
    ("5", ">5"),
    ("5", "<5"),
    ("5", "!=5"),
    ("2", ">=1,<2"),
    ("3.0", "^1 || ^2"),
]


@pytest.mark.parametrize(("version", "requirement"), ALLOWED)
def test_verify_requirements_allows(version, requirement):
    assert verify_requirements(version, requirement)


@pytest.mark.parametrize(("version", "requirement"), REJECTED)
def test_verify_requirements_rejects(version, requirement):
    assert not verify_requirements(version, requirement)


@pytest.mark.parametrize(("version", "requirement"), [("1", "saruman"), ("x.y.z!", "^1")])
def test_verify_requirements_unparsable_raises_value_error(version, requirement):
    with pytest.raises(ValueError):
        verify_requirements(version, requirement)


# --- DependencyModel ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"version": "4", "upgrade_supported": ">5"},
        {"dependencies": {"db": "saruman"}},
        {"dependencies": {"db": ""}},
        {"upgrade_supported": "saruman"},
        {"upgrade_supported": "1.3"},
        {"upgrade_supported": ""},
    ],
)
def test_dependency_model_rejects(change):
    data = {"dependencies": {}, "name": "n", "upgrade_supported": ">=1", "version": "4", **change}
    with pytest.raises(ValidationError):
        DependencyModel(**data)


def test_dependency_model_message_names_the_versions():
    with pytest.raises(ValidationError, match="upgrade_supported value >5 greater than version"):
        DependencyModel(dependencies={}, name="n", upgrade_supported=">5", version="4")


def test_can_upgrade_is_old_version_against_new_constraint():
    old = DependencyModel(dependencies={}, name="n", upgrade_supported=">=1", version="1.5")
    new = DependencyModel(dependencies={}, name="n", upgrade_supported=">=1.4", version="2")
    newer = DependencyModel(dependencies={}, name="n", upgrade_supported=">=1.6", version="2")
    assert old.can_upgrade(new)
    assert not old.can_upgrade(newer)


def test_model_dump_keeps_declaration_order_and_dict_still_works():
    model = LibTestDependencies.model_validate(DEPS)
    assert json.dumps(model.model_dump()) == json.dumps(DEPS)
    assert list(model.model_dump()["test_charm"]) == [
        "dependencies",
        "name",
        "upgrade_supported",
        "version",
    ]
    with pytest.warns(DeprecationWarning):
        assert model.dict() == DEPS


# --- errors -------------------------------------------------------------------------------------


def test_upgrade_error_str_and_repr():
    error = ClusterNotReadyError("m", "c")
    expected = (
        "charms.data_platform_libs.v0.upgrade.ClusterNotReadyError - "
        "{'message': 'm', 'cause': 'c', 'resolution': ''}"
    )
    assert str(error) == repr(error) == expected
    assert error.args == ("m",)


@pytest.mark.parametrize(
    "cls", [ClusterNotReadyError, KubernetesClientError, VersionError, DependencyError]
)
def test_subclasses_default_resolution_to_empty(cls):
    error = cls("m", "c")
    assert isinstance(error, UpgradeError)
    assert (error.message, error.cause, error.resolution) == ("m", "c", "")


def test_upgrade_error_none_cause_is_empty():
    assert UpgradeError("m", None, None).cause == ""


# --- construction -------------------------------------------------------------------------------


def test_missing_action_is_logged_not_a_crash(caplog):
    ctx = _ctx(actions={"pre-upgrade-check": {}})
    with caplog.at_level(logging.ERROR):
        ctx.run(ctx.on.update_status(), _state())
    assert "'resume-upgrade' is not declared" in caplog.text


def test_abstract_methods_are_required():
    class Incomplete(DataUpgrade):
        def pre_upgrade_check(self) -> None:
            pass

    class Charm(CharmBase):
        def __init__(self, framework):
            super().__init__(framework)
            Incomplete(self, LibTestDependencies.model_validate(DEPS))  # type: ignore[abstract]

    ctx = testing.Context(Charm, meta=META, actions=ACTIONS, app_name=APP)
    with pytest.raises(testing.errors.UncaughtCharmError, match="abstract"):
        ctx.run(ctx.on.update_status(), _state())


# --- relation-created ---------------------------------------------------------------------------


def test_relation_created_on_leader_writes_idle_and_dependencies_verbatim():
    ctx = _ctx()
    rel = _peer()
    out = ctx.run(ctx.on.relation_created(rel), _state(leader=True, relations={rel}))
    got = out.get_relation(rel.id)
    assert got.local_unit_data["state"] == "idle"
    assert got.local_app_data["dependencies"] == json.dumps(
        LibTestDependencies.model_validate(DEPS).model_dump()
    )


MODELS_BUILT: list[str] = []


class _LazyModelCharm(CharmBase):
    """Passes DataUpgrade a function that builds the model (see "pydantic on demand")."""

    def __init__(self, framework):
        super().__init__(framework)
        self.upgrade = _TestUpgrade(self, self._dependencies)

    def _dependencies(self) -> LibTestDependencies:
        MODELS_BUILT.append(self.framework.model.unit.name)
        return LibTestDependencies.model_validate(DEPS)


def test_a_model_function_is_called_only_when_the_model_is_needed():
    MODELS_BUILT.clear()
    ctx = testing.Context(_LazyModelCharm, meta=META, actions=ACTIONS, app_name=APP)
    rel = _peer(unit={"state": "idle"}, peers={1: {"state": "idle"}})
    idle = ctx.run(ctx.on.update_status(), _state(leader=True, relations={rel}))
    assert MODELS_BUILT == []
    out = ctx.run(ctx.on.relation_created(rel), idle)
    assert len(MODELS_BUILT) == 1
    assert out.get_relation(rel.id).local_app_data["dependencies"] == _deps_json()


def test_relation_created_mid_rollout_is_ready_and_non_leader_writes_no_app_data():
    ctx = _ctx(unit_id=4)
    rel = _peer(app={"upgrade-stack": "[0, 1]"}, peers={0: {"state": "ready"}})
    out = ctx.run(ctx.on.relation_created(rel), _state(relations={rel}))
    got = out.get_relation(rel.id)
    assert got.local_unit_data["state"] == "ready"
    assert "dependencies" not in got.local_app_data


# --- pre-upgrade-check --------------------------------------------------------------------------


def _idle_cluster(**app):
    return _peer(app=app, unit={"state": "idle"}, peers={1: {"state": "idle"}})


def test_pre_upgrade_check_writes_stack_verbatim():
    ctx = _ctx()
    rel = _idle_cluster()
    out = ctx.run(ctx.on.action("pre-upgrade-check"), _state(leader=True, relations={rel}))
    assert out.get_relation(rel.id).local_app_data["upgrade-stack"] == "[1, 2, 3]"
    assert ctx.action_results is not None
    assert ctx.action_results["upgrade-stack"] == "[1, 2, 3]"


@pytest.mark.parametrize(
    ("leader", "relations", "check_error", "message"),
    [
        (True, "none", None, "Could not find upgrade relation."),
        (False, "idle", None, "Action must be ran on the Juju leader."),
        (True, "busy", None, "Cannot run pre-upgrade checks, cluster already upgrading."),
        (True, "idle", ClusterNotReadyError("cluster is down", "unit 1 down"), "cluster is down"),
        (True, "idle", RuntimeError("surprise"), "Unknown error found."),
    ],
)
def test_pre_upgrade_check_failures(leader, relations, check_error, message):
    Behaviour.check_error = check_error
    ctx = _ctx()
    rels = {
        "none": set(),
        "idle": {_idle_cluster()},
        "busy": {_peer(unit={"state": "idle"}, peers={1: {"state": "upgrading"}})},
    }[relations]
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("pre-upgrade-check"), _state(leader=leader, relations=rels))
    assert failure.value.message == message
    state = failure.value.state
    assert isinstance(state, testing.State)
    for rel in state.relations:
        assert "upgrade-stack" not in rel.local_app_data


def test_pre_upgrade_check_on_failed_cluster_prepares_recovery():
    ctx = _ctx()
    # Unit 2 failed on top; unit 1 had completed and was popped; leader 0 at the bottom.
    rel = _peer(
        app={"upgrade-stack": "[0, 2]"},
        unit={"state": "ready"},
        peers={1: {"state": "completed"}, 2: {"state": "failed"}},
    )
    out = ctx.run(ctx.on.action("pre-upgrade-check"), _state(leader=True, relations={rel}))
    got = out.get_relation(rel.id)
    assert json.loads(got.local_app_data["upgrade-stack"]) == [0, 1, 2]  # failed unit first
    assert got.local_unit_data["state"] == "recovery"
    assert out.unit_status == testing.BlockedStatus("ready to rollback application")


def test_pre_upgrade_check_again_in_recovery_fails_like_the_original():
    # Only a failed cluster is prepared for rollback; once in recovery the cluster is upgrading.
    ctx = _ctx()
    rel = _peer(
        app={"upgrade-stack": "[0, 1, 2]"},
        unit={"state": "recovery"},
        peers={1: {"state": "completed"}, 2: {"state": "failed"}},
    )
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("pre-upgrade-check"), _state(leader=True, relations={rel}))
    assert failure.value.message == "Cannot run pre-upgrade checks, cluster already upgrading."


# --- the stack property -------------------------------------------------------------------------


def test_mutating_the_returned_stack_changes_nothing():
    ctx = _ctx()
    rel = _peer(app={"upgrade-stack": "[0, 1]"}, unit={"state": "idle"})
    with ctx(ctx.on.update_status(), _state(leader=True, relations={rel})) as mgr:
        upgrade = mgr.charm.upgrade
        stack = upgrade.upgrade_stack
        assert stack is not None
        assert stack == [0, 1]
        stack.pop()
        assert upgrade.upgrade_stack == [0, 1]
        upgrade.upgrade_stack = [0]
        assert upgrade.upgrade_stack == [0]
        out = mgr.run()
    assert out.get_relation(rel.id).local_app_data["upgrade-stack"] == "[0]"


@pytest.mark.parametrize("raw", ["not json", '{"a": 1}', '[0, "x"]', "[true]"])
def test_malformed_stack_is_logged_and_blocks_with_reason(raw, caplog):
    ctx = _ctx()
    rel = _peer(app={"upgrade-stack": raw}, unit={"state": "ready"})
    with (
        caplog.at_level(logging.ERROR),
        ctx(ctx.on.relation_changed(rel, remote_unit=1), _state(relations={rel})) as mgr,
    ):
        assert mgr.charm.upgrade.upgrade_stack is None
        mgr.run()
        assert mgr.charm.upgrade.data_errors
    assert "invalid upgrade-stack data" in caplog.text


def test_malformed_peer_state_blocks_nothing_and_raises_nothing(caplog):
    ctx = _ctx()
    rel = _peer(
        app={"upgrade-stack": "[1, 0]"}, unit={"state": "ready"}, peers={1: {"state": "?"}}
    )
    with caplog.at_level(logging.ERROR):
        out = ctx.run(ctx.on.relation_changed(rel, remote_unit=1), _state(relations={rel}))
    assert out.get_relation(rel.id).local_unit_data["state"] == "ready"
    assert "invalid unit state '?'" in caplog.text
    assert Behaviour.granted == []


# --- upgrade-charm ------------------------------------------------------------------------------


def test_upgrade_charm_without_stack_blocks_and_remembers(caplog):
    ctx = _ctx()
    rel = _idle_cluster()
    with caplog.at_level(logging.ERROR):
        out = ctx.run(ctx.on.upgrade_charm(), _state(relations={rel}))
    assert "ensure pre-upgrade checks are ran first" in caplog.text
    assert out.unit_status == testing.BlockedStatus(
        "run pre-upgrade-check on the leader to continue the upgrade"
    )
    assert out.get_relation(rel.id).local_unit_data["state"] == "idle"
    assert out.stored_states  # refresh_pending was stored
    pending = [s for s in out.stored_states if s.owner_path and s.owner_path.endswith("[upgrade]")]
    assert pending[0].content["refresh_pending"] is True


@pytest.mark.parametrize("stored", [None, "garbage", '{"test_charm": {"version": "1"}}'])
def test_upgrade_charm_with_absent_or_bad_dependencies_warns_and_is_ready(stored, caplog):
    ctx = _ctx()
    app = {"upgrade-stack": "[0, 1]"}
    if stored is not None:
        app["dependencies"] = stored
    rel = _peer(app=app, unit={"state": "idle"}, peers={1: {"state": "idle"}})
    with caplog.at_level(logging.WARNING):
        out = ctx.run(ctx.on.upgrade_charm(), _state(leader=True, relations={rel}))
    assert "version compatibility check skipped" in caplog.text
    assert out.get_relation(rel.id).local_unit_data["state"] == "ready"
    assert out.unit_status == testing.WaitingStatus("other units upgrading first...")


def test_upgrade_charm_incompatible_version_fails_the_leader():
    ctx = _ctx()
    rel = _peer(
        app={"upgrade-stack": "[0, 1]", "dependencies": _deps_json(version="0.5", supported="*")},
        unit={"state": "idle"},
        peers={1: {"state": "idle"}},
    )
    out = ctx.run(ctx.on.upgrade_charm(), _state(leader=True, relations={rel}))
    assert out.get_relation(rel.id).local_unit_data["state"] == "failed"
    assert out.unit_status == testing.BlockedStatus(
        "Upgrades only supported for specific versions, test_charm versions satisfying "
        "requirement >=1"
    )
    assert Behaviour.rollback_logged == 1


def test_single_unit_refresh_upgrades_and_returns_to_idle():
    ctx = _ctx()
    rel = _peer(
        app={"upgrade-stack": "[0]", "dependencies": _deps_json("1")}, unit={"state": "idle"}
    )
    out = ctx.run(ctx.on.upgrade_charm(), _state(leader=True, relations={rel}))
    got = out.get_relation(rel.id)
    assert Behaviour.granted == [f"{APP}/0"]
    assert got.local_unit_data["state"] == "idle"
    assert "upgrade-stack" not in got.local_app_data or got.local_app_data["upgrade-stack"] == "[]"
    assert got.local_app_data["dependencies"] == _deps_json("2")
    assert out.unit_status == testing.ActiveStatus()


# --- the reconcile ------------------------------------------------------------------------------


def test_top_unit_grants_itself_when_everyone_is_ready():
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]"}, unit={"state": "ready"}, peers={0: {"state": "ready"}}
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}))
    assert Behaviour.granted == [f"{APP}/1"]
    assert out.get_relation(rel.id).local_unit_data["state"] == "completed"
    assert out.unit_status == testing.MaintenanceStatus("upgrade completed")


@pytest.mark.parametrize(
    ("stack", "own", "peer", "why"),
    [
        ("[1, 0]", "ready", "ready", "not the top"),
        ("[0, 1]", "ready", "idle", "a unit has not refreshed yet"),
        ("[0, 1]", "ready", "upgrading", "another unit is upgrading"),
        ("[0, 1]", "ready", "failed", "the cluster failed"),
        ("[0, 1]", "completed", "ready", "already done"),
        ("[0, 1]", "ready", "", "a peer state is unknown"),
    ],
)
def test_no_grant(stack, own, peer, why):
    ctx = _ctx(unit_id=1)
    rel = _peer(app={"upgrade-stack": stack}, unit={"state": own}, peers={0: {"state": peer}})
    ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}))
    assert Behaviour.granted == [], why


def test_leader_pops_completed_top_and_grants_itself_next_without_help():
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]", "dependencies": _deps_json("1")},
        unit={"state": "ready"},
        peers={1: {"state": "completed"}},
    )
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=1), _state(leader=True, relations={rel})
    )
    got = out.get_relation(rel.id)
    assert Behaviour.granted == [f"{APP}/0"]
    # The leader popped 1, upgraded, popped itself, and finalised — in one hook.
    assert got.local_app_data["upgrade-stack"] == "[]"
    assert got.local_unit_data["state"] == "idle"
    assert got.local_app_data["dependencies"] == _deps_json("2")


def test_non_leader_turns_idle_when_the_stack_empties():
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[]"}, unit={"state": "completed"}, peers={0: {"state": "idle"}}
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}))
    assert out.get_relation(rel.id).local_unit_data["state"] == "idle"
    assert out.unit_status == testing.ActiveStatus()


def test_failed_grant_handler_blocks_and_leader_reports_once():
    Behaviour.grant_result = "failed"
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": "[1, 0]"}, unit={"state": "ready"}, peers={1: {"state": "ready"}}
    )
    state = _state(leader=True, relations={rel})
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=1), state)
    assert out.get_relation(rel.id).local_unit_data["state"] == "failed"
    assert out.unit_status == testing.BlockedStatus("boom")
    assert Behaviour.rollback_logged == 1
    # Further reconciles on the halted cluster do not re-report nor grant.
    out = ctx.run(ctx.on.update_status(), out)
    assert Behaviour.rollback_logged == 1
    assert Behaviour.granted == [f"{APP}/0"]


def test_dependency_error_in_grant_marks_the_unit_failed():
    Behaviour.grant_result = "dependency-error"
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]"}, unit={"state": "ready"}, peers={0: {"state": "ready"}}
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}))
    assert out.get_relation(rel.id).local_unit_data["state"] == "failed"
    assert out.unit_status == testing.BlockedStatus("db too old")


def test_recovery_logs_exactly_one_debug_record(caplog):
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]"}, unit={"state": "ready"}, peers={0: {"state": "recovery"}}
    )
    with caplog.at_level(logging.DEBUG, logger="charms.data_platform_libs.v0.upgrade"):
        ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}))
    records = [r for r in caplog.records if r.getMessage() == "Cluster in recovery, skip..."]
    assert len(records) == 1
    assert Behaviour.granted == []


def test_departed_top_is_dropped_and_next_top_proceeds(caplog):
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": "[0, 1, 2]"},
        unit={"state": "ready"},
        peers={1: {"state": "ready"}, 2: {"state": "upgrading"}},
    )
    with caplog.at_level(logging.WARNING):
        out = ctx.run(
            ctx.on.relation_departed(rel, remote_unit=2, departing_unit=2),
            _state(leader=True, relations={rel}),
        )
    assert "unit 2 left during upgrade; removed from upgrade-stack" in caplog.text
    assert out.get_relation(rel.id).local_app_data["upgrade-stack"] == "[0, 1]"
    assert Behaviour.granted == []  # unit 1 is the top now, not the leader


def test_a_departing_leader_never_drops_live_units_from_the_stack():
    # Leader 1 is being removed: it already saw unit 0 depart (its own departure), and now
    # learns that unit 2 (removed earlier) left. Unit 0 is alive and must stay in the stack;
    # the departing leader leaves even 2 to the next leader. Found by the upgrade soak.
    # (Unit 1, not 0: Scenario 8.9 reads departing_unit=0 as unset.)
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0, 1, 2]"},
        unit={"state": "ready"},
        peers={0: {"state": "ready"}, 2: {"state": "ready"}},
    )
    out = ctx.run(
        ctx.on.relation_departed(rel, remote_unit=0, departing_unit=1),
        _state(leader=True, relations={rel}, planned_units=1),
    )
    rel = dataclasses.replace(out.get_relation(rel.id), peers_data={2: {"state": "ready"}})
    out = ctx.run(
        ctx.on.relation_departed(rel, remote_unit=2, departing_unit=2),
        dataclasses.replace(out, relations={rel}),
    )
    assert json.loads(out.get_relation(rel.id).local_app_data["upgrade-stack"]) == [0, 1, 2]
    assert Behaviour.granted == []


def test_newcomer_mid_rollout_is_added_at_the_bottom():
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]"},
        unit={"state": "ready"},
        peers={1: {"state": "upgrading"}, 3: {"state": "ready"}},
    )
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=3), _state(leader=True, relations={rel})
    )
    assert out.get_relation(rel.id).local_app_data["upgrade-stack"] == "[3, 0, 1]"


def test_stale_deferred_grant_after_completion_does_not_reach_the_handler(caplog):
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0]"}, unit={"state": "completed"}, peers={0: {"state": "ready"}}
    )
    stale = testing.DeferredEvent(
        handle_path="_TestCharm/_TestUpgrade[upgrade]/on/upgrade_granted[9]",
        owner="_TestCharm/_TestUpgrade[upgrade]",
        observer="_guard_upgrade_granted",
    )
    with caplog.at_level(logging.WARNING):
        ctx.run(ctx.on.update_status(), _state(relations={rel}, deferred=[stale]))
    assert Behaviour.granted == []
    assert "stale upgrade_granted dropped" in caplog.text


def test_leader_in_recovery_waits_for_every_other_unit_before_rollback():
    """A unit still `completed` from the failed rollout must not be popped as done."""
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": "[0, 1, 2]", "dependencies": _deps_json("2")},
        unit={"state": "recovery"},
        peers={1: {"state": "completed"}, 2: {"state": "ready"}},
    )
    out = ctx.run(ctx.on.upgrade_charm(), _state(leader=True, relations={rel}))
    got = out.get_relation(rel.id)
    assert got.local_unit_data["state"] == "recovery"
    assert got.local_app_data["upgrade-stack"] == "[0, 1, 2]"
    # Unit 1 refreshes back: now the leader joins and the failed unit (2, on top) goes first.
    rel2 = _peer(
        app=dict(got.local_app_data),
        unit=dict(got.local_unit_data),
        peers={1: {"state": "ready"}, 2: {"state": "ready"}},
    )
    out = ctx.run(
        ctx.on.relation_changed(rel2, remote_unit=1),
        _state(leader=True, relations={rel2}, stored_states=out.stored_states),
    )
    got = out.get_relation(rel2.id)
    assert got.local_unit_data["state"] == "ready"
    assert got.local_app_data["upgrade-stack"] == "[0, 1, 2]"
    assert Behaviour.granted == []


def test_leader_on_top_in_recovery_is_not_stuck():
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": "[1, 0]", "dependencies": _deps_json("2")},
        unit={"state": "recovery"},
        peers={1: {"state": "ready"}},
    )
    out = ctx.run(ctx.on.upgrade_charm(), _state(leader=True, relations={rel}))
    got = out.get_relation(rel.id)
    assert Behaviour.granted == [f"{APP}/0"]
    assert got.local_app_data["upgrade-stack"] == "[1]"
    assert got.local_unit_data["state"] == "completed"


def test_refresh_pending_unit_becomes_ready_once_the_stack_appears():
    ctx = _ctx(unit_id=1)
    rel = _peer(app={}, unit={"state": "idle"}, peers={0: {"state": "idle"}})
    out = ctx.run(ctx.on.upgrade_charm(), _state(relations={rel}))
    rel2 = _peer(
        app={"upgrade-stack": "[1, 0]"}, unit={"state": "idle"}, peers={0: {"state": "ready"}}
    )
    out = ctx.run(
        ctx.on.relation_changed(rel2, remote_unit=0),
        _state(relations={rel2}, stored_states=out.stored_states),
    )
    assert out.get_relation(rel2.id).local_unit_data["state"] == "ready"


def test_pre_upgrade_check_with_refresh_pending_readies_the_leader():
    ctx = _ctx(unit_id=0)
    rel = _idle_cluster()
    Behaviour.stack = [0, 1]
    out = ctx.run(ctx.on.upgrade_charm(), _state(leader=True, relations={rel}))
    out = ctx.run(ctx.on.action("pre-upgrade-check"), out)
    got = out.get_relation(rel.id)
    assert got.local_app_data["upgrade-stack"] == "[0, 1]"
    assert got.local_unit_data["state"] == "ready"


def test_still_upgrading_top_is_granted_once_per_hook_again_on_later_hooks():
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]"}, unit={"state": "ready"}, peers={0: {"state": "ready"}}
    )
    Behaviour.grant_result = "nothing"
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}))
    assert Behaviour.granted == [f"{APP}/1"]
    assert out.get_relation(rel.id).local_unit_data["state"] == "upgrading"
    ctx.run(ctx.on.update_status(), out)
    assert Behaviour.granted == [f"{APP}/1"] * 2


def test_anchor_style_handler_calling_on_upgrade_changed_is_harmless():
    Behaviour.grant_result = "reenter"
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": "[1, 0]"}, unit={"state": "ready"}, peers={1: {"state": "ready"}}
    )
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=1), _state(leader=True, relations={rel})
    )
    assert Behaviour.granted == [f"{APP}/0"]
    got = out.get_relation(rel.id)
    assert got.local_app_data["upgrade-stack"] == "[1]"  # popped itself; unit 1 is next
    assert got.local_unit_data["state"] == "completed"


def test_in_progress():
    ctx = _ctx()
    for app, states, expected in [
        ({}, ("idle", "idle"), False),
        ({"upgrade-stack": "[0, 1]"}, ("idle", "idle"), True),
        ({}, ("idle", "failed"), True),
    ]:
        rel = _peer(app=app, unit={"state": states[0]}, peers={1: {"state": states[1]}})
        with ctx(ctx.on.update_status(), _state(relations={rel})) as mgr:
            assert mgr.charm.upgrade.in_progress() is expected


def test_unit_alone_in_its_view_is_not_granted_unless_on_top():
    """A unit that has not met its peers yet must not upgrade out of turn at upgrade-charm."""
    ctx = _ctx(unit_id=3)
    rel = _peer(app={"upgrade-stack": "[0, 1, 2]"}, unit={"state": "idle"})
    out = ctx.run(ctx.on.upgrade_charm(), _state(relations={rel}))
    assert Behaviour.granted == []
    assert out.get_relation(rel.id).local_unit_data["state"] == "ready"


def test_no_grant_while_a_unit_is_being_removed():
    """Fewer planned units than the view: a leaving unit may still run hooks; nobody starts."""
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]"}, unit={"state": "ready"}, peers={0: {"state": "ready"}}
    )
    state = _state(relations={rel}, planned_units=1)
    ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    assert Behaviour.granted == []


# Juju 4 (juju/juju#23326): a removed unit stays in relation.units and no departed comes.


def test_juju4_removed_upgrading_top_still_listed_is_dropped(goal_state):
    goal_state.set({f"{APP}/0": "active", f"{APP}/1": "active"})
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": "[0, 1, 2]"},
        unit={"state": "ready"},
        peers={1: {"state": "ready"}, 2: {"state": "upgrading"}},
    )
    out = ctx.run(ctx.on.update_status(), _state(leader=True, relations={rel}, planned_units=2))
    assert out.get_relation(rel.id).local_app_data["upgrade-stack"] == "[0, 1]"


def test_juju4_a_removed_unit_still_listed_does_not_block_the_top(goal_state):
    # planned units (2) stay below the units listed (3) for good on Juju 4.
    goal_state.set({f"{APP}/0": "active", f"{APP}/1": "active"})
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]"},
        unit={"state": "ready"},
        peers={0: {"state": "ready"}, 2: {"state": "upgrading"}},
    )
    ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}, planned_units=2))
    assert Behaviour.granted == [f"{APP}/1"]


def test_juju4_a_dying_unit_still_blocks(goal_state):
    goal_state.set({f"{APP}/0": "active", f"{APP}/1": "active", f"{APP}/2": "dying"})
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]"},
        unit={"state": "ready"},
        peers={0: {"state": "ready"}, 2: {"state": "ready"}},
    )
    ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}, planned_units=2))
    assert Behaviour.granted == []


def test_juju4_idle_units_do_not_read_goal_state(goal_state):
    ctx = _ctx(unit_id=0)
    rel = _peer(unit={"state": "idle"}, peers={1: {"state": "idle"}, 2: {"state": "idle"}})
    ctx.run(ctx.on.update_status(), _state(leader=True, relations={rel}))
    assert goal_state.calls == 0


def test_a_unit_that_saw_its_own_departure_never_upgrades_again():
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]"}, unit={"state": "ready"}, peers={0: {"state": "ready"}}
    )
    out = ctx.run(
        ctx.on.relation_departed(rel, remote_unit=0, departing_unit=1), _state(relations={rel})
    )
    ctx.run(ctx.on.update_status(), out)
    assert Behaviour.granted == []


# --- quiet: an idle unit reads nothing in update-status and config-changed ---------------------


def test_quiet_is_remembered_from_the_last_reconcile_and_a_rollout_clears_it():
    ctx = _ctx(unit_id=1)
    rel = _peer(unit={"state": "idle"}, peers={0: {"state": "idle"}})
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), _state(relations={rel}))
    with ctx(ctx.on.update_status(), out) as mgr:
        assert mgr.charm.upgrade.quiet  # update-status then reads no relation
        out = mgr.run()
    rel = dataclasses.replace(out.get_relation(rel.id), local_app_data={"upgrade-stack": "[1, 0]"})
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), dataclasses.replace(out, relations={rel})
    )
    with ctx(ctx.on.update_status(), out) as mgr:
        assert not mgr.charm.upgrade.quiet  # a rollout: periodic hooks reconcile again


def test_a_leaders_own_write_makes_it_not_quiet():
    ctx = _ctx(unit_id=0)
    rel = _peer(unit={"state": "idle"}, peers={1: {"state": "idle"}})
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=1), _state(leader=True, relations={rel})
    )
    out = ctx.run(ctx.on.action("pre-upgrade-check"), out)
    with ctx(ctx.on.update_status(), out) as mgr:
        assert not mgr.charm.upgrade.quiet
