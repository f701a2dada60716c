"""charmlibs.rollingops, peer backend: ops.testing runs of a small test charm.

Mocked, because it cannot exist here: the Juju controller (ops.testing stands in) and the
`juju-exec` wake-up process (subprocess.Popen is replaced by a recorder). Everything else is the
real library. Multi-unit flows are written out hook by hook: each run's output bags are fed to
the next run as a real Juju would route them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import subprocess
from typing import Any

import ops
import pytest
from charmlibs import rollingops
from charmlibs.rollingops import (
    OperationResult,
    ProcessingBackend,
    RollingOpsInvalidLockRequestError,
    RollingOpsManager,
    RollingOpsNoRelationError,
    RollingOpsStatus,
    RollingOpsSyncLockError,
    SyncLockBackend,
    _dispatch,
    _models,
)
from ops import testing

# Juju's planned unit count (goal-state): at least the units a test shows, so no unit looks
# like it is being removed (a holder waits while one is: RollingOpsManager._unit_leaving).
PLANNED = 9

APP = "app"
META = {
    "name": APP,
    "peers": {"restart": {"interface": "rollingops"}},
    "requires": {"etcd": {"interface": "etcd_client", "limit": 1, "optional": True}},
}
ACTIONS = {
    "request": {
        "params": {
            "callback": {"type": "string"},
            "kwargs": {"type": "string"},
            "max-retry": {"type": "integer"},
        }
    },
    "sync": {},
}


@dataclasses.dataclass
class Behaviour:
    """What the test charm's callbacks do; each call is recorded with its grant."""

    results: list[Any] = dataclasses.field(default_factory=list)  # popped per call
    calls: list[dict] = dataclasses.field(default_factory=list)
    rerequest: bool = False


BEHAVIOUR = Behaviour()


class FakeLock(SyncLockBackend):
    def __init__(self):
        self.events: list[str] = []

    def acquire(self, timeout):
        self.events.append(f"acquire {timeout}")

    def release(self):
        self.events.append("release")


SYNC_LOCK = FakeLock()


class RollingCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.rolling = RollingOpsManager(
            self,
            callback_targets={"restart": self._restart, "other": self._restart},
            peer_relation_name="restart",
            sync_lock_targets={"local": SYNC_LOCK},
            base_dir=BASE_DIR[0],
        )
        framework.observe(self.on.request_action, self._on_request)
        framework.observe(self.on.sync_action, self._on_sync)

    def _on_request(self, event: ops.ActionEvent):
        kwargs = json.loads(event.params.get("kwargs", "{}"))
        try:
            self.rolling.request_async_lock(
                event.params.get("callback", "restart"),
                kwargs=kwargs,
                max_retry=event.params.get("max-retry", 0),
            )
        except rollingops.RollingOpsError as error:
            event.fail(str(error))

    def _on_sync(self, event: ops.ActionEvent):
        with self.rolling.acquire_sync_lock("local", timeout=5) as grant:
            event.set_results({"grant": str(grant)})

    def _restart(self, **kwargs):
        grant = self.rolling.lock_grant
        BEHAVIOUR.calls.append({"unit": self.unit.name, "kwargs": kwargs, "grant": grant})
        if BEHAVIOUR.rerequest:
            BEHAVIOUR.rerequest = False
            self.rolling.request_async_lock("restart", kwargs=kwargs, max_retry=0)
        result = BEHAVIOUR.results.pop(0) if BEHAVIOUR.results else None
        if isinstance(result, Exception):
            raise result
        return result


BASE_DIR: list[str] = ["/nonexistent"]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    global BEHAVIOUR, SYNC_LOCK
    BEHAVIOUR = Behaviour()
    SYNC_LOCK = FakeLock()
    BASE_DIR[0] = str(tmp_path)


@pytest.fixture
def spawns(monkeypatch):
    """Record juju-exec wake-ups instead of starting processes (no Juju machine here)."""
    calls: list[list[str]] = []
    real_popen = subprocess.Popen

    def fake_popen(argv, **kwargs):
        if argv[0] != "/usr/bin/juju-exec":  # e.g. goal-state: the real thing
            return real_popen(argv, **kwargs)
        calls.append(list(argv))
        assert kwargs.get("start_new_session") is True
        assert "JUJU_CONTEXT_ID" not in kwargs.get("env", {})
        return None

    monkeypatch.setattr(_dispatch, "juju_exec_path", lambda: "/usr/bin/juju-exec")
    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    return calls


def ctx(unit_id: int = 0) -> testing.Context:
    return testing.Context(RollingCharm, meta=META, actions=ACTIONS, unit_id=unit_id, app_name=APP)


def op(id_: int, kwargs=None, attempt=0, max_retry=0, callback="restart") -> dict:
    return {
        "id": id_,
        "callback_id": callback,
        "kwargs": kwargs or {},
        "max_retry": max_retry,
        "attempt": attempt,
        "requested_at": "2026-01-01T00:00:00.000000Z",
    }


def unit_bag(*ops_, done=None, backend="peer", seq=None) -> dict[str, str]:
    bag = {
        "rollingops-version": "1",
        "rollingops-queue": json.dumps(list(ops_)),
        "rollingops-seq": str(seq if seq is not None else max([0, *(o["id"] for o in ops_)])),
        "rollingops-intent": "request" if ops_ else "idle",
        "rollingops-backend": backend,
    }
    if done is not None:
        bag["rollingops-done"] = json.dumps(done)
    return bag


def app_bag(token=0, grant=None, order=None) -> dict[str, str]:
    bag = {"rollingops-version": "1", "rollingops-token": str(token), "rollingops-mode": "peer"}
    if grant is not None:
        bag["rollingops-grant"] = json.dumps(grant)
    if order is not None:
        bag["rollingops-order"] = json.dumps(order)
    return bag


def peer(local_unit=None, app=None, peers=None) -> testing.PeerRelation:
    return testing.PeerRelation(
        "restart",
        local_unit_data=local_unit or {},
        local_app_data=app or {},
        peers_data=peers or {},
    )


def bags(out: testing.State, rel: testing.PeerRelation) -> tuple[dict, dict]:
    r = out.get_relation(rel.id)
    return dict(r.local_app_data), dict(r.local_unit_data)


def queue_of(bag: dict) -> list[dict]:
    return json.loads(bag.get("rollingops-queue", "[]"))


def request(context, state, callback="restart", kwargs=None, max_retry=0):
    params = {"callback": callback, "kwargs": json.dumps(kwargs or {}), "max-retry": max_retry}
    return context.run(context.on.action("request", params=params), state)


def lock_granted(context, state):
    """The juju-exec wake-up: a rollingops_lock_granted dispatch (manager form)."""
    with context(context.on.update_status(), state) as mgr:
        mgr.charm.on.rollingops_lock_granted.emit()
        return mgr.run()


def with_relation(state: testing.State, rel: testing.PeerRelation, out: testing.State):
    """Carry a run's output bags and stored state into the next run's input."""
    r = out.get_relation(rel.id)
    new_rel = dataclasses.replace(
        rel, local_app_data=dict(r.local_app_data), local_unit_data=dict(r.local_unit_data)
    )
    return dataclasses.replace(out, relations={new_rel}), new_rel


# --- bad input (action params, relation data) ---------------------------------------------------


def test_unknown_callback_id_fails_the_action_clearly():
    context = ctx()
    state = testing.State(planned_units=PLANNED, leader=True, relations={peer()})
    with pytest.raises(testing.ActionFailed, match="Unknown callback_id: nope"):
        request(context, state, callback="nope")


@pytest.mark.parametrize(
    "kwargs, max_retry",
    [({"x": object()}, 0), ({"a": 1}, -1), ([1, 2], 0), ({"a": 1}, True), ({"a": (1, 2)}, 0)],
)
def test_invalid_requests_raise_with_the_1_1_5_message(kwargs, max_retry):
    context = ctx()
    rel = peer()
    with context(
        context.on.update_status(), testing.State(planned_units=PLANNED, relations={rel})
    ) as mgr:
        with pytest.raises(RollingOpsInvalidLockRequestError) as info:
            mgr.charm.rolling.request_async_lock("restart", kwargs, max_retry)
        assert str(info.value).startswith("Failed to create the lock request: ")
        out = mgr.run()
    assert queue_of(bags(out, rel)[1]) == []  # nothing queued, nothing lost


def test_no_peer_relation_raises_and_cluster_id_needs_etcd_relation():
    context = ctx()
    with context(
        context.on.update_status(),
        testing.State(
            planned_units=PLANNED,
        ),
    ) as mgr:
        with pytest.raises(RollingOpsNoRelationError):
            mgr.charm.rolling.request_async_lock("restart", {})
        with pytest.raises(ValueError, match="cluster_id"):
            RollingOpsManager(
                mgr.charm, callback_targets={}, peer_relation_name="restart", cluster_id="c"
            )


def test_max_retry_none_is_accepted_with_a_warning(caplog, spawns):
    context = ctx(1)
    rel = peer()
    with context(
        context.on.update_status(), testing.State(planned_units=PLANNED, relations={rel})
    ) as mgr:
        with caplog.at_level(logging.WARNING):
            mgr.charm.rolling.request_async_lock("restart", {"a": 1}, None)
        out = mgr.run()
    assert "retried without limit" in caplog.text
    assert queue_of(bags(out, rel)[1])[0]["max_retry"] is None


def test_malformed_queue_entry_is_skipped_and_the_rest_served(caplog, spawns):
    """A bad entry in a peer's queue is logged and skipped; its good entries still count."""
    context = ctx(0)
    bad_queue = json.dumps([{"id": "x"}, op(2, {"a": 1}), "garbage"])
    peer_bag = {**unit_bag(), "rollingops-queue": bad_queue, "rollingops-intent": "request"}
    rel = peer(app=app_bag(), peers={1: peer_bag})
    with caplog.at_level(logging.ERROR):
        out = context.run(
            context.on.relation_changed(rel, remote_unit=1),
            testing.State(planned_units=PLANNED, leader=True, relations={rel}),
        )
    app, _ = bags(out, rel)
    assert json.loads(app["rollingops-grant"]) == {"unit": "app/1", "token": 1, "op": 2}
    assert "skipped queue entry" in caplog.text


@pytest.mark.parametrize(
    "unreadable",
    [
        {"rollingops-version": "2", "rollingops-backend": "etcd"},
        {"rollingops-version": "x", "rollingops-backend": "etcd"},
    ],
)
def test_a_unit_whose_data_cannot_be_read_blocks_peer_grants(spawns, unreadable):
    """It may be a newer unit on etcd holding the etcd lock: no peer grant while it is there."""
    context = ctx(0)
    rel = peer(app=app_bag(), peers={1: unit_bag(op(2)), 2: unreadable})
    out = context.run(
        context.on.relation_changed(rel, remote_unit=1),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    app, _ = bags(out, rel)
    assert "rollingops-grant" not in app


def test_unknown_wire_version_is_not_ready_and_never_overwritten():
    context = ctx(0)
    future = {"rollingops-version": "9", "rollingops-queue": "whatever"}
    rel = peer(local_unit=future, app={"rollingops-version": "9", "rollingops-token": "9"})
    state = testing.State(planned_units=PLANNED, leader=True, relations={rel})
    with context(context.on.update_status(), state) as mgr:
        assert mgr.charm.rolling.state.status is RollingOpsStatus.NOT_READY
        out = mgr.run()
    app, unit = bags(out, rel)
    assert unit == future and app == {"rollingops-version": "9", "rollingops-token": "9"}


# --- quiet: an idle unit reads nothing --------------------------------------------------------


def test_a_quiet_unit_skips_update_status_and_a_relation_changed_wakes_it():
    """update-status is no poll: another unit's request arrives as a relation-changed."""
    context = ctx(0)
    rel = peer()
    out = context.run(
        context.on.update_status(),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    with context(context.on.update_status(), out) as mgr:
        assert mgr.charm.rolling.quiet
        assert mgr.charm.rolling.state.status is RollingOpsStatus.IDLE
        out = mgr.run()
    request = {"rollingops-version": "1", "rollingops-queue": json.dumps([op(1)])}
    settled = out.get_relation(rel.id)
    assert isinstance(settled, testing.PeerRelation)
    rel = dataclasses.replace(settled, peers_data={1: request})
    state = dataclasses.replace(out, relations={rel})
    quiet = context.run(context.on.update_status(), state)  # not polled: nothing granted
    assert "rollingops-grant" not in bags(quiet, rel)[0]
    out = context.run(context.on.relation_changed(rel, remote_unit=1), state)
    assert json.loads(bags(out, rel)[0]["rollingops-grant"])["unit"] == "app/1"
    with context(context.on.update_status(), out) as mgr:
        assert not mgr.charm.rolling.quiet  # a grant is out: update-status reconciles again


def test_a_quiet_unit_whose_data_becomes_unreadable_is_no_longer_quiet():
    context = ctx(1)
    rel = peer(peers={0: {}})
    out = context.run(
        context.on.relation_changed(rel, remote_unit=0),
        testing.State(planned_units=PLANNED, relations={rel}),
    )
    rel = dataclasses.replace(out.get_relation(rel.id), local_app_data={"rollingops-version": "9"})
    out = context.run(
        context.on.relation_changed(rel, remote_unit=0), dataclasses.replace(out, relations={rel})
    )
    with context(context.on.update_status(), out) as mgr:
        assert not mgr.charm.rolling.quiet
        assert mgr.charm.rolling.state.status is RollingOpsStatus.NOT_READY


# --- queue and dedup ------------------------------------------------------------------------


def _queue_after(requests: list[dict]) -> list[dict]:
    context = ctx(1)
    rel = peer()
    with context(
        context.on.update_status(), testing.State(planned_units=PLANNED, relations={rel})
    ) as mgr:
        for kwargs in requests:
            mgr.charm.rolling.request_async_lock("restart", kwargs, 0)
        out = mgr.run()
    return queue_of(bags(out, rel)[1])


def test_request_equal_to_the_last_op_is_dropped():
    assert [o["kwargs"] for o in _queue_after([{"a": 1}, {"a": 1}])] == [{"a": 1}]


def test_dedup_only_against_the_last_op():
    queue = _queue_after([{"a": 1}, {"a": 2}, {"a": 1}])
    assert [o["kwargs"] for o in queue] == [{"a": 1}, {"a": 2}, {"a": 1}]
    assert [o["id"] for o in queue] == [1, 2, 3]


def test_is_waiting_reads_each_units_queue():
    context = ctx(0)
    rel = peer(local_unit=unit_bag(op(1)), peers={1: unit_bag(op(4, callback="other")), 2: {}})
    with context(
        context.on.update_status(), testing.State(planned_units=PLANNED, relations={rel})
    ) as mgr:
        rolling = mgr.charm.rolling
        assert rolling.is_waiting() and rolling.is_waiting("app/1")
        assert not rolling.is_waiting("app/2")
        assert rolling.is_waiting_callback("other", "app/1")
        assert not rolling.is_waiting_callback("other")
        with pytest.raises(ValueError, match="app/7"):
            rolling.is_waiting("app/7")


# --- the leader never runs its own grant in the granting dispatch -------------------------------


def test_leader_self_grant_spawns_wakeup_then_runs_in_the_next_dispatch(spawns, tmp_path):
    context = ctx(0)
    rel = peer()
    state = testing.State(planned_units=PLANNED, leader=True, relations={rel})
    out = request(context, state, kwargs={"a": 1})
    app, unit = bags(out, rel)
    assert json.loads(app["rollingops-grant"]) == {"unit": "app/0", "token": 1, "op": 1}
    assert BEHAVIOUR.calls == []  # not in the dispatch that granted it
    assert spawns == [
        [
            "/usr/bin/juju-exec",
            "-u",
            "app/0",
            f"JUJU_DISPATCH_PATH=hooks/rollingops_lock_granted {context.charm_root}/dispatch",
        ]
    ] or spawns[0][3].startswith("JUJU_DISPATCH_PATH=hooks/rollingops_lock_granted ")

    state, rel = with_relation(state, rel, out)
    out = lock_granted(context, state)
    assert [c["kwargs"] for c in BEHAVIOUR.calls] == [{"a": 1}]
    app, unit = bags(out, rel)
    assert json.loads(unit["rollingops-done"]) == {"token": 1, "op": 1, "result": "release"}
    assert "rollingops-grant" not in app  # released in the same hook by the leader
    assert queue_of(unit) == []


def test_self_grant_several_reconciles_in_the_granting_dispatch_still_do_not_run_it(spawns):
    context = ctx(0)
    rel = peer()
    with context(
        context.on.update_status(),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    ) as mgr:
        mgr.charm.rolling.request_async_lock("restart", {"a": 1}, 0)  # grants app/0
        mgr.charm.rolling.request_async_lock("restart", {"a": 2}, 0)  # reconciles again
        out = mgr.run()  # update-status reconciles a third time
    assert BEHAVIOUR.calls == []
    assert len(spawns) == 1
    assert len(queue_of(bags(out, rel)[1])) == 2


# --- non-leader execution, release, FIFO ----------------------------------------------------


def test_non_leader_runs_in_the_relation_changed_that_shows_its_grant():
    context = ctx(1)
    rel = peer(
        local_unit=unit_bag(op(1, {"d": 3})),
        app=app_bag(5, {"unit": "app/1", "token": 5, "op": 1}),
        peers={0: {}},
    )
    out = context.run(
        context.on.relation_changed(rel, remote_unit=0),
        testing.State(planned_units=PLANNED, relations={rel}),
    )
    assert len(BEHAVIOUR.calls) == 1
    call = BEHAVIOUR.calls[0]
    assert call["kwargs"] == {"d": 3}
    assert call["grant"] == rollingops.LockGrant(
        ProcessingBackend.PEER, 5, "app/1#1", "restart", 1
    )
    _, unit = bags(out, rel)
    assert json.loads(unit["rollingops-done"]) == {"token": 5, "op": 1, "result": "release"}
    assert unit["rollingops-intent"] == "idle"
    # A second relation-changed showing the same (already acknowledged) grant runs nothing.
    state, rel = with_relation(testing.State(planned_units=PLANNED, relations={rel}), rel, out)
    context.run(context.on.relation_changed(rel, remote_unit=0), state)
    assert len(BEHAVIOUR.calls) == 1


def test_leader_releases_on_done_token_and_grants_fifo_of_first_sighting():
    """Unit 2 was sighted first (in an earlier hook); unit 1 sorts first in peers_data."""
    context = ctx(0)
    holder = unit_bag(done={"token": 3, "op": 1, "result": "release"}, seq=1)
    rel = peer(
        app=app_bag(3, {"unit": "app/3", "token": 3, "op": 1}, order=["app/2"]),
        peers={1: unit_bag(op(1)), 2: unit_bag(op(1)), 3: holder},
    )
    out = context.run(
        context.on.relation_changed(rel, remote_unit=3),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    app, _ = bags(out, rel)
    assert json.loads(app["rollingops-grant"]) == {"unit": "app/2", "token": 4, "op": 1}
    assert json.loads(app["rollingops-order"]) == ["app/1"]
    assert app["rollingops-token"] == "4"


def test_holder_not_done_keeps_the_grant():
    context = ctx(0)
    rel = peer(
        app=app_bag(3, {"unit": "app/1", "token": 3, "op": 1}),
        peers={
            1: unit_bag(op(1), done={"token": 2, "op": 9, "result": "release"}),
            2: unit_bag(op(1)),
        },
    )
    out = context.run(
        context.on.relation_changed(rel, remote_unit=2),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    app, _ = bags(out, rel)
    assert json.loads(app["rollingops-grant"])["unit"] == "app/1"


def test_departed_holder_is_released_in_the_departed_run():
    context = ctx(0)
    rel = peer(
        app=app_bag(3, {"unit": "app/1", "token": 3, "op": 1}),
        peers={1: unit_bag(op(1)), 2: unit_bag(op(1))},
    )
    out = context.run(
        context.on.relation_departed(rel, remote_unit=1, departing_unit=1),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    app, _ = bags(out, rel)
    assert json.loads(app["rollingops-grant"]) == {"unit": "app/2", "token": 4, "op": 1}


# Juju 4 (juju/juju#23326): a removed unit stays in relation.units and no departed comes.


def test_juju4_removed_holder_still_listed_is_released_when_goal_state_drops_it(goal_state):
    goal_state.set({"app/0": "active", "app/2": "active"})
    context = ctx(0)
    rel = peer(
        app=app_bag(3, {"unit": "app/1", "token": 3, "op": 1}),
        peers={1: unit_bag(op(1)), 2: unit_bag(op(1))},
    )
    out = context.run(
        context.on.update_status(),
        testing.State(planned_units=2, leader=True, relations={rel}),
    )
    app, _ = bags(out, rel)
    assert json.loads(app["rollingops-grant"]) == {"unit": "app/2", "token": 4, "op": 1}


def test_juju4_dying_holder_keeps_its_grant(goal_state):
    goal_state.set({"app/0": "active", "app/1": "dying", "app/2": "active"})
    context = ctx(0)
    rel = peer(
        app=app_bag(3, {"unit": "app/1", "token": 3, "op": 1}),
        peers={1: unit_bag(op(1)), 2: unit_bag(op(1))},
    )
    out = context.run(
        context.on.update_status(),
        testing.State(planned_units=2, leader=True, relations={rel}),
    )
    app, _ = bags(out, rel)
    assert json.loads(app["rollingops-grant"])["unit"] == "app/1"


def test_juju4_a_removed_unit_still_listed_does_not_pause_the_holder(goal_state):
    # planned units (2) stay below the units listed (3) for good on Juju 4.
    goal_state.set({"app/0": "active", "app/1": "active"})
    context = ctx(1)
    rel = peer(
        local_unit=unit_bag(op(1)),
        app=app_bag(5, {"unit": "app/1", "token": 5, "op": 1}),
        peers={0: {}, 2: unit_bag()},
    )
    context.run(
        context.on.relation_changed(rel, remote_unit=0),
        testing.State(planned_units=2, relations={rel}),
    )
    assert len(BEHAVIOUR.calls) == 1


def test_juju4_an_idle_leader_does_not_read_goal_state(goal_state):
    context = ctx(0)
    rel = peer(app=app_bag(3), peers={1: unit_bag(), 2: unit_bag()})
    context.run(
        context.on.update_status(),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    assert goal_state.calls == 0


def test_stale_grant_is_released_on_leader_elected():
    """The old leader granted app/5, which has since left; the new leader cleans up."""
    context = ctx(0)
    rel = peer(app=app_bag(8, {"unit": "app/5", "token": 8, "op": 2}), peers={1: unit_bag(op(3))})
    out = context.run(
        context.on.leader_elected(),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    app, _ = bags(out, rel)
    assert json.loads(app["rollingops-grant"]) == {"unit": "app/1", "token": 9, "op": 3}


def test_no_grant_while_a_unit_runs_the_etcd_backend():
    """Cross-backend barrier: a unit still on etcd blocks every peer grant.

    See the package docstring of charmlibs.rollingops, 'Why it holds' (at most one holder).
    """
    context = ctx(0)
    rel = peer(app=app_bag(1), peers={1: unit_bag(op(1)), 2: unit_bag(backend="etcd")})
    out = context.run(
        context.on.relation_changed(rel, remote_unit=1),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    app, _ = bags(out, rel)
    assert "rollingops-grant" not in app


def test_juju4_a_removed_unit_whose_last_word_was_etcd_no_longer_blocks_grants(goal_state, spawns):
    goal_state.set({"app/0": "active", "app/1": "active"})
    context = ctx(0)
    rel = peer(
        local_unit=unit_bag(op(1)),
        app=app_bag(1),
        peers={1: unit_bag(), 2: unit_bag(backend="etcd")},
    )
    out = context.run(
        context.on.update_status(),
        testing.State(planned_units=2, leader=True, relations={rel}),
    )
    app, _ = bags(out, rel)
    assert json.loads(app["rollingops-grant"])["unit"] == "app/0"


# --- retries ---------------------------------------------------------------------------------


def _drive_leader_alone(max_retry, results, spawns, runs=10):
    context = ctx(0)
    rel = peer()
    state = testing.State(planned_units=PLANNED, leader=True, relations={rel})
    BEHAVIOUR.results = list(results)
    out = request(context, state, kwargs={"a": 1}, max_retry=max_retry)
    for _ in range(runs):
        state, rel = with_relation(state, rel, out)
        out = lock_granted(context, state)
    return bags(out, rel)


def test_max_retry_2_runs_exactly_three_times_then_drops(spawns, caplog):
    with caplog.at_level(logging.WARNING):
        app, unit = _drive_leader_alone(2, [OperationResult.RETRY_RELEASE] * 10, spawns)
    assert [c["grant"].attempt for c in BEHAVIOUR.calls] == [1, 2, 3]
    assert queue_of(unit) == []
    assert json.loads(unit["rollingops-done"])["result"] == "dropped"
    assert "max_retry=2 is used up" in caplog.text
    assert "rollingops-grant" not in app


def test_exception_counts_as_retry_release(spawns):
    _, unit = _drive_leader_alone(1, [RuntimeError("boom"), None], spawns)
    assert [c["grant"].attempt for c in BEHAVIOUR.calls] == [1, 2]
    assert queue_of(unit) == []
    assert json.loads(unit["rollingops-done"])["result"] == "release"


def test_fencing_tokens_strictly_increase_across_grants(spawns):
    _drive_leader_alone(
        4, [OperationResult.RETRY_HOLD, OperationResult.RETRY_RELEASE, None], spawns
    )
    tokens = [c["grant"].token for c in BEHAVIOUR.calls]
    assert len(tokens) == 3 and tokens == sorted(set(tokens))


def _leader_finishes_with(result):
    """Leader app/0 runs its op (returns `result`) while app/1 waits with a fresh request."""
    context = ctx(0)
    rel = peer(
        local_unit=unit_bag(op(1, max_retry=3)),
        app=app_bag(4, {"unit": "app/0", "token": 4, "op": 1}, order=["app/1"]),
        peers={1: unit_bag(op(1))},
    )
    BEHAVIOUR.results = [result]
    state = testing.State(planned_units=PLANNED, leader=True, relations={rel})
    with context(context.on.relation_changed(rel, remote_unit=1), state) as mgr:
        out = mgr.run()
    return bags(out, rel)


def test_retry_hold_keeps_the_lock_ahead_of_older_fresh_requests(spawns):
    app, unit = _leader_finishes_with(OperationResult.RETRY_HOLD)
    assert json.loads(app["rollingops-grant"]) == {"unit": "app/0", "token": 5, "op": 1}
    assert unit["rollingops-intent"] == "retry-hold"
    assert len(spawns) == 1  # the leader re-granted itself: wake-up, not an inline run


def test_retry_release_lets_the_other_waiting_unit_go_first(spawns):
    app, unit = _leader_finishes_with(OperationResult.RETRY_RELEASE)
    assert json.loads(app["rollingops-grant"]) == {"unit": "app/1", "token": 5, "op": 1}
    assert unit["rollingops-intent"] == "retry-release"
    assert queue_of(unit)[0]["attempt"] == 1


def test_retry_units_are_served_lowest_last_token_first():
    context = ctx(0)
    retry = "retry-release"
    rel = peer(
        app=app_bag(9),
        peers={
            1: unit_bag(
                op(1, attempt=1, max_retry=5), done={"token": 8, "op": 1, "result": retry}
            ),
            2: unit_bag(
                op(1, attempt=1, max_retry=5), done={"token": 6, "op": 1, "result": retry}
            ),
        },
    )
    out = context.run(
        context.on.update_status(),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    assert json.loads(bags(out, rel)[0]["rollingops-grant"])["unit"] == "app/2"


def test_unknown_callback_at_run_time_is_dropped_and_released(caplog):
    context = ctx(1)
    rel = peer(
        local_unit=unit_bag(op(1, callback="removed"), op(2)),
        app=app_bag(2, {"unit": "app/1", "token": 2, "op": 1}),
    )
    with caplog.at_level(logging.ERROR):
        out = context.run(
            context.on.update_status(), testing.State(planned_units=PLANNED, relations={rel})
        )
    _, unit = bags(out, rel)
    assert json.loads(unit["rollingops-done"]) == {
        "token": 2,
        "op": 1,
        "result": "missing-callback",
    }
    assert [o["id"] for o in queue_of(unit)] == [2]
    assert BEHAVIOUR.calls == []
    assert "unknown callback_id 'removed'" in caplog.text


def test_callback_that_re_requests_itself_gets_a_new_op():
    context = ctx(1)
    rel = peer(
        local_unit=unit_bag(op(1, {"a": 1})),
        app=app_bag(2, {"unit": "app/1", "token": 2, "op": 1}),
    )
    BEHAVIOUR.rerequest = True
    out = context.run(
        context.on.update_status(), testing.State(planned_units=PLANNED, relations={rel})
    )
    _, unit = bags(out, rel)
    assert [(o["id"], o["kwargs"]) for o in queue_of(unit)] == [(2, {"a": 1})]
    assert unit["rollingops-seq"] == "2"


# --- no clock comparison across machines --------------------------------------------------------


def test_no_clock_compare_holder_clock_an_hour_behind_still_releases(monkeypatch):
    """The holder's clock is 1 h behind the leader's: its ack (a token) still releases."""
    real = datetime.datetime

    class SkewedClock(real):
        @classmethod
        def now(cls, tz=None):
            return real.now(tz) - datetime.timedelta(hours=1)

    monkeypatch.setattr(_models.datetime, "datetime", SkewedClock)
    holder_ctx = ctx(1)
    rel1 = peer(local_unit=unit_bag(op(1)), app=app_bag(1, {"unit": "app/1", "token": 1, "op": 1}))
    out = holder_ctx.run(
        holder_ctx.on.update_status(), testing.State(planned_units=PLANNED, relations={rel1})
    )
    holder_bag = bags(out, rel1)[1]
    monkeypatch.undo()

    leader_ctx = ctx(0)
    rel0 = peer(
        app=app_bag(1, {"unit": "app/1", "token": 1, "op": 1}),
        peers={1: holder_bag, 2: unit_bag(op(1))},
    )
    out = leader_ctx.run(
        leader_ctx.on.relation_changed(rel0, remote_unit=1),
        testing.State(planned_units=PLANNED, leader=True, relations={rel0}),
    )
    assert json.loads(bags(out, rel0)[0]["rollingops-grant"])["unit"] == "app/2"


def test_no_clock_compare_scheduling_ignores_requested_at():
    """Swapping the human timestamps of two requests changes no decision."""

    def grant_with(stamp1, stamp2):
        o1, o2 = op(1), op(1)
        o1["requested_at"], o2["requested_at"] = stamp1, stamp2
        context = ctx(0)
        rel = peer(app=app_bag(), peers={1: unit_bag(o1), 2: unit_bag(o2)})
        out = context.run(
            context.on.update_status(),
            testing.State(planned_units=PLANNED, leader=True, relations={rel}),
        )
        return bags(out, rel)[0]

    early, late = "2020-01-01T00:00:00.000000Z", "2030-01-01T00:00:00.000000Z"
    assert grant_with(early, late) == grant_with(late, early)


# --- the constructor does no expensive work -----------------------------------------------------


class _Forbidden:
    """A stand-in for the hook-tool backend: any use during construction fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"hook tool {name} called in the constructor")


def _forbid(what):
    def _raise(*args, **kwargs):
        raise AssertionError(f"{what} called in the constructor")

    return _raise


class ProbeCharm(ops.CharmBase):
    """Builds its manager (etcd configured) with I/O, processes, keys and hook tools forbidden."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        real_backend = framework.model._backend
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(subprocess, "Popen", _forbid("subprocess.Popen"))
            patch.setattr(ec, "generate_private_key", _forbid("key generation"))
            patch.setattr(rsa, "generate_private_key", _forbid("key generation"))
            patch.setattr("builtins.open", _forbid("open"))
            patch.setattr("os.open", _forbid("os.open"))
            patch.setattr("pathlib.Path.mkdir", _forbid("mkdir"))
            for name in dir(real_backend):  # every hook tool, wherever it is referenced from
                if not name.startswith("_") and callable(getattr(real_backend, name)):
                    patch.setattr(real_backend, name, _forbid(f"hook tool {name}"))
            framework.model._backend = _Forbidden()  # type: ignore[assignment]
            try:
                self.rolling = RollingOpsManager(
                    self,
                    callback_targets={"restart": lambda: None},
                    peer_relation_name="restart",
                    etcd_relation_name="etcd",
                    cluster_id="cluster",
                    base_dir="/nonexistent/never-created",
                )
            finally:
                framework.model._backend = real_backend
        CONSTRUCTED.append(self.rolling)


CONSTRUCTED: list[RollingOpsManager] = []


@pytest.mark.parametrize("leader", [True, False])
def test_constructor_does_no_io_subprocess_keys_or_hook_tools(leader):
    context = testing.Context(ProbeCharm, meta=META, app_name=APP)
    state = testing.State(
        planned_units=PLANNED, leader=leader, relations={peer(), testing.Relation("etcd")}
    )
    CONSTRUCTED.clear()
    with context(context.on.install(), state) as mgr:
        assert [mgr.charm.rolling] == CONSTRUCTED


# --- state -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "local_unit, app, expected",
    [
        (unit_bag(), app_bag(), RollingOpsStatus.IDLE),
        (unit_bag(op(1)), app_bag(), RollingOpsStatus.WAITING),
        (
            unit_bag(op(1)),
            app_bag(2, {"unit": "app/1", "token": 2, "op": 1}),
            RollingOpsStatus.GRANTED,
        ),
        (
            unit_bag(op(1)),
            app_bag(2, {"unit": "app/2", "token": 2, "op": 1}),
            RollingOpsStatus.WAITING,
        ),
    ],
)
def test_state_is_pure_and_reports_the_obvious_cases(local_unit, app, expected):
    context = ctx(1)
    rel = peer(local_unit=local_unit, app=app, peers={0: {}})
    state = testing.State(planned_units=PLANNED, relations={rel})
    # Install does not reconcile: the output must equal the input although `state` is read.
    with context(context.on.install(), state) as mgr:
        observed = mgr.charm.rolling.state
        out = mgr.run()
    assert observed == rollingops.RollingOpsState(expected, ProcessingBackend.PEER)
    assert out.get_relation(rel.id) == state.get_relation(rel.id)


def test_state_not_ready_without_peer_relation():
    context = ctx(0)
    with context(
        context.on.install(),
        testing.State(
            planned_units=PLANNED,
        ),
    ) as mgr:
        assert mgr.charm.rolling.state.status is RollingOpsStatus.NOT_READY
        assert mgr.charm.rolling.lock_grant is None
        assert not mgr.charm.rolling.is_waiting()


# --- sync lock with a charm-supplied backend --------------------------------------------------


def test_sync_lock_uses_the_charm_backend_without_etcd():
    context = ctx(0)
    out = context.run(
        context.on.action("sync"), testing.State(planned_units=PLANNED, relations={peer()})
    )
    assert SYNC_LOCK.events == ["acquire 5", "release"]
    assert context.action_results == {"grant": "None"}
    assert out is not None


def test_sync_lock_releases_when_the_body_raises_and_needs_a_backend():
    context = ctx(0)
    with context(
        context.on.update_status(), testing.State(planned_units=PLANNED, relations={peer()})
    ) as mgr:
        rolling = mgr.charm.rolling
        with pytest.raises(KeyError), rolling.acquire_sync_lock("local", None):
            raise KeyError("inside")
        assert SYNC_LOCK.events == ["acquire None", "release"]
        with pytest.raises(RollingOpsSyncLockError), rolling.acquire_sync_lock("absent", 1):
            pass


def test_a_holder_waits_while_a_unit_is_being_removed_then_runs():
    """A holder does not start its operation while a unit is leaving (simulator finding).

    rollingops-peer soak, seed 128: the leader app/0 granted itself, was removed gracefully,
    the new leader released app/0's grant in relation-departed and ran
    its own restart while app/0's queued wake-up was still running app/0's restart.

    Juju's planned unit count drops as soon as a removal starts: below the units in view, no
    holder starts its operation; once its view has caught up (its departed hook) it does.
    """
    context = ctx(1)
    rel = peer(
        local_unit=unit_bag(op(1, {"d": 3})),
        app=app_bag(5, {"unit": "app/1", "token": 5, "op": 1}),
        peers={0: {}, 2: {}},
    )
    leaving = testing.State(planned_units=2, relations={rel})  # one of the 3 units is leaving
    out = context.run(context.on.relation_changed(rel, remote_unit=0), leaving)
    assert BEHAVIOUR.calls == []
    _, unit = bags(out, rel)
    assert "rollingops-done" not in unit  # the grant is kept, not refused
    # Its relation-departed for app/0: ops still lists app/0 in that hook (soak seed 115: this
    # holder, the leader, then waited for ever), yet the view has caught up: it runs now.
    departed = peer(local_unit=unit, app=dict(rel.local_app_data), peers={0: {}, 2: {}})
    out = context.run(
        context.on.relation_departed(departed, remote_unit=0, departing_unit=0),
        testing.State(planned_units=2, relations={departed}),
    )
    assert [c["grant"].token for c in BEHAVIOUR.calls] == [5]


def test_a_unit_that_saw_its_own_departure_never_runs_a_grant():
    """A unit that saw its own relation-departed never starts an operation again.

    Its view shrinks to itself, so the planned unit count no longer tells it that it is leaving.
    """
    context = ctx(1)
    rel = peer(
        local_unit=unit_bag(op(1, {})),
        app=app_bag(5, {"unit": "app/1", "token": 5, "op": 1}),
        peers={0: {}},
    )
    state = testing.State(planned_units=1, relations={rel})
    out = context.run(context.on.relation_departed(rel, remote_unit=0, departing_unit=1), state)
    alone = peer(local_unit=unit_bag(op(1, {})), app=dict(rel.local_app_data), peers={})
    state = dataclasses.replace(out, relations={alone}, planned_units=PLANNED)
    context.run(context.on.update_status(), state)
    assert BEHAVIOUR.calls == []


# --- fencing tokens: (epoch, sequence) in one integer ---------------------------------------


def test_a_version_1_app_databag_is_read_at_epoch_0_and_rewritten_as_version_2():
    """`juju refresh` from 1.2: tokens continue where the old leader left them."""
    context = ctx(0)
    rel = peer(app=app_bag(3), peers={1: unit_bag(op(1))})
    out = context.run(
        context.on.relation_changed(rel, remote_unit=1),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    app, _ = bags(out, rel)
    assert app["rollingops-version"] == "2" and app["rollingops-epoch"] == "0"
    assert json.loads(app["rollingops-grant"]) == {"unit": "app/1", "token": 4, "op": 1}


def test_the_first_peer_grant_of_an_epoch_is_above_every_earlier_token():
    """After etcd (epoch 1, revision 57), peer mode (epoch 2) starts at 2:1, then 2:2."""
    context = ctx(0)
    app = {**app_bag(_models.make_token(1, 57)), "rollingops-version": "2"}
    app["rollingops-epoch"] = "2"
    holder = unit_bag(done={"token": _models.make_token(2, 1), "op": 1, "result": "release"})
    tokens = []
    for peers in ({1: unit_bag(op(1))}, {1: holder, 2: unit_bag(op(1))}):
        rel = peer(app=app, peers=peers)
        out = context.run(
            context.on.relation_changed(rel, remote_unit=1),
            testing.State(planned_units=PLANNED, leader=True, relations={rel}),
        )
        app, _ = bags(out, rel)
        tokens.append(json.loads(app["rollingops-grant"])["token"])
    assert [rollingops.split_token(t) for t in tokens] == [(2, 1), (2, 2)]
    assert tokens[0] > _models.make_token(1, 57)


def test_tokens_pack_epoch_high_and_refuse_a_sequence_that_does_not_fit():
    assert _models.make_token(0, 7) == 7  # epoch 0: the tokens of version 1
    assert _models.make_token(1, 1) > _models.make_token(0, (1 << 40) - 1)
    assert rollingops.split_token(_models.make_token(5, 123)) == (5, 123)
    grant = rollingops.LockGrant(ProcessingBackend.PEER, _models.make_token(3, 9))
    assert (grant.epoch, grant.sequence) == (3, 9)
    with pytest.raises(ValueError):
        _models.make_token(1, 1 << 40)


@pytest.mark.parametrize("epoch", [1 << 23, (1 << 63) - 1])
def test_an_epoch_too_large_for_a_token_is_malformed_and_granting_goes_on(caplog, epoch):
    """A hand-written epoch whose tokens would not fit in 63 bits: shown, ignored, rewritten.

    It was read as it is and the next grant's token (above 2**63) made every later read of the
    databag fail: granting stopped for good.
    """
    context = ctx(0)
    app = {**app_bag(_models.make_token(2, 5)), "rollingops-version": "2"}
    app["rollingops-epoch"] = str(epoch)
    state = testing.State(
        planned_units=PLANNED, leader=True, relations={peer(app=app, peers={1: unit_bag(op(1))})}
    )
    with context(context.on.update_status(), state) as mgr:
        malformed = mgr.charm.rolling.state.malformed
        out = mgr.run()
    assert any("rollingops-epoch" in problem for problem in malformed), malformed
    assert "rollingops-epoch" in caplog.text
    (rel,) = out.relations
    assert isinstance(rel, testing.PeerRelation)
    app_out, _ = bags(out, rel)
    grant = json.loads(app_out["rollingops-grant"])
    assert grant["unit"] == "app/1"
    assert rollingops.split_token(grant["token"]) == (2, 6)  # the epoch of the last token
    assert app_out["rollingops-epoch"] == "2"
    next_state = dataclasses.replace(out, relations={rel})
    with context(context.on.update_status(), next_state) as mgr:
        assert mgr.charm.rolling.state.malformed == ()
        mgr.run()


def test_the_last_epoch_makes_the_largest_token_and_is_never_left():
    from charmlibs.rollingops._peer import AppView

    last = _models.MAX_EPOCH
    assert _models.make_token(last, (1 << 40) - 1) == _models.MAX_INT
    with pytest.raises(ValueError):
        _models.make_token(last + 1, 0)
    app = AppView(epoch=last)
    app.switch_mode(ProcessingBackend.ETCD)  # no epoch is left to switch into
    assert (app.mode, app.epoch) == (ProcessingBackend.PEER, last)
