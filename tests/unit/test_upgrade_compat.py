"""charms.data_platform_libs.v0.upgrade behaves as the library it replaces, as a charm sees it.

Each test is written from the replaced library's documented, observable behaviour (statuses, unit
states, relation data, action results, the methods it calls on a subclass) on the Kubernetes path,
and from the signatures a charm overrides. The test name gives the item of the compatibility list
in the module docstring it checks.
"""

import inspect
import json
import logging

import pytest
from charms.data_platform_libs.v0.upgrade import (
    BaseModel,
    DataUpgrade,
    DependencyError,
    DependencyModel,
    KubernetesClientError,
)
from ops import CharmBase, testing
from ops.testing import Harness

APP = "k8s-app"
META = {"name": APP, "peers": {"upgrade": {"interface": "upgrade"}}}
ACTIONS = {"pre-upgrade-check": {}, "resume-upgrade": {}}
MODEL = {"app": {"dependencies": {}, "name": "app", "upgrade_supported": ">=1", "version": "2"}}


class CompatDependencies(BaseModel):
    app: DependencyModel


def _deps_json(version: str, supported: str = ">=1") -> str:
    model = {**MODEL["app"], "version": version, "upgrade_supported": supported}
    return json.dumps({"app": model})


class Seen:
    """What the library called on the subclass; tests set `partition_error` before a run."""

    calls: list[tuple] = []
    partition_error: Exception | None = None
    grant_error: Exception | None = None


@pytest.fixture(autouse=True)
def _reset():
    Seen.calls = []
    Seen.partition_error = None
    Seen.grant_error = None


class OriginalSignatures(DataUpgrade):
    """Overrides every method a charm may override, with the replaced library's signatures.

    Each records its call and delegates to the library. Kubernetes charms do not override
    `build_upgrade_stack` (the stack is the StatefulSet order).
    """

    def pre_upgrade_check(self) -> None:
        Seen.calls.append(("pre_upgrade_check",))

    def log_rollback_instructions(self) -> None:
        Seen.calls.append(("log_rollback_instructions",))

    def _on_upgrade_granted(self, event) -> None:
        Seen.calls.append(("_on_upgrade_granted",))
        if Seen.grant_error is not None:
            raise Seen.grant_error
        if self.substrate == "vm":
            self.set_unit_completed()

    def _set_rolling_update_partition(self, partition: int) -> None:
        Seen.calls.append(("_set_rolling_update_partition", partition))
        if Seen.partition_error is not None:
            raise Seen.partition_error

    def set_unit_failed(self) -> None:  # the original takes no argument
        Seen.calls.append(("set_unit_failed",))
        super().set_unit_failed()

    def set_unit_completed(self) -> None:
        Seen.calls.append(("set_unit_completed",))
        super().set_unit_completed()

    def on_upgrade_changed(self, event) -> None:  # the original's argument is required
        super().on_upgrade_changed(event)

    def _upgrade_supported_check(self) -> None:
        Seen.calls.append(("_upgrade_supported_check",))
        super()._upgrade_supported_check()

    def _repair_upgrade_stack(self) -> None:
        super()._repair_upgrade_stack()

    def _on_upgrade_finished(self, _) -> None:
        Seen.calls.append(("_on_upgrade_finished",))
        super()._on_upgrade_finished(_)

    def _on_pre_upgrade_check_action(self, event) -> None:
        super()._on_pre_upgrade_check_action(event)

    def _on_resume_upgrade_action(self, event) -> None:
        super()._on_resume_upgrade_action(event)


class K8sCharm(CharmBase):
    def __init__(self, framework):
        super().__init__(framework)
        model = CompatDependencies.model_validate(MODEL)
        self.upgrade = OriginalSignatures(self, model, substrate="k8s")


class VmCharm(CharmBase):
    def __init__(self, framework):
        super().__init__(framework)
        model = CompatDependencies.model_validate(MODEL)
        self.upgrade = VmUpgrade(self, model)


class VmUpgrade(OriginalSignatures):
    def build_upgrade_stack(self) -> list[int]:
        return [0, 1]


def _ctx(charm: type[CharmBase] = K8sCharm, unit_id: int = 0) -> testing.Context:
    return testing.Context(charm, meta=META, actions=ACTIONS, app_name=APP, unit_id=unit_id)


def _peer(app=None, unit=None, peers=None):
    return testing.PeerRelation(
        "upgrade", local_app_data=app or {}, local_unit_data=unit or {}, peers_data=peers or {}
    )


def _state(rel, leader=False, planned=3, **kwargs):
    return testing.State(relations={rel}, leader=leader, planned_units=planned, **kwargs)


def _calls(name):
    return [c for c in Seen.calls if c[0] == name]


# --- item 1: pre-upgrade-check on Kubernetes --------------------------------------------------


def test_item1_k8s_pre_upgrade_check_writes_the_sorted_unit_numbers():
    ctx = _ctx()
    rel = _peer(unit={"state": "idle"}, peers={2: {"state": "idle"}, 1: {"state": "idle"}})
    out = ctx.run(ctx.on.action("pre-upgrade-check"), _state(rel, leader=True))
    assert out.get_relation(rel.id).local_app_data["upgrade-stack"] == "[0, 1, 2]"
    assert ctx.action_results is not None
    assert ctx.action_results["upgrade-stack"] == "[0, 1, 2]"
    assert _calls("pre_upgrade_check")


# --- item 2: upgrade-charm on Kubernetes ------------------------------------------------------


def test_item2_k8s_upgrade_charm_without_stack_logs_and_changes_nothing(caplog):
    ctx = _ctx()
    rel = _peer(unit={"state": "idle"}, peers={1: {"state": "idle"}, 2: {"state": "idle"}})
    with caplog.at_level(logging.ERROR):
        out = ctx.run(ctx.on.upgrade_charm(), _state(rel, leader=True))
    assert "Cluster upgrade failed, ensure pre-upgrade checks are ran first." in caplog.text
    got = out.get_relation(rel.id)
    assert got.local_unit_data["state"] == "idle"
    assert "upgrade-stack" not in got.local_app_data  # the leader does not invent one


def test_item2_k8s_upgrade_charm_marks_the_unit_upgrading_without_a_grant():
    ctx = _ctx(unit_id=1)
    rel = _peer(
        app={"upgrade-stack": "[0, 1]", "dependencies": _deps_json("1")},
        unit={"state": "idle"},
        peers={0: {"state": "idle"}, 2: {"state": "completed"}},
    )
    out = ctx.run(ctx.on.upgrade_charm(), _state(rel))
    assert out.get_relation(rel.id).local_unit_data["state"] == "upgrading"
    assert out.unit_status == testing.MaintenanceStatus("upgrading unit")
    assert _calls("_upgrade_supported_check") == []  # only the highest unit checks
    assert _calls("_on_upgrade_granted") == []


def test_item2_k8s_highest_unit_blocks_an_incompatible_refresh():
    ctx = _ctx(unit_id=2)
    rel = _peer(
        app={"upgrade-stack": "[0, 1, 2]", "dependencies": _deps_json("0.5", supported="*")},
        unit={"state": "idle"},
        peers={0: {"state": "idle"}, 1: {"state": "idle"}},
    )
    out = ctx.run(ctx.on.upgrade_charm(), _state(rel))
    assert out.get_relation(rel.id).local_unit_data["state"] == "failed"
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert _calls("set_unit_failed") == [("set_unit_failed",)]
    assert _calls("log_rollback_instructions")


# --- item 3: finalisation on Kubernetes -------------------------------------------------------


def test_item3_k8s_completed_unit_waits_for_unfinished_peers():
    ctx = _ctx(unit_id=2)
    rel = _peer(
        app={"upgrade-stack": "[]"},
        unit={"state": "completed"},
        peers={0: {"state": "upgrading"}, 1: {"state": "completed"}},
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=1), _state(rel))
    assert out.get_relation(rel.id).local_unit_data["state"] == "completed"
    assert out.unit_status != testing.ActiveStatus()


def test_item3_k8s_leader_finalises_and_stores_the_new_dependencies():
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": "[0]", "dependencies": _deps_json("1")},
        unit={"state": "completed"},
        peers={1: {"state": "completed"}, 2: {"state": "completed"}},
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=1), _state(rel, leader=True))
    got = out.get_relation(rel.id)
    assert got.local_app_data["upgrade-stack"] == "[]"
    assert got.local_unit_data["state"] == "idle"
    assert got.local_app_data["dependencies"] == _deps_json("2")
    assert out.unit_status == testing.ActiveStatus()


# --- item 4: grants on Kubernetes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer_states", "why"),
    [
        ({0: "ready", 1: "upgrading"}, "another unit is upgrading"),
        ({0: "idle", 1: "ready"}, "the cluster is not ready"),
    ],
)
def test_item4_k8s_top_unit_is_not_granted_out_of_turn(peer_states, why):
    ctx = _ctx(unit_id=2)
    rel = _peer(
        app={"upgrade-stack": "[0, 1, 2]"},
        unit={"state": "ready"},
        peers={n: {"state": s} for n, s in peer_states.items()},
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=1), _state(rel))
    assert _calls("_on_upgrade_granted") == [], why
    assert out.get_relation(rel.id).local_unit_data["state"] == "ready", why


def test_item4_k8s_top_unit_is_granted_when_the_cluster_is_ready():
    ctx = _ctx(unit_id=2)
    rel = _peer(
        app={"upgrade-stack": "[0, 1, 2]"},
        unit={"state": "ready"},
        peers={0: {"state": "ready"}, 1: {"state": "ready"}},
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=1), _state(rel))
    assert _calls("_on_upgrade_granted") == [("_on_upgrade_granted",)]
    assert out.get_relation(rel.id).local_unit_data["state"] == "upgrading"
    assert out.unit_status == testing.MaintenanceStatus("upgrading...")


# --- item 5: the StatefulSet partition --------------------------------------------------------


def _finish(unit_id, leader=False, stack="[0, 1]", peers=None):
    """Unit `unit_id` (of 3) reports completed, as a k8s charm does once its pod is healthy."""
    ctx = _ctx(unit_id=unit_id)
    if peers is None:
        peers = {n: {"state": "idle"} for n in range(3) if n != unit_id}
    rel = _peer(app={"upgrade-stack": stack}, unit={"state": "upgrading"}, peers=peers)
    with ctx(ctx.on.update_status(), _state(rel, leader=leader)) as mgr:
        mgr.charm.upgrade.set_unit_completed()
        out = mgr.run()
    return out.get_relation(rel.id), out


def test_item5_k8s_middle_unit_lets_the_statefulset_roll_the_next_ordinal():
    got, _ = _finish(unit_id=1)
    assert _calls("_on_upgrade_finished")
    assert _calls("_set_rolling_update_partition") == [("_set_rolling_update_partition", 0)]
    assert got.local_unit_data["state"] == "completed"


@pytest.mark.parametrize("unit_id", [2, 0])
def test_item5_k8s_highest_and_lowest_unit_leave_the_partition_alone(unit_id, caplog):
    with caplog.at_level(logging.INFO):
        _finish(unit_id=unit_id)
    assert _calls("_set_rolling_update_partition") == []
    if unit_id == 2:  # the operator checks the first upgraded unit, then resumes
        assert "run `resume-upgrade` action to continue upgrade" in caplog.text


def test_item5_k8s_partition_error_fails_the_unit_and_logs_rollback():
    Seen.partition_error = KubernetesClientError("k8s API down", "403")
    got, out = _finish(unit_id=1)
    assert got.local_unit_data["state"] == "failed"
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert _calls("set_unit_failed") == [("set_unit_failed",)]
    assert _calls("log_rollback_instructions")


def test_item5_k8s_leader_pops_but_does_not_move_the_partition():
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": "[0, 1, 2]"},
        unit={"state": "idle"},
        peers={1: {"state": "idle"}, 2: {"state": "completed"}},
    )
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=2), _state(rel, leader=True))
    assert out.get_relation(rel.id).local_app_data["upgrade-stack"] == "[0, 1]"
    assert _calls("_set_rolling_update_partition") == []  # resume-upgrade is the operator's


# --- item 6: resume-upgrade -------------------------------------------------------------------


def _resume(stack):
    ctx = _ctx(unit_id=0)
    rel = _peer(
        app={"upgrade-stack": stack},
        unit={"state": "idle"},
        peers={1: {"state": "idle"}, 2: {"state": "completed"}},
    )
    return ctx, rel, _state(rel, leader=True)


def test_item6_resume_upgrade_refuses_a_full_stack():
    ctx, _, state = _resume("[0, 1, 2]")
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("resume-upgrade"), state)
    assert failure.value.message == (
        "Upgrade can be resumed only once after juju refresh is called."
    )
    assert _calls("_set_rolling_update_partition") == []


def test_item6_resume_upgrade_after_the_first_unit_sets_the_partition():
    ctx, _, state = _resume("[0, 1]")
    ctx.run(ctx.on.action("resume-upgrade"), state)
    assert ctx.action_results == {"message": "Upgrade will resume on unit 1"}
    assert _calls("_set_rolling_update_partition") == [("_set_rolling_update_partition", 1)]


# --- item 7: the original's signatures --------------------------------------------------------

# (method, how the replaced library calls it: positional args after self, keyword args)
ORIGINAL_CALLS = [
    ("pre_upgrade_check", (), {}),
    ("log_rollback_instructions", (), {}),
    ("build_upgrade_stack", (), {}),
    ("_on_upgrade_granted", ("event",), {}),
    ("_set_rolling_update_partition", (), {"partition": 1}),
    ("set_unit_failed", (), {}),
    ("set_unit_completed", (), {}),
    ("on_upgrade_changed", ("event",), {}),
    ("_upgrade_supported_check", (), {}),
    ("_repair_upgrade_stack", (), {}),
    ("_on_upgrade_finished", ("event",), {}),
    ("_on_pre_upgrade_check_action", ("event",), {}),
    ("_on_resume_upgrade_action", ("event",), {}),
]


@pytest.mark.parametrize(("name", "args", "kwargs"), ORIGINAL_CALLS)
def test_item7_every_overridable_method_accepts_the_original_call(name, args, kwargs):
    inspect.signature(getattr(DataUpgrade, name)).bind("self", *args, **kwargs)


def _vm_version_error():
    rel = _peer(
        app={"upgrade-stack": "[0, 1]", "dependencies": _deps_json("0.5", supported="*")},
        unit={"state": "idle"},
        peers={1: {"state": "idle"}},
    )
    return VmCharm, 0, "upgrade_charm", rel, _state(rel, leader=True)


def _vm_dependency_error():
    Seen.grant_error = DependencyError("db too old", "db 1 < 2")
    rel = _peer(
        app={"upgrade-stack": "[0, 1]"}, unit={"state": "ready"}, peers={0: {"state": "ready"}}
    )
    return VmCharm, 1, "relation_changed", rel, _state(rel)


def _vm_leader_completes():
    rel = _peer(
        app={"upgrade-stack": "[1, 0]"}, unit={"state": "ready"}, peers={1: {"state": "ready"}}
    )
    return VmCharm, 0, "relation_changed", rel, _state(rel, leader=True)


def _k8s_version_error():
    rel = _peer(
        app={"upgrade-stack": "[0, 1, 2]", "dependencies": _deps_json("0.5", supported="*")},
        unit={"state": "idle"},
        peers={0: {"state": "idle"}, 1: {"state": "idle"}},
    )
    return K8sCharm, 2, "upgrade_charm", rel, _state(rel)


@pytest.mark.parametrize(
    ("setup", "expected_calls", "final_state"),
    [
        (_vm_version_error, ["set_unit_failed", "log_rollback_instructions"], "failed"),
        (_vm_dependency_error, ["_on_upgrade_granted", "set_unit_failed"], "failed"),
        (_vm_leader_completes, ["_on_upgrade_granted", "set_unit_completed"], "completed"),
        (_k8s_version_error, ["set_unit_failed", "log_rollback_instructions"], "failed"),
    ],
    ids=["vm-version-error", "vm-dependency-error", "vm-leader-completes", "k8s-version-error"],
)
def test_item7_a_subclass_with_the_original_signatures_works(setup, expected_calls, final_state):
    charm, unit_id, event, rel, state = setup()
    ctx = _ctx(charm=charm, unit_id=unit_id)
    hook = ctx.on.upgrade_charm() if event == "upgrade_charm" else ctx.on.relation_changed(rel)
    out = ctx.run(hook, state)  # a TypeError from a call with the wrong arguments fails here
    names = [c[0] for c in Seen.calls]
    for name in expected_calls:
        assert name in names
    assert out.get_relation(rel.id).local_unit_data["state"] == final_state


def test_item7_library_failures_keep_showing_their_cause():
    """The cause still reaches the status when `set_unit_failed()` is called without it."""
    charm, unit_id, _, rel, state = _vm_dependency_error()
    ctx = _ctx(charm=charm, unit_id=unit_id)
    out = ctx.run(ctx.on.relation_changed(rel), state)
    assert out.unit_status == testing.BlockedStatus("db 1 < 2")


# --- item 8: every action reads the relation, not a cache -------------------------------------


# Harness, deprecated but what charms' existing tests use: it keeps one charm object across events.
@pytest.mark.filterwarnings("ignore:Harness is deprecated:PendingDeprecationWarning")
def test_item8_actions_read_the_stack_written_after_earlier_handlers():
    """As a charm's own Harness test does: the leader's app data changes without an event."""
    harness = Harness(K8sCharm, meta=json.dumps(META), actions=json.dumps(ACTIONS))
    try:
        harness.set_leader(True)
        harness.set_planned_units(2)
        harness.begin()
        rel_id = harness.add_relation("upgrade", APP)  # relation-created reads the stack
        harness.add_relation_unit(rel_id, f"{APP}/1")
        harness.update_relation_data(rel_id, APP, {"upgrade-stack": "[1]"})  # no event: own app
        output = harness.run_action("resume-upgrade")
        assert output.results == {"message": "Upgrade will resume on unit 1"}
        assert _calls("_set_rolling_update_partition") == [("_set_rolling_update_partition", 1)]
    finally:
        harness.cleanup()


def test_item6_resume_upgrade_without_the_relation_says_so_first():
    # The original checks the relation before leadership: a non-leader without it hears about it.
    ctx = _ctx(unit_id=1)
    state = testing.State(leader=False, planned_units=3)
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("resume-upgrade"), state)
    assert failure.value.message == "Could not find upgrade relation."
