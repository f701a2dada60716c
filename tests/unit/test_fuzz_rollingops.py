"""charmlibs.rollingops: no peer-relation value another unit wrote can make a hook raise.

Property test (hypothesis, derandomized): one key of the peer relation, in another unit's bag, the
application bag or this unit's own bag, gets an arbitrary value (well-formed JSON of any shape,
text, huge digit strings, deep nesting, surrogates, empty); the rest is a busy, valid rollout (a
grant out, queues waiting). One hook then runs on a leader or a non-leader. No hook may raise, and
a malformed value must show in `state.malformed` (the library sets no status; the test charm shows
it, as the package docstring asks a charm to) unless this unit replaced it in the same hook.
Regression tests for the crashes found by review follow.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import typing

import ops
import pytest
from charmlibs.rollingops import (
    OperationResult,
    RollingOpsError,
    RollingOpsManager,
    _dispatch,
    _models,
)
from hypothesis import given
from hypothesis import strategies as st
from ops import testing

from tests.unit.peer_fuzz import FUZZ_SETTINGS, hostile_values, malformed_values

APP = "app"
META = {
    "name": APP,
    "peers": {"restart": {"interface": "rollingops"}},
    "requires": {"etcd": {"interface": "etcd_client", "limit": 1, "optional": True}},
}
ACTIONS = {"request": {}}
UNIT_KEYS = [
    "rollingops-version",
    "rollingops-queue",
    "rollingops-seq",
    "rollingops-intent",
    "rollingops-done",
    "rollingops-backend",
    "rollingops-etcd-cleanup",
]
APP_KEYS = [
    "rollingops-version",
    "rollingops-token",
    "rollingops-grant",
    "rollingops-order",
    "rollingops-mode",
    "rollingops-client-secret-id",
]
# Keys whose value decides something: a malformed one must be reported. (`intent` is derived by
# every reader from the queue; the client secret ID is only used, with the etcd relation, to look
# the secret up, and an unusable one is logged there.)
UNREPORTED = {"rollingops-intent", "rollingops-client-secret-id"}
BASE_DIR: list[str] = ["/nonexistent"]
# Valid values of some keys, so that the fuzz also takes the paths they open (etcd mode...).
WORDS = ["1", "peer", "etcd", "true", "idle", "request", "retry-hold", "secret:nope"]


class FuzzCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.rolling = RollingOpsManager(
            self,
            callback_targets={"restart": self._restart},
            peer_relation_name="restart",
            etcd_relation_name="etcd",
            cluster_id="fuzz",
            base_dir=BASE_DIR[0],
        )
        framework.observe(self.on.request_action, self._on_request)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)

    def _on_request(self, event: ops.ActionEvent):
        try:
            self.rolling.request_async_lock("restart", kwargs={"n": 1}, max_retry=1)
        except RollingOpsError as error:  # e.g. this unit's bag has an unknown version
            event.fail(str(error))

    def _restart(self, **_):
        return OperationResult.RELEASE

    def _on_collect_status(self, event: ops.CollectStatusEvent):
        malformed = self.rolling.state.malformed
        if malformed:
            event.add_status(ops.BlockedStatus(f"malformed: {malformed[0]}"[:120]))
        event.add_status(ops.ActiveStatus())


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch):
    """No Juju machine here: neither wake-ups nor the etcd worker are spawned."""
    monkeypatch.setattr(_dispatch, "juju_exec_path", lambda: "/usr/bin/juju-exec")
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: None)


def _op(id_: int) -> dict:
    return {"id": id_, "callback_id": "restart", "kwargs": {}, "max_retry": 1, "attempt": 0}


def _unit_bag(*ids: int, done: dict | None = None) -> dict[str, str]:
    bag = {
        "rollingops-version": "1",
        "rollingops-queue": json.dumps([_op(i) for i in ids]),
        "rollingops-seq": str(max([0, *ids])),
        "rollingops-intent": "request" if ids else "idle",
        "rollingops-backend": "peer",
    }
    if done is not None:
        bag["rollingops-done"] = json.dumps(done)
    return bag


def _state(where: str, key: str, value: str, leader: bool, etcd: bool) -> testing.State:
    """A busy rollout: unit 1 holds grant 5 (done with it), unit 2 and this unit wait."""
    app = {
        "rollingops-version": "1",
        "rollingops-token": "5",
        "rollingops-grant": json.dumps({"unit": f"{APP}/1", "token": 5, "op": 3}),
        "rollingops-order": json.dumps([f"{APP}/2", f"{APP}/0"]),
        "rollingops-mode": "peer",
    }
    mine = _unit_bag(1)
    peers = {
        1: _unit_bag(4, done={"token": 5, "op": 3, "result": "release"}),
        2: _unit_bag(2),
    }
    bag = {"app": app, "own": mine, "peer": peers[1]}[where]
    bag[key] = value
    relation = testing.PeerRelation(
        "restart", local_app_data=app, local_unit_data=mine, peers_data=peers
    )
    relations: set[testing.RelationBase] = {relation}
    if etcd:  # a provider that is not usable yet (bad CA, no etcd on port 9)
        provider = {"endpoints": "127.0.0.1:9", "tls-ca": "not a PEM", "version": "v1"}
        relations.add(testing.Relation("etcd", remote_app_data=provider))
    return testing.State(leader=leader, relations=relations, planned_units=3)


def _event(context: testing.Context, name: str, relation: typing.Any):
    return {
        "relation-changed": lambda: context.on.relation_changed(relation, remote_unit=1),
        "relation-departed": lambda: context.on.relation_departed(
            relation, remote_unit=2, departing_unit=2
        ),
        "update-status": context.on.update_status,
        "leader-elected": context.on.leader_elected,
        "request": lambda: context.on.action("request"),
    }[name]()


def _run(
    where: str, key: str, value: str, leader: bool, event: str, etcd: bool = False
) -> testing.State:
    context = testing.Context(FuzzCharm, meta=META, actions=ACTIONS, app_name=APP, unit_id=0)
    state = _state(where, key, value, leader, etcd)
    relation = state.get_relations("restart")[0]
    with tempfile.TemporaryDirectory() as base_dir:  # no example sees another one's files
        BASE_DIR[0] = base_dir
        if event == "lock-granted":
            with context(context.on.update_status(), state) as manager:
                manager.charm.on.rollingops_lock_granted.emit()
                return manager.run()
        try:
            return context.run(_event(context, event, relation), state)
        except testing.ActionFailed as failure:  # a clean failure, not a crash
            return typing.cast("testing.State", failure.state)


EVENTS = ["relation-changed", "relation-departed", "update-status", "leader-elected", "request"]
EVENTS.append("lock-granted")
PLACES = st.one_of(
    st.tuples(st.sampled_from(["peer", "own"]), st.sampled_from(UNIT_KEYS)),
    st.tuples(st.just("app"), st.sampled_from(APP_KEYS)),
)


@FUZZ_SETTINGS
@given(
    place=PLACES,
    value=hostile_values | st.sampled_from(WORDS),
    leader=st.booleans(),
    event=st.sampled_from(EVENTS),
    etcd=st.booleans(),
)
def test_no_hook_raises_on_any_peer_value(place, value, leader, event, etcd):
    where, key = place
    _run(where, key, value, leader, event, etcd)  # raises UncaughtCharmError if a hook raised


@FUZZ_SETTINGS
@given(place=PLACES, value=malformed_values, leader=st.booleans(), event=st.sampled_from(EVENTS))
def test_malformed_values_are_reported_and_ignored(place, value, leader, event):
    where, key = place
    out = _run(where, key, value, leader, event)
    if key in UNREPORTED or (where == "peer" and not leader):  # non-leaders read no other bag
        return
    relation = out.get_relations("restart")[0]
    bag = {"app": relation.local_app_data, "own": relation.local_unit_data}.get(where, {})
    if where != "peer" and bag.get(key) != value:
        return  # this unit rewrote the bad value with a good one in this hook: nothing to show
    assert isinstance(out.unit_status, ops.BlockedStatus), (key, value[:40], out.unit_status)
    assert out.unit_status.message.startswith("malformed: ")


# --- regressions: each of these raised before the bounded parsers ------------------------------


@pytest.mark.parametrize(
    "where, key, value, leader",
    [
        ("peer", "rollingops-queue", "[" * 100_000 + "]" * 100_000, True),  # RecursionError
        ("peer", "rollingops-done", "[" * 100_000, True),  # RecursionError
        ("app", "rollingops-grant", '{"a":' * 50_000, False),  # RecursionError
        ("app", "rollingops-order", "[" * 100_000, False),  # RecursionError
        ("peer", "rollingops-seq", "9" * 309, True),  # OverflowError in math.isfinite
        ("app", "rollingops-token", "9" * 309, True),  # OverflowError in math.isfinite
        ("app", "rollingops-token", "9" * 5000, False),  # int() refuses > 4300 digits
    ],
)
def test_regression_peer_value_crashed_the_hook(where, key, value, leader):
    out = _run(where, key, value, leader=leader, event="relation-changed")
    assert isinstance(out.unit_status, ops.BlockedStatus)
    assert key in out.unit_status.message


def test_regression_bounded_parsers():
    with pytest.raises(_models.RollingOpsDecodingError):
        _models.parse_int("9" * 309)
    with pytest.raises(_models.RollingOpsDecodingError):
        _models.parse_int("9" * 5000)
    with pytest.raises(_models.RollingOpsDecodingError, match="above"):
        _models.parse_int(str(1 << 63))
    assert _models.parse_int(str((1 << 63) - 1)) == (1 << 63) - 1
    with pytest.raises(ValueError, match="deeper"):
        _models.load_json("[" * 33 + "]" * 33)
    assert _models.load_json("[" * 32 + "]" * 32) is not None
    brackets_in_strings = ["[" * 40, {"x": "{" * 40}]
    assert _models.load_json(json.dumps(brackets_in_strings)) == brackets_in_strings
    with pytest.raises(ValueError, match="not allowed"):
        _models.load_json('{"a": NaN}')
    with pytest.raises(_models.RollingOpsDecodingError, match="integer in"):
        _models.Grant.decode(json.dumps({"unit": "a/1", "token": 1 << 64}))
    assert len(_models.parse_queue("9" * 5000)[1][0]) < 200  # messages never echo the value


def test_kwargs_every_reader_would_refuse_are_refused_at_request_time():
    with pytest.raises(ValueError, match="too big"):
        _models.validate_request({"a": json.loads("[" * 40 + "]" * 40)}, 0)


def test_another_wire_version_is_not_malformed_but_garbage_is():
    newer = _run("peer", "rollingops-version", "2", leader=True, event="update-status")
    assert not isinstance(newer.unit_status, ops.BlockedStatus)  # logged; the unit is skipped
    garbage = _run("peer", "rollingops-version", "v2!", leader=True, event="update-status")
    assert isinstance(garbage.unit_status, ops.BlockedStatus)
    assert "bad rollingops-version 'v2!'" in garbage.unit_status.message
