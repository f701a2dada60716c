"""Unit tests for charms.rolling_ops.v0.rollingops: defect fixes, behaviour, interoperability.

Each test runs a small test charm through ops.testing (Scenario): one unit, one event. Other units
are played by editing the peer relation between runs. Mocked: `_dispatch_wakeup` (it would start
juju-exec, which needs a Juju machine agent) records its calls instead; the one test of the real
method intercepts `subprocess.Popen` for the same reason.

Test names say what they cover: `test_defectN_...` for the Nth defect of the original library, in
the order of the list "Different on purpose" in the module docstring of
charms.rolling_ops.v0.rollingops (1 no relation, 2 deferring callback, 3 duplicate events,
4 departure, 5 FIFO, 6 queue, 7 leader self-grant, 8 callbacks by name, 9 two managers);
`test_accept_...` for the basic request, grant, run and release cycle.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from typing import Any
from unittest.mock import MagicMock

import ops
import pytest
from charms.rolling_ops.v0 import rollingops
from charms.rolling_ops.v0.rollingops import (
    AcquireLock,
    Lock,
    LockNoRelationError,
    Locks,
    LockState,
    RollingOpsManager,
    RunWithLock,
)
from ops import testing

APP = "roll"
META = {"name": APP, "peers": {"restart": {"interface": "rolling_op"}}}
ACTIONS = {"restart": {"params": {"override": {"type": "string"}}}}
JUJU_KEYS = {"egress-subnets", "ingress-address", "private-address"}
T0 = "2025-01-01T00:00:00+00:00"
T1 = "2025-01-01T00:00:01+00:00"
T2 = "2025-01-01T00:00:02+00:00"


def key(unit: int) -> str:
    return f"<ops.model.Unit {APP}/{unit}>"


class Record:
    """What the test charm did: callbacks run (name, grant_token) and wake-ups requested."""

    calls: list[tuple[str, str | None]] = []
    wakeups: list[str] = []
    defer = False


class RollCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.manager = RollingOpsManager(self, relation="restart", callback=self._restart)
        framework.observe(self.on.restart_action, self._on_restart_action)

    def _on_restart_action(self, event: ops.ActionEvent):
        override = event.params.get("override")
        for name in override.split(",") if override else [""]:
            self.on["restart"].acquire_lock.emit(callback_override=name)

    def _record(self, name: str, event: RunWithLock):
        Record.calls.append((name, event.grant_token))
        if Record.defer:
            event.defer()

    def _restart(self, event: RunWithLock):
        self._record("_restart", event)

    def _custom_restart(self, event: RunWithLock):
        self._record("_custom_restart", event)

    def _a(self, event: RunWithLock):
        self._record("_a", event)

    def _b(self, event: RunWithLock):
        self._record("_b", event)


@pytest.fixture(autouse=True)
def record(monkeypatch: pytest.MonkeyPatch):
    Record.calls = []
    Record.wakeups = []
    Record.defer = False
    # Mocked: the real method would start juju-exec, which needs a Juju machine agent.
    monkeypatch.setattr(
        RollingOpsManager, "_dispatch_wakeup", lambda self: Record.wakeups.append(self.name)
    )
    return Record


def ctx(unit_id: int = 0, charm: type[ops.CharmBase] = RollCharm, meta=None) -> testing.Context:
    return testing.Context(
        charm, meta=meta or META, actions=ACTIONS, app_name=APP, unit_id=unit_id
    )


def peer(
    me: dict[str, str] | None = None,
    app: dict[str, str] | None = None,
    peers: dict[int, dict[str, str]] | None = None,
) -> testing.PeerRelation:
    return testing.PeerRelation(
        "restart",
        interface="rolling_op",
        local_unit_data=dict(me or {}),
        local_app_data=dict(app or {}),
        peers_data={k: dict(v) for k, v in (peers or {}).items()},
    )


def state(rel: testing.PeerRelation, leader: bool = False, **kw: Any) -> testing.State:
    return testing.State(relations={rel}, leader=leader, **kw)


def rel_of(out: testing.State) -> testing.PeerRelation:
    (rel,) = out.relations
    assert isinstance(rel, testing.PeerRelation)
    return rel


def mine(out: testing.State) -> dict[str, str]:
    """The local unit's bag without the keys Juju writes."""
    return {k: v for k, v in rel_of(out).local_unit_data.items() if k not in JUJU_KEYS}


def app(out: testing.State) -> dict[str, str]:
    return dict(rel_of(out).local_app_data)


def edit(out: testing.State, **changes: Any) -> testing.State:
    """The next input state: `out` with its peer relation's fields replaced."""
    return dataclasses.replace(out, relations={dataclasses.replace(rel_of(out), **changes)})


def process_locks(c: testing.Context, st: testing.State) -> testing.State:
    """Run the `restart_process_locks` custom event (as the juju-exec wake-up dispatches it).

    The carrier hook is config-changed, which the library does not observe, so nothing but the
    custom event acts (update-status would reconcile again and hide a lost nested emit).
    """
    with c(c.on.config_changed(), st) as mgr:
        mgr.charm.on.restart_process_locks.emit()
        return mgr.run()


def holder(out: testing.State) -> dict[str, Any]:
    return json.loads(app(out)["rolling-ops-holder"])


def granted(out: testing.State) -> list[int]:
    return sorted(int(k.split("/")[1].rstrip(">")) for k, v in app(out).items() if v == "granted")


# --------------------------------------------------------------------------------------------
# Defect 1: no relation yet
# --------------------------------------------------------------------------------------------


def test_defect1_no_relation_defers_not_indexerror():
    c = ctx()
    out = c.run(c.on.action("restart", params={"override": "_custom_restart"}), testing.State())
    assert [d.name for d in out.deferred] == ["restart_acquire_lock"]
    assert out.deferred[0].snapshot_data == {"callback_override": "_custom_restart"}


def test_defect1_lock_and_locks_raise_lock_no_relation_error():
    c = ctx()
    with c(c.on.update_status(), testing.State()) as mgr:
        with pytest.raises(LockNoRelationError):
            Lock(mgr.charm.manager)
        with pytest.raises(LockNoRelationError):
            Locks(mgr.charm.manager)
        mgr.run()


def test_defect1_deferred_request_is_recorded_once_relation_exists():
    c = ctx(unit_id=1)
    out = c.run(c.on.action("restart", params={"override": "_custom_restart"}), testing.State())
    out = c.run(c.on.update_status(), dataclasses.replace(out, relations={peer()}))
    assert out.deferred == []
    assert mine(out)["state"] == "acquire"
    assert mine(out)["callback_override"] == "_custom_restart"


# --------------------------------------------------------------------------------------------
# Request, grant, holder runs, release
# --------------------------------------------------------------------------------------------


def test_accept_request_default_callback_writes_state_only():
    c = ctx(unit_id=1)
    out = c.run(c.on.action("restart"), state(peer()))
    data = mine(out)
    assert data["state"] == "acquire"
    assert "callback_override" not in data
    assert {k for k in data if not k.startswith("rolling-ops-")} == {"state"}
    assert out.unit_status == testing.WaitingStatus("Awaiting restart operation")
    assert app(out) == {}
    assert Record.calls == []


def test_accept_request_with_override_records_it():
    c = ctx(unit_id=1)
    out = c.run(c.on.action("restart", params={"override": "_custom_restart"}), state(peer()))
    assert mine(out)["state"] == "acquire"
    assert mine(out)["callback_override"] == "_custom_restart"
    assert out.unit_status == testing.WaitingStatus("Awaiting restart operation")


def test_accept_grant_to_pending_peer():
    c = ctx()
    rel = peer(app={"rolling-ops-token": "4"}, peers={1: {"state": "acquire"}})
    out = c.run(c.on.relation_changed(rel, remote_unit=1), state(rel, leader=True))
    assert app(out)[key(1)] == "granted"
    assert app(out)["rolling-ops-token"] == "5"
    assert holder(out) == {"unit": f"{APP}/1", "token": 5}
    assert out.app_status == testing.MaintenanceStatus("Beginning rolling restart")
    assert Record.calls == []
    assert Record.wakeups == []


def test_accept_holder_runs_callback_once_then_releases():
    c = ctx(unit_id=1)
    rel = peer(
        me={"state": "acquire", "callback_override": "_custom_restart"},
        app={key(1): "granted", "rolling-ops-holder": f'{{"unit": "{APP}/1", "token": 3}}'},
        peers={0: {}},
    )
    out = c.run(c.on.relation_changed(rel, remote_unit=0), state(rel))
    assert Record.calls == [("_custom_restart", "3")]
    assert mine(out)["state"] == "release"
    assert "callback_override" not in mine(out)
    assert out.unit_status == testing.ActiveStatus()


def test_accept_release_clears_and_grants_next_in_same_run():
    c = ctx()
    rel = peer(
        app={key(1): "granted", "rolling-ops-token": "7"},
        peers={1: {"state": "release"}, 2: {"state": "acquire"}},
    )
    out = c.run(c.on.relation_changed(rel, remote_unit=1), state(rel, leader=True))
    assert app(out)[key(1)] == "idle"
    assert app(out)[key(2)] == "granted"
    assert holder(out) == {"unit": f"{APP}/2", "token": 8}


def test_accept_app_status_back_to_active_when_nothing_left():
    c = ctx()
    rel = peer(app={key(1): "granted"}, peers={1: {"state": "release"}})
    st = state(rel, leader=True, app_status=testing.MaintenanceStatus("Beginning rolling restart"))
    out = c.run(c.on.relation_changed(rel, remote_unit=1), st)
    assert app(out)[key(1)] == "idle"
    assert out.app_status == testing.ActiveStatus()


def test_new_leader_restores_a_stale_app_status_when_nothing_pending():
    # Nothing to forget or clear, nothing pending or held: the stale "Beginning" still goes.
    c = ctx()
    rel = peer(app={key(0): "idle", key(1): "idle"}, peers={1: {}})
    st = state(rel, leader=True, app_status=testing.MaintenanceStatus("Beginning rolling restart"))
    out = c.run(c.on.leader_elected(), st)
    assert out.app_status == testing.ActiveStatus()


def test_a_stale_check_never_overwrites_the_charm_app_status():
    c = ctx()
    rel = peer(app={key(0): "idle", key(1): "idle"}, peers={1: {}})
    st = state(rel, leader=True, app_status=testing.BlockedStatus("charm says no"))
    out = c.run(c.on.leader_elected(), st)
    assert out.app_status == testing.BlockedStatus("charm says no")


@pytest.mark.parametrize(
    ("bag", "app_value", "expected"),
    [
        ({"state": "acquire"}, None, testing.WaitingStatus("Awaiting restart operation")),
        ({"state": "acquire"}, "idle", testing.WaitingStatus("Awaiting restart operation")),
        ({"state": "release"}, "idle", testing.ActiveStatus("charm's own")),
        ({}, None, testing.ActiveStatus("charm's own")),
    ],
)
def test_compat_relation_changed_shows_own_pending_request(bag, app_value, expected):
    # As the replaced library: on relation-changed a unit whose own request is pending (state
    # acquire, not granted) shows "Awaiting <name> operation"; otherwise its status is kept.
    c = ctx(unit_id=1)
    rel = peer(me=bag, app={key(1): app_value} if app_value else {}, peers={0: {}})
    st = state(rel, unit_status=testing.ActiveStatus("charm's own"))
    out = c.run(c.on.relation_changed(rel, remote_unit=0), st)
    assert out.unit_status == expected
    assert Record.calls == []


def test_app_status_set_by_charm_is_not_replaced():
    c = ctx()
    rel = peer(app={key(1): "granted"}, peers={1: {"state": "release"}})
    st = state(rel, leader=True, app_status=testing.BlockedStatus("charm says so"))
    out = c.run(c.on.relation_changed(rel, remote_unit=1), st)
    assert out.app_status == testing.BlockedStatus("charm says so")


def test_unit_status_changed_by_callback_is_kept():
    class StatusCharm(RollCharm):
        def _restart(self, event: RunWithLock):
            self.unit.status = ops.BlockedStatus("workload broke")

    c = ctx(unit_id=1, charm=StatusCharm)
    rel = peer(me={"state": "acquire"}, app={key(1): "granted"}, peers={0: {}})
    out = c.run(c.on.relation_changed(rel, remote_unit=0), state(rel))
    assert out.unit_status == testing.BlockedStatus("workload broke")
    assert mine(out)["state"] == "release"


# --------------------------------------------------------------------------------------------
# Defect 2: a deferring callback
# --------------------------------------------------------------------------------------------


def _deferred_holder_run() -> tuple[testing.Context, testing.State]:
    c = ctx(unit_id=1)
    rel = peer(
        me={"state": "acquire"},
        app={key(1): "granted", "rolling-ops-holder": f'{{"unit": "{APP}/1", "token": 3}}'},
        peers={0: {}},
    )
    Record.defer = True
    out = c.run(c.on.relation_changed(rel, remote_unit=0), state(rel))
    Record.defer = False
    return c, out


def test_defect2_deferring_callback_keeps_lock():
    _, out = _deferred_holder_run()
    assert Record.calls == [("_restart", "3")]
    assert mine(out)["state"] == "acquire"
    assert app(out)[key(1)] == "granted"
    assert [d.name for d in out.deferred] == ["restart_run_with_lock"]
    assert out.deferred[0].snapshot_data == {"grant_token": "3"}


def test_defect2_deferred_run_dropped_when_grant_removed():
    c, out = _deferred_holder_run()
    local_app = {key(1): "idle"}
    out = c.run(c.on.update_status(), edit(out, local_app_data=local_app))
    assert Record.calls == [("_restart", "3")]
    assert out.deferred == []
    assert mine(out)["state"] == "acquire"


def test_defect2_deferred_run_dropped_when_grant_token_changed():
    c, out = _deferred_holder_run()
    new_grant = {key(1): "granted", "rolling-ops-holder": f'{{"unit": "{APP}/1", "token": 9}}'}
    out = c.run(c.on.update_status(), edit(out, local_app_data=new_grant))
    # The stale run is dropped; reconcile then runs once for the new grant.
    assert Record.calls == [("_restart", "3"), ("_restart", "9")]
    assert mine(out)["state"] == "release"


def test_defect2_deferred_run_reruns_while_grant_held():
    c, out = _deferred_holder_run()
    out = c.run(c.on.update_status(), out)
    assert Record.calls == [("_restart", "3"), ("_restart", "3")]
    assert out.deferred == []
    assert mine(out)["state"] == "release"
    assert out.unit_status == testing.ActiveStatus()


def test_defect2_deferring_again_runs_callback_once_per_dispatch():
    c, out = _deferred_holder_run()
    Record.defer = True
    out = c.run(c.on.update_status(), out)
    # The deferred notice re-ran; reconcile's identical emit was skipped by ops as a duplicate.
    assert Record.calls == [("_restart", "3"), ("_restart", "3")]
    assert [d.name for d in out.deferred] == ["restart_run_with_lock"]


# --------------------------------------------------------------------------------------------
# Defect 7: the leader's own grant (the docstring's "The leader's own turn")
# --------------------------------------------------------------------------------------------


def test_defect7_leader_self_grant_runs_only_after_commit():
    c = ctx()
    out = c.run(c.on.action("restart"), state(peer(), leader=True))
    assert app(out)[key(0)] == "granted"
    assert mine(out)["state"] == "acquire"
    assert Record.wakeups == ["restart"]
    assert Record.calls == []
    assert out.app_status == testing.MaintenanceStatus("Beginning rolling restart")

    out = process_locks(c, out)
    assert Record.calls == [("_restart", "1")]
    assert app(out)[key(0)] == "idle"
    assert mine(out)["state"] == "release"
    assert out.app_status == testing.ActiveStatus()
    assert out.unit_status == testing.ActiveStatus()
    assert Record.wakeups == ["restart"]


def test_defect7_leader_own_grant_runs_on_relation_changed():
    c = ctx()
    out = c.run(c.on.action("restart"), state(peer(peers={1: {}}), leader=True))
    assert Record.calls == []
    out = c.run(c.on.relation_changed(rel_of(out), remote_unit=1), out)
    assert Record.calls == [("_restart", "1")]
    assert app(out)[key(0)] == "idle"


def test_defect7_self_grant_not_run_by_later_events_of_same_dispatch():
    c = ctx()
    with c(c.on.update_status(), state(peer(), leader=True)) as mgr:
        mgr.charm.on.restart_acquire_lock.emit()
        mgr.charm.on.restart_process_locks.emit()
        out = mgr.run()
    assert Record.calls == []
    assert app(out)[key(0)] == "granted"


def test_commit_event_resets_per_dispatch_memory():
    c = ctx()
    with c(c.on.update_status(), state(peer(), leader=True)) as mgr:
        mgr.charm.on.restart_acquire_lock.emit()
        mgr.charm.on.restart_process_locks.emit()
        assert Record.calls == []
        mgr.charm.framework.commit()  # a dispatch boundary, as Harness tests simulate it
        mgr.charm.on.restart_process_locks.emit()
        out = mgr.run()
    assert Record.calls == [("_restart", "1")]
    assert app(out)[key(0)] == "idle"


def test_leader_callback_failure_leaves_grant_for_retry():
    class FailingCharm(RollCharm):
        def _restart(self, event: RunWithLock):
            super()._restart(event)
            raise RuntimeError("workload failed")

    c = ctx(charm=FailingCharm)
    out = c.run(c.on.action("restart"), state(peer(), leader=True))
    with pytest.raises(testing.errors.UncaughtCharmError):
        process_locks(c, out)
    # Juju discards the failed hook's writes; the committed grant makes the retry run again.
    assert Record.calls == [("_restart", "1")]
    assert app(out)[key(0)] == "granted"


# --------------------------------------------------------------------------------------------
# Defect 3: duplicate events (ops skip_duplicate_events)
# --------------------------------------------------------------------------------------------


def test_defect3_leader_own_grant_cleared_in_same_process_locks_run():
    c = ctx()
    rel = peer(
        me={"state": "acquire"},
        app={
            key(0): "granted",
            "rolling-ops-token": "4",
            "rolling-ops-holder": f'{{"unit": "{APP}/0", "token": 4}}',
        },
        peers={1: {}},
    )
    st = state(rel, leader=True, app_status=testing.MaintenanceStatus("Beginning rolling restart"))
    out = process_locks(c, st)
    assert Record.calls == [("_restart", "4")]
    assert app(out)[key(0)] == "idle"
    assert out.app_status == testing.ActiveStatus()
    assert out.deferred == []


def test_defect3_leader_hands_over_to_next_unit_in_same_run():
    c = ctx()
    rel = peer(
        me={"state": "acquire"},
        app={key(0): "granted", "rolling-ops-token": "4"},
        peers={1: {"state": "acquire"}},
    )
    out = process_locks(c, state(rel, leader=True))
    assert Record.calls == [("_restart", "")]
    assert app(out)[key(0)] == "idle"
    assert app(out)[key(1)] == "granted"
    assert holder(out) == {"unit": f"{APP}/1", "token": 5}


# --------------------------------------------------------------------------------------------
# Defect 6: several requests from one unit queue
# --------------------------------------------------------------------------------------------


def test_defect6_queue_runs_each_request_under_its_own_grant_in_order():
    c = ctx()
    out = c.run(c.on.action("restart", params={"override": "_a,_b"}), state(peer(), leader=True))
    assert mine(out)["callback_override"] == "_a"
    assert json.loads(mine(out)["rolling-ops-queue"]) == ["_b"]
    assert Record.calls == []

    out = process_locks(c, out)
    assert Record.calls == [("_a", "1")]
    # _b was promoted and granted in the same run, but runs only after that grant is committed.
    assert mine(out)["callback_override"] == "_b"
    assert "rolling-ops-queue" not in mine(out)
    assert holder(out) == {"unit": f"{APP}/0", "token": 2}

    out = process_locks(c, out)
    assert Record.calls == [("_a", "1"), ("_b", "2")]
    assert app(out)[key(0)] == "idle"
    assert Record.wakeups == ["restart", "restart"]


def test_defect6_repeated_last_request_adds_nothing():
    c = ctx(unit_id=1)
    out = c.run(c.on.action("restart", params={"override": "_a,_b,_b"}), state(peer()))
    assert mine(out)["callback_override"] == "_a"
    assert json.loads(mine(out)["rolling-ops-queue"]) == ["_b"]
    out = c.run(c.on.action("restart", params={"override": "_b"}), out)
    assert json.loads(mine(out)["rolling-ops-queue"]) == ["_b"]


def test_defect6_repeat_of_pending_current_request_adds_nothing():
    c = ctx(unit_id=1)
    out = c.run(c.on.action("restart", params={"override": "_a,_a"}), state(peer()))
    assert mine(out)["callback_override"] == "_a"
    assert "rolling-ops-queue" not in mine(out)


def test_defect6_request_during_running_callback_is_queued():
    c = ctx(unit_id=1)
    rel = peer(me={"state": "acquire", "callback_override": "_a"}, app={key(1): "granted"})
    out = c.run(c.on.action("restart", params={"override": "_a"}), state(rel))
    assert json.loads(mine(out)["rolling-ops-queue"]) == ["_a"]


def test_defect6_non_leader_queue_served_across_grants():
    c = ctx(unit_id=1)
    out = c.run(c.on.action("restart", params={"override": "_a,_b"}), state(peer(peers={0: {}})))
    out = edit(out, local_app_data={key(1): "granted"})
    out = c.run(c.on.relation_changed(rel_of(out), remote_unit=0), out)
    assert Record.calls == [("_a", "")]
    # Finished, still granted: the next request waits in the queue (two-phase rule).
    assert mine(out)["state"] == "release"
    assert json.loads(mine(out)["rolling-ops-queue"]) == ["_b"]
    assert out.unit_status == testing.WaitingStatus("Awaiting restart operation")

    out = edit(out, local_app_data={key(1): "idle"})
    out = c.run(c.on.relation_changed(rel_of(out), remote_unit=0), out)
    assert mine(out)["state"] == "acquire"
    assert mine(out)["callback_override"] == "_b"
    assert "rolling-ops-queue" not in mine(out)

    out = edit(out, local_app_data={key(1): "granted"})
    out = c.run(c.on.relation_changed(rel_of(out), remote_unit=0), out)
    assert Record.calls == [("_a", ""), ("_b", "")]
    assert "callback_override" not in mine(out)


# --------------------------------------------------------------------------------------------
# Defect 5: first-come-first-served grants
# --------------------------------------------------------------------------------------------


def _leader_round(c: testing.Context, out: testing.State, unit: int, data: dict[str, str]):
    """Unit `unit` writes `data`; the leader (unit 0) handles the relation-changed."""
    peers = dict(rel_of(out).peers_data)
    peers[unit] = data
    out = edit(out, peers_data=peers)
    return c.run(c.on.relation_changed(rel_of(out), remote_unit=unit), out)


def _serve_all(c: testing.Context, out: testing.State) -> list[int]:
    """Let each granted peer finish in turn; return the order of grants."""
    grants = []
    for _ in range(10):  # bounded: a broken lock must fail the test, not loop forever
        if not granted(out):
            break
        (unit,) = granted(out)
        grants.append(unit)
        out = _leader_round(c, out, unit, {"state": "release"})
    return grants


@pytest.mark.parametrize("insertion", list(itertools.permutations([1, 2, 3, 4])))
def test_defect5_grants_follow_first_sight_for_any_peers_data_order(insertion):
    c = ctx()
    # Unit 4 holds the lock while 2, 3 and 1 ask in that order; their requested-at times
    # disagree with that order on purpose: first sight by the leader is what counts.
    times = {1: T0, 2: T2, 3: T1, 4: T0}
    peers = {u: {} for u in insertion}
    peers[4] = {"state": "acquire"}
    rel = peer(app={key(4): "granted"}, peers=peers)
    out = state(rel, leader=True)
    for unit in (2, 3, 1):
        out = _leader_round(
            c, out, unit, {"state": "acquire", "rolling-ops-requested-at": times[unit]}
        )
    assert json.loads(app(out)["rolling-ops-order"]) == [f"{APP}/2", f"{APP}/3", f"{APP}/1"]
    assert _serve_all(c, out) == [4, 2, 3, 1]


@pytest.mark.parametrize("insertion", list(itertools.permutations([1, 2, 3])))
def test_defect5_simultaneous_requests_tie_break_by_time_then_unit_number(insertion):
    c = ctx()
    times = {1: T1, 2: T2, 3: T0}
    peers = {u: {"state": "acquire", "rolling-ops-requested-at": times[u]} for u in insertion}
    out = c.run(c.on.update_status(), state(peer(peers=peers), leader=True))
    assert granted(out) == [3]
    assert json.loads(app(out)["rolling-ops-order"]) == [f"{APP}/1", f"{APP}/2"]


def test_defect5_leader_yields_once_never_twice():
    c = ctx()
    out = state(peer(peers={1: {}, 2: {}}), leader=True)
    out = c.run(c.on.action("restart"), edit(out, peers_data={1: {"state": "acquire"}, 2: {}}))
    # Simultaneous requests of the leader and unit 1: the leader goes last ...
    assert granted(out) == [1]
    assert app(out)["rolling-ops-yielded"] == f"{APP}/0"
    # ... but only once: unit 2 asking later does not overtake it again.
    out = _leader_round(c, out, 2, {"state": "acquire"})
    out = _leader_round(c, out, 1, {"state": "release"})
    assert granted(out) == [0]
    assert Record.wakeups == ["restart"]
    assert "rolling-ops-yielded" not in app(out)
    out = process_locks(c, out)
    assert Record.calls == [("_restart", "2")]
    assert granted(out) == [2]


# --------------------------------------------------------------------------------------------
# Defect 4: departed holders and leader change
# --------------------------------------------------------------------------------------------


def test_defect4_departed_holder_deleted_and_next_granted():
    c = ctx()
    rel = peer(
        app={key(1): "granted", "rolling-ops-holder": f'{{"unit": "{APP}/1", "token": 2}}'},
        peers={1: {"state": "acquire"}, 2: {"state": "acquire"}},
    )
    out = c.run(
        c.on.relation_departed(rel, remote_unit=1, departing_unit=1), state(rel, leader=True)
    )
    assert key(1) not in app(out)
    assert app(out)[key(2)] == "granted"
    assert holder(out) == {"unit": f"{APP}/2", "token": 3}


# Juju 4 (juju/juju#23326): a removed unit stays in the peer relation and no departed comes.
GRANT_TO_1 = {key(1): "granted", "rolling-ops-holder": f'{{"unit": "{APP}/1", "token": 2}}'}


def test_juju4_removed_holder_still_listed_is_freed_when_goal_state_drops_it(goal_state):
    goal_state.set({f"{APP}/0": "active", f"{APP}/2": "active"})
    c = ctx()
    rel = peer(app=GRANT_TO_1, peers={1: {"state": "acquire"}, 2: {"state": "acquire"}})
    out = c.run(c.on.update_status(), state(rel, leader=True))
    assert key(1) not in app(out)
    assert app(out)[key(2)] == "granted"
    assert holder(out) == {"unit": f"{APP}/2", "token": 3}


def test_juju4_removed_requester_still_listed_is_never_granted(goal_state):
    goal_state.set({f"{APP}/0": "active", f"{APP}/2": "active"})
    c = ctx()
    rel = peer(
        peers={1: {"state": "acquire", "rolling-ops-requested-at": T1}, 2: {"state": "acquire"}}
    )
    out = c.run(c.on.update_status(), state(rel, leader=True))
    assert granted(out) == [2]


def test_juju4_dying_holder_keeps_its_grant(goal_state):
    # It may still be inside its callback: only a unit goal-state no longer lists is gone.
    goal_state.set({f"{APP}/0": "active", f"{APP}/1": "dying", f"{APP}/2": "active"})
    c = ctx()
    rel = peer(app=GRANT_TO_1, peers={1: {"state": "acquire"}, 2: {"state": "acquire"}})
    out = c.run(c.on.update_status(), state(rel, leader=True))
    assert granted(out) == [1]


def test_juju4_goal_state_is_not_read_while_no_grant_is_out(goal_state):
    goal_state.set({f"{APP}/0": "active"})
    c = ctx()
    rel = peer(app={key(1): "idle"}, peers={1: {}, 2: {}})
    c.run(c.on.update_status(), state(rel, leader=True))
    c.run(c.on.update_status(), state(rel))
    assert goal_state.calls == 0


def test_juju4_unreadable_goal_state_frees_nothing():
    # No goal-state tool (as in plain ops.testing): the grant stays where it is.
    c = ctx()
    rel = peer(app=GRANT_TO_1, peers={1: {"state": "acquire"}, 2: {"state": "acquire"}})
    out = c.run(c.on.update_status(), state(rel, leader=True))
    assert granted(out) == [1]


def test_defect4_stale_keys_deleted_on_leader_elected():
    c = ctx()
    rel = peer(
        app={key(7): "granted", key(8): "idle", key(1): "idle", "other": "kept"},
        peers={1: {"state": "acquire"}},
    )
    out = c.run(c.on.leader_elected(), state(rel, leader=True))
    assert key(7) not in app(out)
    assert key(8) not in app(out)
    assert app(out)["other"] == "kept"
    assert app(out)[key(1)] == "granted"


def test_defect4_departing_leader_never_grants_itself():
    # Unit 3, not 0: Scenario 8.9 ignores departing_unit=0 (it tests the id for truth).
    c = ctx(unit_id=3)
    rel = peer(me={"state": "acquire"}, peers={1: {}})
    out = c.run(
        c.on.relation_departed(rel, remote_unit=1, departing_unit=3), state(rel, leader=True)
    )
    assert key(3) not in app(out)
    assert Record.wakeups == []
    assert Record.calls == []


def test_defect4_departing_holder_does_not_run_its_callback():
    c = ctx(unit_id=3)
    rel = peer(me={"state": "acquire"}, app={key(3): "granted"}, peers={1: {}})
    out = c.run(c.on.relation_departed(rel, remote_unit=1, departing_unit=3), state(rel))
    assert Record.calls == []
    assert mine(out)["state"] == "acquire"


def test_defect4_leader_releasing_in_a_departed_hook_never_grants_the_departing_unit():
    # The leader holds its own grant from an earlier dispatch and runs it in the departed hook
    # of unit 2, which still asks for the lock. ops lists unit 2 in relation.units for the
    # whole dispatch, so the hand-over after the release must still leave it out.
    c = ctx()
    rel = peer(
        me={"state": "acquire"},
        app={key(0): "granted", "rolling-ops-holder": f'{{"unit": "{APP}/0", "token": 1}}'},
        peers={1: {}, 2: {"state": "acquire"}},
    )
    out = c.run(
        c.on.relation_departed(rel, remote_unit=2, departing_unit=2), state(rel, leader=True)
    )
    assert [name for name, _ in Record.calls] == ["_restart"]
    assert mine(out)["state"] == "release"
    assert key(2) not in app(out)
    assert "rolling-ops-holder" not in app(out)


def test_defect4_new_leader_reprocesses_release_of_old_holder():
    c = ctx()
    rel = peer(app={key(2): "granted"}, peers={2: {"state": "release"}, 1: {"state": "acquire"}})
    out = c.run(c.on.leader_elected(), state(rel, leader=True))
    assert app(out)[key(2)] == "idle"
    assert app(out)[key(1)] == "granted"


# --------------------------------------------------------------------------------------------
# Defect 8: callbacks are not looked up by name
# --------------------------------------------------------------------------------------------


class ClosureCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        label = "closure"
        self.manager = RollingOpsManager(
            self, "restart", lambda event: Record.calls.append((label, event.grant_token))
        )


def test_defect8_closure_callback_runs():
    c = ctx(unit_id=1, charm=ClosureCharm)
    rel = peer(me={"state": "acquire"}, app={key(1): "granted"}, peers={0: {}})
    out = c.run(c.on.relation_changed(rel, remote_unit=0), state(rel))
    assert Record.calls == [("closure", "")]
    assert mine(out)["state"] == "release"


def test_defect8_missing_override_method_logged_and_released(caplog: pytest.LogCaptureFixture):
    c = ctx(unit_id=1)
    rel = peer(
        me={"state": "acquire", "callback_override": "_renamed_away"},
        app={key(1): "granted"},
        peers={0: {}},
    )
    with caplog.at_level(logging.ERROR):
        out = c.run(c.on.relation_changed(rel, remote_unit=0), state(rel))
    assert Record.calls == []
    assert mine(out)["state"] == "release"
    assert "callback_override" not in mine(out)
    assert "_renamed_away" in caplog.text


# --------------------------------------------------------------------------------------------
# Defect 9: two managers on one charm; hyphenated relation names
# --------------------------------------------------------------------------------------------

TWO_META = {
    "name": APP,
    "peers": {"restart": {"interface": "rolling_op"}, "rolling-op": {"interface": "rolling_op"}},
}


class TwoManagerCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.restart = RollingOpsManager(self, "restart", self._restart)
        self.rolling = RollingOpsManager(self, "rolling-op", self._rolling)

    def _restart(self, event: RunWithLock):
        Record.calls.append(("restart", event.grant_token))

    def _rolling(self, event: RunWithLock):
        Record.calls.append(("rolling-op", event.grant_token))


def test_defect9_two_managers_have_own_handles_and_callbacks():
    c = ctx(unit_id=1, charm=TwoManagerCharm, meta=TWO_META)
    restart = peer(me={"state": "acquire"}, app={key(1): "granted"}, peers={0: {}})
    rolling = testing.PeerRelation("rolling-op", local_unit_data={"state": "acquire"})
    st = testing.State(relations={restart, rolling})
    with c(c.on.relation_changed(restart, remote_unit=0), st) as mgr:
        assert mgr.charm.restart.handle.path != mgr.charm.rolling.handle.path
        assert mgr.charm.restart.handle.key == "restart"
        out = mgr.run()
    assert Record.calls == [("restart", "")]
    assert out.get_relation(restart.id).local_unit_data["state"] == "release"
    assert out.get_relation(rolling.id).local_unit_data["state"] == "acquire"


def test_hyphenated_relation_name_events_and_request():
    c = ctx(unit_id=1, charm=TwoManagerCharm, meta=TWO_META)
    rolling = testing.PeerRelation("rolling-op")
    with c(c.on.update_status(), testing.State(relations={rolling})) as mgr:
        events = mgr.charm.on.events()
        for kind in ("acquire_lock", "run_with_lock", "process_locks"):
            assert f"rolling_op_{kind}" in events
        mgr.charm.on["rolling-op"].acquire_lock.emit(callback_override="_rolling")
        out = mgr.run()
    assert out.get_relation(rolling.id).local_unit_data["state"] == "acquire"
    assert out.get_relation(rolling.id).local_unit_data["callback_override"] == "_rolling"


def test_hyphenated_relation_leader_grant_and_wakeup():
    c = ctx(charm=TwoManagerCharm, meta=TWO_META)
    rolling = testing.PeerRelation("rolling-op")
    with c(c.on.update_status(), testing.State(relations={rolling}, leader=True)) as mgr:
        mgr.charm.on["rolling-op"].acquire_lock.emit()
        out = mgr.run()
    assert out.get_relation(rolling.id).local_app_data[key(0)] == "granted"
    assert Record.wakeups == ["rolling-op"]
    with c(c.on.update_status(), out) as mgr:
        mgr.charm.on.rolling_op_process_locks.emit()
        out = mgr.run()
    assert Record.calls == [("rolling-op", "1")]


# --------------------------------------------------------------------------------------------
# Interoperability: data exactly as the original library writes it
# --------------------------------------------------------------------------------------------


def test_interop_our_unit_under_anchor_leader_runs_and_releases():
    c = ctx(unit_id=2)
    rel = peer(
        me={"state": "acquire", "callback_override": "_custom_restart"},
        app={key(0): "idle", key(1): "idle", key(2): "granted"},
        peers={0: {"state": "release"}, 1: {}},
    )
    out = c.run(c.on.relation_changed(rel, remote_unit=0), state(rel))
    assert Record.calls == [("_custom_restart", "")]
    assert mine(out)["state"] == "release"
    assert "callback_override" not in mine(out)


@pytest.mark.parametrize("insertion", list(itertools.permutations([1, 2, 3])))
def test_interop_our_leader_grants_anchor_units_in_unit_number_order(insertion):
    c = ctx()
    rel = peer(peers={u: {"state": "acquire"} for u in insertion})
    out = c.run(c.on.relation_changed(rel, remote_unit=insertion[0]), state(rel, leader=True))
    assert _serve_all(c, out) == [1, 2, 3]


def test_interop_never_write_acquire_while_key_still_granted():
    c = ctx(unit_id=1)
    rel = peer(me={"state": "release"}, app={key(1): "granted"}, peers={0: {}})
    out = c.run(c.on.action("restart", params={"override": "_b"}), state(rel))
    assert mine(out)["state"] == "release"
    assert json.loads(mine(out)["rolling-ops-queue"]) == ["_b"]
    # Other triggers while the key is still granted do not promote either.
    out = c.run(c.on.update_status(), out)
    assert mine(out)["state"] == "release"
    out = edit(out, local_app_data={key(1): "idle"})
    out = c.run(c.on.relation_changed(rel_of(out), remote_unit=0), out)
    assert mine(out)["state"] == "acquire"
    assert mine(out)["callback_override"] == "_b"


def test_interop_anchor_leftover_two_granted_grants_nothing_new():
    c = ctx()
    rel = peer(
        app={key(1): "granted", key(2): "granted"},
        peers={1: {"state": "acquire"}, 2: {"state": "release"}, 3: {"state": "acquire"}},
    )
    out = c.run(c.on.leader_elected(), state(rel, leader=True))
    assert granted(out) == [1]  # 2 released and was cleared; 3 waits behind 1
    assert "rolling-ops-holder" not in app(out)  # that grant carries no token of ours

    rel = peer(
        app={key(1): "granted", key(2): "granted"},
        peers={1: {"state": "acquire"}, 2: {"state": "acquire"}, 3: {"state": "acquire"}},
    )
    out = c.run(c.on.leader_elected(), state(rel, leader=True))
    assert granted(out) == [1, 2]


def test_interop_holder_record_trusted_only_for_the_granted_unit():
    # Our leader granted unit 1 (token 5); later an anchor leader granted unit 2 instead.
    stale = {
        key(1): "idle",
        key(2): "granted",
        "rolling-ops-token": "3",
        "rolling-ops-holder": f'{{"unit": "{APP}/1", "token": 5}}',
    }
    c = ctx()
    rel = peer(app=stale, peers={1: {}, 2: {"state": "acquire"}, 3: {"state": "acquire"}})
    out = c.run(c.on.leader_elected(), state(rel, leader=True))
    assert granted(out) == [2]
    assert "rolling-ops-holder" not in app(out)
    assert app(out)["rolling-ops-token"] == "5"  # tokens never go back

    c = ctx(unit_id=2)
    rel = peer(me={"state": "acquire"}, app=stale, peers={0: {}, 1: {}})
    c.run(c.on.relation_changed(rel, remote_unit=0), state(rel))
    assert Record.calls == [("_restart", "")]  # that grant carries no token of ours


def test_interop_wire_format_of_grant_is_byte_identical():
    c = ctx()
    rel = peer(peers={2: {"state": "acquire"}})
    out = c.run(c.on.relation_changed(rel, remote_unit=2), state(rel, leader=True))
    assert app(out) == {
        "<ops.model.Unit roll/2>": "granted",
        "rolling-ops-token": "1",
        "rolling-ops-holder": '{"unit": "roll/2", "token": 1}',
    }


# --------------------------------------------------------------------------------------------
# Malformed relation data: logged, ignored, never raised
# --------------------------------------------------------------------------------------------

GARBAGE = [
    ("unit", "state", "exploded"),
    ("unit", "rolling-ops-queue", "not json"),
    ("unit", "rolling-ops-queue", '{"a": 1}'),
    ("unit", "rolling-ops-requested-at", "yesterday"),
    ("app", "rolling-ops-order", "not json"),
    ("app", "rolling-ops-order", "[1, 2]"),
    ("app", "rolling-ops-holder", "not json"),
    ("app", "rolling-ops-holder", '{"unit": "roll/1"}'),
    ("app", "rolling-ops-token", "seventeen"),
    ("app", key(1), "maybe"),
]


@pytest.mark.parametrize(("bag", "field", "value"), GARBAGE)
def test_malformed_data_logged_and_ignored(bag, field, value, caplog: pytest.LogCaptureFixture):
    c = ctx()
    peer_bag = {"state": "acquire", "rolling-ops-requested-at": T0}
    app_bag = {"rolling-ops-token": "3"}
    (peer_bag if bag == "unit" else app_bag)[field] = value
    rel = peer(
        app=app_bag, peers={1: peer_bag, 2: {"state": "acquire", "rolling-ops-requested-at": T1}}
    )
    event = c.on.relation_changed(rel, remote_unit=1)
    with caplog.at_level(logging.WARNING), c(event, state(rel, leader=True)) as mgr:
        problems = mgr.charm.manager.malformed_data()
        out = mgr.run()
    assert any(field in p and value in p for p in problems), problems
    assert field in caplog.text
    # Unit 1 asked first unless its request is unreadable; a unit without a valid time sorts
    # after those with one (then by unit number).
    expected_holder = 2 if field in ("state", "rolling-ops-requested-at") else 1
    assert granted(out) == [expected_holder]


def test_malformed_own_queue_does_not_break_request():
    c = ctx(unit_id=1)
    rel = peer(me={"state": "acquire", "rolling-ops-queue": "not json"})
    out = c.run(c.on.action("restart", params={"override": "_b"}), state(rel))
    assert json.loads(mine(out)["rolling-ops-queue"]) == ["_b"]


# --------------------------------------------------------------------------------------------
# Lock / Locks views (the demo charm uses these)
# --------------------------------------------------------------------------------------------


def test_lock_states_follow_the_table():
    cases = [
        ({"state": "release"}, "granted", LockState.RELEASE),
        ({"state": "acquire"}, "idle", LockState.ACQUIRE),
        ({"state": "acquire"}, None, LockState.ACQUIRE),
        ({"state": "acquire"}, "granted", LockState.GRANTED),
        ({}, "granted", LockState.GRANTED),
        ({"state": "release"}, "idle", LockState.IDLE),
        ({}, None, LockState.IDLE),
    ]
    c = ctx(unit_id=1)
    for me, app_value, expected in cases:
        rel = peer(me=me, app={key(1): app_value} if app_value else {})
        with c(c.on.update_status(), state(rel)) as mgr:
            # Inspect before the event runs: the run itself would act on the grant.
            lock = Lock(mgr.charm.manager)
            assert lock._state is expected, (me, app_value)
            assert lock.is_held() == (expected is LockState.GRANTED)
            assert lock.is_pending() == (expected is LockState.ACQUIRE)
            assert lock.release_requested() == (expected is LockState.RELEASE)
        Record.calls.clear()


def test_locks_iterate_in_unit_number_order_without_mutating_units():
    c = ctx(unit_id=5)
    rel = peer(me={"state": "acquire"}, peers={10: {}, 2: {"state": "acquire"}, 7: {}})
    with c(c.on.update_status(), state(rel)) as mgr:
        relation = mgr.charm.model.get_relation("restart")
        assert relation is not None
        before = set(relation.units)
        locks = list(Locks(mgr.charm.manager))
        assert [lock.unit.name for lock in locks] == [f"{APP}/{n}" for n in (2, 5, 7, 10)]
        assert [lock.is_pending() for lock in locks] == [True, True, False, False]
        assert set(relation.units) == before
        mgr.run()


def test_lock_in_flight_counts_queue_and_uncleared_release():
    c = ctx(unit_id=1)
    rel = peer(me={"state": "release", "rolling-ops-queue": '["_b"]'}, app={key(1): "idle"})
    with c(c.on.update_status(), state(rel)) as mgr:
        lock = Lock(mgr.charm.manager)
        assert not lock.is_pending() and not lock.is_held()
        assert lock.in_flight()
        mgr.run()


def test_lock_writes_use_literal_app_key_format():
    c = ctx()
    rel = peer(peers={3: {}})
    with c(c.on.update_status(), state(rel, leader=True)) as mgr:
        relation = mgr.charm.model.get_relation("restart")
        assert relation is not None
        (unit3,) = relation.units
        Lock(mgr.charm.manager, unit3).grant()
        Lock(mgr.charm.manager).acquire()
        assert relation.data[mgr.charm.app]["<ops.model.Unit roll/3>"] == "granted"
        assert relation.data[mgr.charm.unit]["state"] == "acquire"


def test_handlers_accept_mock_events_as_charm_tests_pass_them():
    # Mocked: the event objects, as charms' own unit tests call these observers directly.
    c = ctx(unit_id=1)
    rel = peer(peers={0: {}})
    with c(c.on.config_changed(), state(rel)) as mgr:
        manager = mgr.charm.manager
        manager._on_acquire_lock(MagicMock())
        relation = mgr.charm.model.get_relation("restart")
        assert relation is not None
        assert relation.data[mgr.charm.unit]["state"] == "acquire"
        assert "callback_override" not in relation.data[mgr.charm.unit]
        manager._on_run_with_lock(MagicMock())  # not held: runs, lock state untouched
        assert relation.data[mgr.charm.unit]["state"] == "acquire"
        mgr.run()
    assert len(Record.calls) == 1


def test_event_snapshots():
    handle = ops.Handle(None, "x", "1")
    assert RunWithLock(handle).snapshot() == {}
    assert RunWithLock(handle, grant_token="5").snapshot() == {"grant_token": "5"}
    assert AcquireLock(handle).snapshot() == {"callback_override": ""}
    event = AcquireLock(handle)
    event.restore({"callback_override": "_a"})
    assert event.callback_override == "_a"


def test_module_constants():
    assert rollingops.LIBAPI == 0
    assert rollingops.LIBPATCH >= 10
    assert len(rollingops.LIBID) == 32
    assert int(rollingops.LIBID, 16) >= 0


# --------------------------------------------------------------------------------------------
# The wake-up itself (juju-exec cannot run here: Popen is intercepted, the binary is a stub)
# --------------------------------------------------------------------------------------------


def test_dispatch_wakeup_spawns_detached_juju_exec(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.undo()  # the real _dispatch_wakeup
    fake = tmp_path / "juju-exec"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("JUJU_CONTEXT_ID", "roll/0-update-status-1")
    spawned: list[tuple[list[str], dict[str, Any]]] = []
    monkeypatch.setattr(
        rollingops.subprocess, "Popen", lambda argv, **kw: spawned.append((argv, kw))
    )
    c = ctx()
    with c(c.on.update_status(), state(peer(), leader=True)) as mgr:
        mgr.charm.on.restart_acquire_lock.emit()
        charm_dir = mgr.charm.charm_dir
        mgr.run()
    assert len(spawned) == 1
    argv, kw = spawned[0]
    assert argv == [
        str(fake),
        "-u",
        f"{APP}/0",
        f"JUJU_DISPATCH_PATH=hooks/restart_process_locks {charm_dir}/dispatch",
    ]
    assert kw["start_new_session"] is True
    assert "JUJU_CONTEXT_ID" not in kw["env"]
    assert all(kw[s] is rollingops.subprocess.DEVNULL for s in ("stdin", "stdout", "stderr"))


def test_dispatch_wakeup_without_juju_exec_logs_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
):
    monkeypatch.undo()
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(rollingops, "_JUJU_EXEC_FALLBACK", str(tmp_path / "absent"))
    monkeypatch.setattr(RollingOpsManager, "_juju_exec_missing_logged", False)
    c = ctx()
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            with c(c.on.update_status(), state(peer(), leader=True)) as mgr:
                mgr.charm.on.restart_acquire_lock.emit()
                mgr.charm.manager._dispatch_wakeup()
                mgr.run()
    assert caplog.text.count("juju-exec not found") == 1


# --------------------------------------------------------------------------------------------
# Quiet: an idle unit reads nothing in update-status (ours)
# --------------------------------------------------------------------------------------------


def test_a_quiet_leader_skips_update_status_and_a_relation_changed_wakes_it():
    """update-status is no poll: another unit's request arrives as a relation-changed."""
    c = ctx()
    out = c.run(c.on.update_status(), state(peer(peers={1: {}}), leader=True))
    with c(c.on.update_status(), out) as mgr:
        assert mgr.charm.manager.quiet
        out = mgr.run()
    out = edit(out, peers_data={1: {"state": "acquire"}})
    assert granted(c.run(c.on.update_status(), out)) == []  # not polled
    rel = rel_of(out)
    out = c.run(c.on.relation_changed(rel, remote_unit=1), out)
    assert granted(out) == [1]
    with c(c.on.update_status(), out) as mgr:
        assert not mgr.charm.manager.quiet  # a grant is out: update-status reconciles again


def test_a_leader_granting_itself_is_not_quiet_so_update_status_runs_its_turn():
    """The fallback for a lost juju-exec wake-up: the leader's own grant keeps it not quiet."""
    c = ctx()
    out = c.run(c.on.update_status(), state(peer(), leader=True))
    out = c.run(c.on.action("restart"), out)
    assert granted(out) == [0] and Record.calls == [] and Record.wakeups == ["restart"]
    c.run(c.on.update_status(), out)  # the wake-up was lost: update-status runs the turn
    assert [name for name, _ in Record.calls] == ["_restart"]
