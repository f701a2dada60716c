"""charms.coordinated_ops.v0.coordinator: no peer-relation value can make a hook raise.

Property test (hypothesis, derandomized): the coordinator's databag key in another unit's bag, the
application bag or this unit's bag gets an arbitrary value (JSON of any shape, maps of lock names
to anything, text, huge digit strings, deep nesting, surrogates, empty); the rest is a busy, valid
state (unit 1 holds "restart", unit 2 and this unit wait). One hook then runs on a leader or a
non-leader. No hook may raise, and a malformed value must be listed in `bad_data` (the test charm
shows it in its status, as src/restart/coordinator.py does) unless this unit replaced it.
Regression test for the crash found by review follows.
"""

from __future__ import annotations

import json

import ops
import pytest
from charms.coordinated_ops.v0 import coordinator as coordinator_module
from charms.coordinated_ops.v0.coordinator import TIMESTAMP_FORMAT, BaseCoordinator, Serial
from hypothesis import given
from hypothesis import strategies as st
from ops import testing

from tests.unit.peer_fuzz import (
    FUZZ_SETTINGS,
    hostile_values,
    json_values,
    malformed_values,
    run_juju_event,
)

META = {"name": "app", "peers": {"cluster": {"interface": "cluster"}}}
ACTIONS = {"restart": {}}
KEY = "coordinator"


def ts(second: int) -> str:
    return f"2026-11-22 01:33:{second:02d}.000000Z"


class FuzzCharm(ops.CharmBase):
    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._stored.set_default(needs_restart=True)
        self.serial = Serial(self)
        framework.observe(self.on.restart_action, self._maybe_restart)
        for event in (
            self.on.cluster_relation_changed,
            self.on.cluster_relation_departed,
            self.on.leader_elected,
            self.on.update_status,
            self.serial.wake_up_event,
        ):
            framework.observe(event, self._maybe_restart)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)

    def _maybe_restart(self, _: ops.EventBase) -> None:
        if self.serial.granted("restart"):
            self._stored.needs_restart = False
        elif self._stored.needs_restart:
            self.serial.acquire("restart")

    def _on_collect_status(self, event: ops.CollectStatusEvent):
        self.seen_bad_data = list(self.serial.bad_data)
        if self.serial.bad_data:
            event.add_status(ops.BlockedStatus(f"malformed: {self.serial.bad_data[0]}"[:120]))


@pytest.fixture(autouse=True)
def _no_wakeups(monkeypatch):
    """No Juju machine here: the juju-exec wake-up is not spawned."""
    monkeypatch.setattr(BaseCoordinator, "_dispatch_wakeup", lambda self: None)


def _state(where: str, value: str, leader: bool) -> testing.State:
    app = {KEY: json.dumps({"app/1": {"restart": ts(1)}})}
    mine = {KEY: json.dumps({"restart": ts(3)})}
    peers = {1: {KEY: json.dumps({"restart": ts(1)})}, 2: {KEY: json.dumps({"restart": ts(2)})}}
    {"app": app, "own": mine, "peer": peers[2]}[where][KEY] = value
    relation = testing.PeerRelation(
        "cluster", local_app_data=app, local_unit_data=mine, peers_data=peers
    )
    return testing.State(leader=leader, relations={relation}, planned_units=3)


def _run(where: str, value: str, leader: bool, event: str) -> testing.State:
    context = testing.Context(FuzzCharm, meta=META, actions=ACTIONS, app_name="app", unit_id=0)
    state = _state(where, value, leader)
    (relation,) = state.relations
    if event == "wake-up":
        with context(context.on.update_status(), state) as manager:
            manager.charm.serial.wake_up_event.emit()
            return manager.run()
    return run_juju_event(context, relation, state, event)


EVENTS = [
    "relation-changed",
    "relation-departed",
    "update-status",
    "leader-elected",
    "restart",
    "wake-up",
]
timestamps = st.one_of(
    st.datetimes().map(lambda d: d.strftime(TIMESTAMP_FORMAT)), st.text(max_size=30), json_values
)
lock_maps = st.dictionaries(st.text(max_size=20), timestamps, max_size=4)
# Shapes close to the real ones (requests: {lock: ts}; grants: {unit: {lock: ts}}), and anything.
coordinator_values = st.one_of(
    hostile_values,
    lock_maps.map(json.dumps),
    st.dictionaries(st.sampled_from(["app/0", "app/1", "app/2", "x"]), lock_maps).map(json.dumps),
)
WHERE = st.sampled_from(["peer", "own", "app"])


@FUZZ_SETTINGS
@given(where=WHERE, value=coordinator_values, leader=st.booleans(), event=st.sampled_from(EVENTS))
def test_no_hook_raises_on_any_peer_value(where, value, leader, event):
    _run(where, value, leader, event)  # raises UncaughtCharmError if the hook raised


@FUZZ_SETTINGS
@given(where=WHERE, value=malformed_values, leader=st.booleans(), event=st.sampled_from(EVENTS))
def test_malformed_values_are_reported_and_ignored(where, value, leader, event):
    out = _run(where, value, leader, event)
    _assert_reported_or_replaced(out, where, value)


def _assert_reported_or_replaced(out: testing.State, where: str, value: str) -> None:
    (relation,) = out.relations
    bag = {"app": relation.local_app_data, "own": relation.local_unit_data}.get(where, {})
    if where != "peer" and bag.get(KEY) != value:
        return  # this unit replaced the bad value in this hook: nothing left to show
    assert isinstance(out.unit_status, ops.BlockedStatus), (where, value[:40], out.unit_status)
    assert out.unit_status.message.startswith("malformed: ")


# --- regression: this raised RecursionError before the bounded loader --------------------------


@pytest.mark.parametrize("where", ["peer", "app"])
@pytest.mark.parametrize("leader", [True, False])
def test_regression_deep_json_crashed_the_hook(where, leader):
    value = '{"a":' * 50_000
    out = _run(where, value, leader, "relation-changed")
    _assert_reported_or_replaced(out, where, value)


def test_regression_bad_data_quotes_at_most_a_little_of_a_value():
    context = testing.Context(FuzzCharm, meta=META, actions=ACTIONS, app_name="app", unit_id=0)
    state = _state("peer", json.dumps({"x" * 10_000: "y" * 10_000}), True)
    with context(context.on.update_status(), state) as manager:
        manager.run()
        (problem,) = manager.charm.seen_bad_data
    assert len(problem) < 300
    with pytest.raises(ValueError, match="deeper"):
        coordinator_module._load_json("[" * 9 + "]" * 9)
