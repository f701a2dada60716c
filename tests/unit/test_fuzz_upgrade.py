"""charms.data_platform_libs.v0.upgrade: no peer-relation value can make a hook raise.

Property test (hypothesis, derandomized): one peer key the library reads (`state` in another
unit's bag or this unit's, `upgrade-stack` or `dependencies` in the application bag) gets an
arbitrary value (JSON of any shape, near-valid stacks and dependency maps, text, huge digit
strings, deep nesting, surrogates, empty); the rest is a rollout in progress (unit 1 upgrading,
unit 2 and this unit ready). One hook or action then runs on a leader or a non-leader. No hook may
raise (an action may fail cleanly), and a malformed value must be listed in `data_errors` (the test
charm shows it in its status, as src/upgrade.py does) unless this unit replaced it.
Regression tests for the crashes found by review follow.
"""

from __future__ import annotations

import json
import typing

import ops
import pytest
from charms.data_platform_libs.v0 import upgrade as upgrade_module
from charms.data_platform_libs.v0.upgrade import BaseModel, DataUpgrade, DependencyModel
from hypothesis import given
from hypothesis import strategies as st
from ops import testing

from tests.unit.peer_fuzz import FUZZ_SETTINGS, hostile_values, json_values, malformed_values

APP = "app"
META = {"name": APP, "peers": {"upgrade": {"interface": "upgrade"}}}
ACTIONS = {"pre-upgrade-check": {}, "resume-upgrade": {}}
DEPS = {
    "workload": {
        "dependencies": {},
        "name": "workload",
        "upgrade_supported": ">=1",
        "version": "2",
    }
}


class FuzzDependencies(BaseModel):
    workload: DependencyModel


class FuzzUpgrade(DataUpgrade):
    def pre_upgrade_check(self) -> None:
        pass

    def build_upgrade_stack(self) -> list[int]:
        return [0, 2, 1]

    def log_rollback_instructions(self) -> None:
        pass

    def _on_upgrade_granted(self, _) -> None:
        self.set_unit_completed()


class FuzzCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.upgrade = FuzzUpgrade(self, FuzzDependencies.model_validate(DEPS))
        framework.observe(self.on.collect_unit_status, self._on_collect_status)

    def _on_collect_status(self, event: ops.CollectStatusEvent):
        self.upgrade.upgrade_stack  # noqa: B018  (reading them records malformed data)
        self.upgrade.stored_dependencies  # noqa: B018
        self.upgrade.cluster_state  # noqa: B018
        if self.upgrade.data_errors:
            event.add_status(ops.BlockedStatus(f"malformed: {self.upgrade.data_errors[0]}"[:120]))


PLACES = {
    "state": ["peer", "own"],
    "upgrade-stack": ["app"],
    "dependencies": ["app"],
}


def _state(where: str, key: str, value: str, leader: bool) -> testing.State:
    app = {"upgrade-stack": "[0, 2, 1]", "dependencies": json.dumps(DEPS)}
    mine = {"state": "ready"}
    peers = {1: {"state": "upgrading"}, 2: {"state": "ready"}}
    {"app": app, "own": mine, "peer": peers[2]}[where][key] = value
    relation = testing.PeerRelation(
        "upgrade", local_app_data=app, local_unit_data=mine, peers_data=peers
    )
    return testing.State(leader=leader, relations={relation}, planned_units=3)


def _run(where: str, key: str, value: str, leader: bool, event: str) -> testing.State:
    context = testing.Context(FuzzCharm, meta=META, actions=ACTIONS, app_name=APP, unit_id=0)
    state = _state(where, key, value, leader)
    (relation,) = state.relations
    on = context.on
    trigger = {
        "relation-created": lambda: on.relation_created(relation),
        "relation-changed": lambda: on.relation_changed(relation, remote_unit=2),
        "relation-departed": lambda: on.relation_departed(
            relation, remote_unit=1, departing_unit=1
        ),
        "upgrade-charm": on.upgrade_charm,
        "config-changed": on.config_changed,
        "update-status": on.update_status,
        "leader-elected": on.leader_elected,
        "pre-upgrade-check": lambda: on.action("pre-upgrade-check"),
        "resume-upgrade": lambda: on.action("resume-upgrade"),
    }[event]()
    try:
        return context.run(trigger, state)
    except testing.ActionFailed as failure:  # a clean failure, not a crash
        return typing.cast("testing.State", failure.state)


EVENTS = [
    "relation-created",
    "relation-changed",
    "relation-departed",
    "upgrade-charm",
    "config-changed",
    "update-status",
    "leader-elected",
    "pre-upgrade-check",
    "resume-upgrade",
]
PLACE = st.sampled_from([(where, key) for key, places in PLACES.items() for where in places])
constraints = st.one_of(
    st.sampled_from(["^1", ">=1,<3", "~1.2", "*", "1.*"]), st.text(max_size=12)
)
dependency_maps = st.fixed_dictionaries(
    {
        "workload": st.fixed_dictionaries(
            {
                "dependencies": st.dictionaries(st.text(max_size=8), constraints, max_size=2),
                "name": st.text(max_size=8),
                "upgrade_supported": constraints,
                "version": st.one_of(st.sampled_from(["1", "2.0.1"]), st.text(max_size=8)),
            }
        )
    }
)
upgrade_values = st.one_of(
    hostile_values,
    st.lists(st.integers(min_value=-5, max_value=1 << 64), max_size=5).map(json.dumps),
    st.lists(json_values, max_size=3).map(json.dumps),
    dependency_maps.map(json.dumps),
    st.sampled_from(["idle", "ready", "upgrading", "completed", "failed", "recovery"]),
)


@FUZZ_SETTINGS
@given(place=PLACE, value=upgrade_values, leader=st.booleans(), event=st.sampled_from(EVENTS))
def test_no_hook_raises_on_any_peer_value(place, value, leader, event):
    where, key = place
    _run(where, key, value, leader, event)  # raises UncaughtCharmError if the hook raised


@FUZZ_SETTINGS
@given(place=PLACE, value=malformed_values, leader=st.booleans(), event=st.sampled_from(EVENTS))
def test_malformed_values_are_reported_and_ignored(place, value, leader, event):
    where, key = place
    out = _run(where, key, value, leader, event)
    _assert_reported_or_replaced(out, where, key, value)


def _assert_reported_or_replaced(out: testing.State, where: str, key: str, value: str) -> None:
    (relation,) = out.relations
    bag = {"app": relation.local_app_data, "own": relation.local_unit_data}.get(where, {})
    if where != "peer" and bag.get(key) != value:
        return  # this unit replaced the bad value in this hook: nothing left to show
    assert isinstance(out.unit_status, ops.BlockedStatus), (key, value[:40], out.unit_status)
    assert out.unit_status.message.startswith("malformed: ")


# --- regressions: each of these raised before the bounded loader -------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("upgrade-stack", "[" * 100_000 + "]" * 100_000),  # RecursionError
        ("dependencies", '{"a":' * 50_000),  # RecursionError
    ],
)
@pytest.mark.parametrize("leader", [True, False])
def test_regression_deep_json_crashed_the_hook(key, value, leader):
    out = _run("app", key, value, leader, "update-status")
    _assert_reported_or_replaced(out, "app", key, value)


@pytest.mark.parametrize("value", ["[-1]", f"[{1 << 40}]", "[1, true]", "[1, 2.5]"])
def test_unit_numbers_out_of_range_are_refused(value):
    out = _run("app", "upgrade-stack", value, False, "update-status")
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert "upgrade-stack" in out.unit_status.message


def test_problem_messages_quote_little_of_a_value():
    out = _run("own", "state", "x" * 100_000, False, "update-status")
    assert isinstance(out.unit_status, ops.BlockedStatus)
    with pytest.raises(ValueError, match="deeper"):
        upgrade_module._load_json("[" * 9 + "]" * 9)
    with pytest.raises(ValueError, match="characters"):
        upgrade_module._load_json(json.dumps("x" * 20_000))
