"""charms.rolling_ops.v0: no peer-relation value another unit wrote can make a hook raise.

Property test (hypothesis, derandomized): one key of the peer relation, in another unit's bag, the
application bag or this unit's bag, gets an arbitrary value (JSON of any shape, text, huge digit
strings, deep nesting, surrogates, empty); the rest is a busy, valid rollout (unit 1 finished its
grant, unit 2 and this unit wait). One hook then runs on a leader or a non-leader. No hook may
raise, and a malformed value must be listed by `malformed_data()` (the test charm shows it in its
status, as src/restart/v0.py does) unless this unit replaced it in the same hook.
Regression tests for the crashes found by review follow.
"""

from __future__ import annotations

import json

import ops
import pytest
from charms.rolling_ops.v0 import rollingops
from charms.rolling_ops.v0.rollingops import RollingOpsManager, RunWithLock
from hypothesis import given
from hypothesis import strategies as st
from ops import testing

from tests.unit.peer_fuzz import FUZZ_SETTINGS, hostile_values, malformed_values, run_juju_event

APP = "roll"
META = {"name": APP, "peers": {"restart": {"interface": "rolling_op"}}}
ACTIONS = {"restart": {}}
UNIT_KEYS = ["state", "callback_override", "rolling-ops-queue", "rolling-ops-requested-at"]
APP_KEYS = [
    *(f"<ops.model.Unit {APP}/{n}>" for n in range(3)),
    "rolling-ops-order",
    "rolling-ops-token",
    "rolling-ops-holder",
    "rolling-ops-yielded",
]
# Any string is a valid method name to look up (a missing one is logged and dropped) or unit name.
UNREPORTED = {"callback_override", "rolling-ops-yielded"}
# Valid values of some keys, so that the fuzz also takes the paths they open.
WORDS = ["acquire", "release", "granted", "idle", "_other", "_restart", "roll/0", "roll/2", "7"]


class FuzzCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.manager = RollingOpsManager(self, relation="restart", callback=self._restart)
        framework.observe(self.on.restart_action, self._on_restart_action)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)

    def _on_restart_action(self, _: ops.ActionEvent):
        self.on["restart"].acquire_lock.emit(callback_override="_other")

    def _restart(self, _: RunWithLock):
        pass

    def _other(self, _: RunWithLock):
        pass

    def _on_collect_status(self, event: ops.CollectStatusEvent):
        problems = self.manager.malformed_data()
        if problems:
            event.add_status(ops.BlockedStatus(f"malformed: {problems[0]}"[:120]))


@pytest.fixture(autouse=True)
def _no_wakeups(monkeypatch):
    """No Juju machine here: the juju-exec wake-up is not spawned."""
    monkeypatch.setattr(RollingOpsManager, "_dispatch_wakeup", lambda self: None)


def _state(where: str, key: str, value: str, leader: bool) -> testing.State:
    """Unit 1 finished grant 3 (not cleared yet); unit 2 and this unit (with a queue) wait."""
    app = {
        f"<ops.model.Unit {APP}/1>": "granted",
        f"<ops.model.Unit {APP}/2>": "idle",
        "rolling-ops-token": "3",
        "rolling-ops-holder": json.dumps({"unit": f"{APP}/1", "token": 3}),
        "rolling-ops-order": json.dumps([f"{APP}/2", f"{APP}/0"]),
    }
    mine = {
        "state": "acquire",
        "rolling-ops-queue": json.dumps(["_other"]),
        "rolling-ops-requested-at": "2026-01-01T00:00:02+00:00",
    }
    peers = {
        1: {"state": "release"},
        2: {"state": "acquire", "rolling-ops-requested-at": "2026-01-01T00:00:01+00:00"},
    }
    bag = {"app": app, "own": mine, "peer": peers[2]}[where]
    bag[key] = value
    relation = testing.PeerRelation(
        "restart", local_app_data=app, local_unit_data=mine, peers_data=peers
    )
    return testing.State(leader=leader, relations={relation})


def _run(where: str, key: str, value: str, leader: bool, event: str) -> testing.State:
    context = testing.Context(FuzzCharm, meta=META, actions=ACTIONS, app_name=APP, unit_id=0)
    state = _state(where, key, value, leader)
    (relation,) = state.relations
    if event in ("process-locks", "run-with-lock"):
        with context(context.on.update_status(), state) as manager:
            if event == "process-locks":
                manager.charm.on["restart"].process_locks.emit()
            else:
                manager.charm.on["restart"].run_with_lock.emit(grant_token="3")
            return manager.run()
    return run_juju_event(context, relation, state, event)


EVENTS = [
    "relation-changed",
    "relation-departed",
    "update-status",
    "leader-elected",
    "restart",
    "process-locks",
    "run-with-lock",
]
PLACES = st.one_of(
    st.tuples(st.sampled_from(["peer", "own"]), st.sampled_from(UNIT_KEYS)),
    st.tuples(st.just("app"), st.sampled_from(APP_KEYS)),
    # Keys the leader scans for: "<ops.model.Unit NAME>" of any name.
    st.tuples(st.just("app"), st.text(max_size=30).map(lambda n: f"<ops.model.Unit {n}>")),
)


@FUZZ_SETTINGS
@given(
    place=PLACES,
    value=hostile_values | st.sampled_from(WORDS),
    leader=st.booleans(),
    event=st.sampled_from(EVENTS),
)
def test_no_hook_raises_on_any_peer_value(place, value, leader, event):
    where, key = place
    _run(where, key, value, leader, event)  # raises UncaughtCharmError if the hook raised


@FUZZ_SETTINGS
@given(place=PLACES, value=malformed_values, leader=st.booleans(), event=st.sampled_from(EVENTS))
def test_malformed_values_are_reported_and_ignored(place, value, leader, event):
    where, key = place
    out = _run(where, key, value, leader, event)
    if key not in UNREPORTED and key in UNIT_KEYS + APP_KEYS:
        _assert_reported_or_replaced(out, where, key, value)


def _assert_reported_or_replaced(out: testing.State, where: str, key: str, value: str) -> None:
    (relation,) = out.relations
    bag = {"app": relation.local_app_data, "own": relation.local_unit_data}.get(where, {})
    if where != "peer" and bag.get(key) != value:
        return  # this unit replaced the bad value in this hook: nothing left to show
    assert isinstance(out.unit_status, ops.BlockedStatus), (key, value[:40], out.unit_status)
    assert out.unit_status.message.startswith("malformed: ")
    assert key in out.unit_status.message


# --- regressions: each of these raised before the bounded parsers ------------------------------


@pytest.mark.parametrize(
    "where, key, value",
    [
        ("peer", "rolling-ops-queue", "[" * 100_000 + "]" * 100_000),  # RecursionError
        ("app", "rolling-ops-holder", '{"a":' * 50_000),  # RecursionError
        ("app", "rolling-ops-order", "[" * 100_000),  # RecursionError
        ("app", "rolling-ops-token", "9" * 5000),  # int() refuses more than 4300 digits
        ("app", "rolling-ops-token", "9" * 4300),  # str(token + 1) refuses 4301 digits
        ("app", "rolling-ops-holder", '{"unit": "roll/1", "token": ' + "9" * 4300 + "}"),
    ],
)
@pytest.mark.parametrize("leader", [True, False])
def test_regression_peer_value_crashed_the_hook(where, key, value, leader):
    out = _run(where, key, value, leader=leader, event="update-status")
    _assert_reported_or_replaced(out, where, key, value)


def test_regression_problem_messages_do_not_echo_huge_values():
    out = _run("peer", "state", "x" * 100_000, leader=True, event="update-status")
    assert isinstance(out.unit_status, ops.BlockedStatus)
    with pytest.raises(ValueError, match="deeper"):
        rollingops._load_json("[" * 17 + "]" * 17)
    assert rollingops._load_json('["[[[[[[[[[[[[[[[[[[", {"a": "{{{{{{{{{{{{{{{{{{{{"}]')
