"""charmlibs.rollingops, etcd backend, hook side, and the switch between backends.

Mocked, because they cannot exist here: the Juju controller (ops.testing), the worker process
(subprocess.Popen recorded; tests/functional runs the real one) and etcd itself (EtcdLock methods
replaced by recorders; tests/functional runs the real lock against a real etcd).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from typing import Any

import ops
import pytest
from charmlibs.rollingops import (
    ProcessingBackend,
    RollingOpsManager,
    _certs,
    _etcd_client,
    _etcd_lock,
    _files,
)
from charmlibs.rollingops._models import make_token
from ops import testing

from demo.etcd_contract import check_requirer_bag

# Juju's planned unit count (goal-state): at least the units a test shows, so no unit looks
# like it is being removed (a holder waits while one is: RollingOpsManager._unit_leaving).
PLANNED = 9

APP = "app"
META = {
    "name": APP,
    "peers": {"restart": {"interface": "rollingops"}},
    "requires": {"etcd": {"interface": "etcd_client", "limit": 1, "optional": True}},
}
CALLS: list = []
CREDS: dict = {}
BASE: list[str] = [""]


class EtcdCharm(ops.CharmBase):
    def __init__(self, framework):
        super().__init__(framework)
        self.rolling = RollingOpsManager(
            self,
            callback_targets={"restart": self._restart},
            peer_relation_name="restart",
            etcd_relation_name="etcd",
            cluster_id="c1",
            base_dir=BASE[0],
        )

    def _restart(self, **kwargs):
        CALLS.append(self.rolling.lock_grant)


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    CALLS.clear()
    BASE[0] = str(tmp_path)
    creds = CREDS or CREDS.update(_certs.generate_client_credentials("unit-test")) or CREDS
    _files.write_config(
        tmp_path,
        endpoints=["127.0.0.1:2379"],
        prefix="/p/",
        owner="o",
        server_ca_pem=creds["client-ca"],
        cert_pem=creds["client-cert"],
        key_pem=creds["client-key"],
    )
    started: list = []
    monkeypatch.setattr(subprocess, "Popen", lambda argv, **kw: started.append(argv))
    return started


def unit_bag(*ids, backend="peer", cleanup=False):
    ops_ = [{"id": i, "callback_id": "restart", "kwargs": {}, "max_retry": 0, "attempt": 0}
            for i in ids]  # fmt: skip
    bag = {"rollingops-version": "1", "rollingops-queue": json.dumps(ops_),
           "rollingops-seq": str(max([0, *ids])), "rollingops-backend": backend}  # fmt: skip
    if cleanup:
        bag["rollingops-etcd-cleanup"] = "true"
    return bag


def app_bag(mode, grant=None):
    bag = {"rollingops-version": "1", "rollingops-token": "3", "rollingops-mode": mode}
    if grant:
        bag["rollingops-grant"] = json.dumps(grant)
    return bag


def run(unit_bag_, app_bag_, event="update_status", leader=False, emit=None, peers=None):
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    rel = testing.PeerRelation(
        "restart", local_unit_data=unit_bag_, local_app_data=app_bag_, peers_data=peers or {}
    )
    etcd = testing.Relation("etcd")
    state = testing.State(planned_units=PLANNED, leader=leader, relations={rel, etcd})
    with ctx(getattr(ctx.on, event)(), state) as mgr:
        if emit:
            getattr(mgr.charm.on, emit).emit()
        if event == "update_status" and emit is None:
            pass
        out = mgr.run()
    r = out.get_relation(rel.id)
    return dict(r.local_app_data), dict(r.local_unit_data)


MANAGER_PATH = "EtcdCharm/RollingOpsManager[rolling-ops-manager]"


def local_queue(state: testing.State) -> list[int]:
    """Op ids of the unit's local queue (its stored state while it runs on etcd)."""
    for stored in state.stored_states:
        if stored.owner_path == MANAGER_PATH and "etcd_local" in stored.content:
            return [op["id"] for op in json.loads(stored.content["etcd_local"]["queue"])]
    return []


def stored_local(*ids, seq=None):
    ops_ = [{"id": i, "callback_id": "restart", "kwargs": {}, "max_retry": 0, "attempt": 0}
            for i in ids]  # fmt: skip
    content = {"etcd_local": {"queue": json.dumps(ops_), "seq": seq or max([0, *ids]),
                              "done": ""}}  # fmt: skip
    return testing.StoredState("_stored", owner_path=MANAGER_PATH, content=content)


class _KeptSlot:
    """What `EtcdLock.keep_slot` returns for a slot of ours (its keep-alive, stopped after)."""

    stopped = False

    def stop(self) -> None:
        self.stopped = True


def _slot_if(ours: Any) -> Any:
    """A `keep_slot` that finds our slot for the tokens `ours` accepts (etcd not dialled)."""
    return lambda self, token: _KeptSlot() if ours(token) else None


def test_request_in_etcd_mode_queues_locally_writes_the_hint_and_starts_the_worker_once(
    env, tmp_path, monkeypatch
):
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    rel = testing.PeerRelation("restart", local_app_data=app_bag("etcd"))
    state = testing.State(planned_units=PLANNED, relations={rel, testing.Relation("etcd")})
    with ctx(ctx.on.update_status(), state) as mgr:
        mgr.charm.rolling.request_async_lock("restart", {"a": 1}, 0)
        out = mgr.run()
    bag = out.get_relation(rel.id).local_unit_data
    assert bag["rollingops-backend"] == "etcd" and json.loads(bag["rollingops-queue"]) == []
    assert local_queue(out) == [1]
    assert _files.read_work(tmp_path) == _files.WorkHint(pending=1, head=1)
    assert len(env) == 1 and "charmlibs.rollingops._worker" in env[0]
    monkeypatch.setattr(_files, "worker_alive", lambda base: True)
    rel2 = testing.PeerRelation("restart", local_app_data=app_bag("etcd"),
                                local_unit_data=dict(bag))  # fmt: skip
    state2 = testing.State(
        planned_units=PLANNED,
        relations={rel2, testing.Relation("etcd")},
        stored_states=out.stored_states,
    )
    with ctx(ctx.on.update_status(), state2) as mgr:
        mgr.charm.rolling.request_async_lock("restart", {"a": 2}, 0)
        out2 = mgr.run()
    assert len(env) == 1  # a live worker: none started
    assert _files.read_work(tmp_path) == _files.WorkHint(pending=2, head=1)
    assert local_queue(out2) == [1, 2]
    assert out2.get_relation(rel2.id).local_unit_data == bag  # nothing published


def test_an_etcd_grant_cycle_writes_nothing_to_the_peer_relation(monkeypatch, tmp_path):
    """Request (action hook) then grant (lock-granted hook) on a unit already on etcd.

    Any write to the peer relation would wake every other unit with relation-changed: the
    hooks of a rolling restart would grow as N^2 instead of 2N.
    """
    monkeypatch.setenv("ROLLINGOPS_LOCK_TOKEN", "42")
    monkeypatch.setattr(_etcd_lock.EtcdLock, "keep_slot", _slot_if(lambda token: token == 42))
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    monkeypatch.setattr(  # the leader's request to the provider is not the lock's business
        "charmlibs.rollingops._etcd_backend.EtcdBackend._publish_request", lambda self, peer: None
    )
    unit = {**unit_bag(backend="etcd"), "rollingops-intent": "idle"}
    app = {**app_bag_v2("etcd", 0, token=0), "rollingops-order": "[]"}
    peers = {0: unit_bag(backend="etcd"), 2: unit_bag(backend="etcd")}
    rel = testing.PeerRelation("restart", local_unit_data=unit, local_app_data=app,
                               peers_data=peers)  # fmt: skip
    state = testing.State(planned_units=PLANNED, relations={rel, testing.Relation("etcd")})
    for leader in (False, True):
        state = dataclasses.replace(state, leader=leader)
        with ctx(ctx.on.update_status(), state) as mgr:
            mgr.charm.rolling.request_async_lock("restart", {"a": 1}, 0)
            out = mgr.run()
        assert local_queue(out) == [1]
        with ctx(ctx.on.update_status(), out) as mgr:
            mgr.charm.on.rollingops_lock_granted.emit()
            out = mgr.run()
        assert [(g.backend, g.token) for g in CALLS] == [(ProcessingBackend.ETCD, 42)]
        assert _files.read_result(tmp_path) == _files.LockResult(42, 1, "release")
        assert local_queue(out) == []
        r = out.get_relation(rel.id)
        assert dict(r.local_unit_data) == unit and dict(r.local_app_data) == app
        CALLS.clear()


@pytest.mark.parametrize("emit", ["rollingops_etcd_failed", None])
def test_leaving_etcd_publishes_the_local_queue_in_the_same_hook(emit):
    """Worker failure (emit) or the leader's switch to peer (mode peer): nothing is lost."""
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    stale = {**unit_bag(1, backend="etcd"), "rollingops-queue": "[]"}  # published op 1: done
    rel = testing.PeerRelation(
        "restart", local_unit_data=stale, local_app_data=app_bag("etcd" if emit else "peer")
    )
    state = testing.State(
        planned_units=PLANNED,
        relations={rel, testing.Relation("etcd")},
        stored_states={stored_local(4, 5)},
    )
    with ctx(ctx.on.update_status(), state) as mgr:
        if emit:
            getattr(mgr.charm.on, emit).emit()
        out = mgr.run()
    bag = out.get_relation(rel.id).local_unit_data
    assert bag["rollingops-backend"] == "peer" and bag["rollingops-etcd-cleanup"] == "true"
    assert [op["id"] for op in json.loads(bag["rollingops-queue"])] == [4, 5]
    assert bag["rollingops-seq"] == "5" and bag["rollingops-intent"] == "request"


def test_local_queue_is_ignored_while_the_bag_says_peer_and_replaced_on_the_switch(monkeypatch):
    """The local copy is kept after a fallback, but the bag is the truth on the peer backend."""
    monkeypatch.setattr(_etcd_lock.EtcdLock, "cleanup_owner", lambda self: None)
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    rel = testing.PeerRelation(
        "restart", local_unit_data=unit_bag(7, backend="peer"), local_app_data=app_bag("peer")
    )
    state = testing.State(
        planned_units=PLANNED,
        relations={rel, testing.Relation("etcd")},
        stored_states={stored_local(4, 5)},
    )
    with ctx(ctx.on.update_status(), state) as mgr:
        assert mgr.charm.rolling.is_waiting_callback("restart")
        view = mgr.charm.rolling._view_of(None)
        assert view is not None and [op.id for op in view.queue] == [7]
        mgr.run()
    rel = dataclasses.replace(rel, local_app_data=app_bag("etcd"))
    out = ctx.run(
        ctx.on.update_status(),
        dataclasses.replace(state, relations={rel, testing.Relation("etcd")}),
    )
    bag = out.get_relation(rel.id).local_unit_data
    assert bag["rollingops-backend"] == "etcd" and json.loads(bag["rollingops-queue"]) == []
    assert local_queue(out) == [7]


def test_leader_does_not_order_units_on_etcd(monkeypatch):
    """The app databag is not rewritten per request while the application runs on etcd."""
    monkeypatch.setattr(
        "charmlibs.rollingops._etcd_backend.EtcdBackend._publish_request", lambda self, peer: None
    )
    app, _ = run(unit_bag(2, backend="etcd"), app_bag("etcd"), leader=True,
                 peers={0: unit_bag(4, backend="etcd")})  # fmt: skip
    assert json.loads(app.get("rollingops-order", "[]")) == []


def test_etcd_failed_event_falls_back_with_cleanup_flag():
    _, bag = run(unit_bag(1, backend="etcd"), app_bag("etcd"), emit="rollingops_etcd_failed")
    assert bag["rollingops-backend"] == "peer" and bag["rollingops-etcd-cleanup"] == "true"


def test_lock_granted_runs_under_the_etcd_token_after_a_fence_check(monkeypatch, tmp_path):
    monkeypatch.setenv("ROLLINGOPS_LOCK_TOKEN", "42")
    monkeypatch.setattr(_etcd_lock.EtcdLock, "keep_slot", _slot_if(lambda token: token == 42))
    _, bag = run(unit_bag(1, backend="etcd"), app_bag("etcd"), emit="rollingops_lock_granted")
    assert [(g.backend, g.token) for g in CALLS] == [(ProcessingBackend.ETCD, 42)]
    assert _files.read_result(tmp_path) == _files.LockResult(42, 1, "release")
    assert json.loads(bag["rollingops-queue"]) == []  # a bag from before local queues: migrated


def test_lock_granted_with_a_stale_token_runs_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("ROLLINGOPS_LOCK_TOKEN", "41")
    monkeypatch.setattr(_etcd_lock.EtcdLock, "keep_slot", _slot_if(lambda token: False))
    run(unit_bag(1, backend="etcd"), app_bag("etcd"), emit="rollingops_lock_granted")
    assert CALLS == []
    result = _files.read_result(tmp_path)
    assert result is not None and result.result == "not-granted"


def test_fence_check_failure_falls_back(monkeypatch, tmp_path):
    def broken(self, token):
        raise _etcd_client.EtcdConnectionError("down")

    monkeypatch.setenv("ROLLINGOPS_LOCK_TOKEN", "42")
    monkeypatch.setattr(_etcd_lock.EtcdLock, "holds", broken)
    _, bag = run(unit_bag(1, backend="etcd"), app_bag("etcd"), emit="rollingops_lock_granted")
    assert CALLS == [] and bag["rollingops-backend"] == "peer"
    assert bag["rollingops-etcd-cleanup"] == "true"


def test_return_to_etcd_cleans_up_first_and_stays_on_peer_if_that_fails(monkeypatch):
    cleaned: list = []
    monkeypatch.setattr(_etcd_lock.EtcdLock, "cleanup_owner", lambda self: cleaned.append(1))
    _, bag = run(unit_bag(backend="peer", cleanup=True), app_bag("etcd"))
    assert cleaned == [1] and bag["rollingops-backend"] == "etcd"
    assert "rollingops-etcd-cleanup" not in bag

    def broken(self):
        raise _etcd_client.EtcdConnectionError("down")

    monkeypatch.setattr(_etcd_lock.EtcdLock, "cleanup_owner", broken)
    _, bag = run(unit_bag(backend="peer", cleanup=True), app_bag("etcd"))
    assert bag["rollingops-backend"] == "peer" and bag["rollingops-etcd-cleanup"] == "true"


def test_leader_returns_to_etcd_only_when_every_queue_is_drained(monkeypatch):
    monkeypatch.setattr(_etcd_lock.EtcdLock, "cleanup_owner", lambda self: None)
    monkeypatch.setattr(
        "charmlibs.rollingops._etcd_backend.EtcdBackend._publish_request", lambda self, peer: None
    )
    app, _ = run(unit_bag(), app_bag("peer"), leader=True, peers={0: unit_bag(4)})
    assert app["rollingops-mode"] == "peer"
    app, _ = run(unit_bag(), app_bag("peer"), leader=True, peers={0: unit_bag()})
    assert app["rollingops-mode"] == "etcd"


def test_no_peer_grant_while_a_unit_is_still_on_etcd(monkeypatch):
    monkeypatch.setattr(
        "charmlibs.rollingops._etcd_backend.EtcdBackend._publish_request", lambda self, peer: None
    )
    _files.delete_config(BASE[0])  # etcd unusable: the app goes to peer...
    app, _ = run(unit_bag(2), app_bag("etcd"), leader=True, peers={0: unit_bag(4, backend="etcd")})
    assert app["rollingops-mode"] == "peer"
    assert "rollingops-grant" not in app  # ...but unit 0 has not acknowledged peer yet


def test_non_leaders_never_generate_keys(monkeypatch):
    def forbid(*a, **k):
        raise AssertionError("key generation on a non-leader")

    monkeypatch.setattr(_certs, "generate_client_credentials", forbid)
    run(unit_bag(), app_bag("peer"))


# --- worker health, sync lock timeout, late cluster_id (the relation contract itself:
# test_rollingops_etcd_relation.py) -----------------------------------------------------------


@pytest.mark.parametrize("pending", [True, False])
def test_update_status_falls_back_when_the_worker_marked_itself_failed_with_work_pending(
    tmp_path, pending
):
    _files.write_worker_status(tmp_path, _files.WorkerStatus(None, True, 3))
    ids = (1,) if pending else ()
    _, bag = run(unit_bag(*ids, backend="etcd"), app_bag("etcd"))
    if pending:
        assert bag["rollingops-backend"] == "peer" and bag["rollingops-etcd-cleanup"] == "true"
    else:  # nothing to do: a failed mark alone is not a reason to leave etcd
        assert bag["rollingops-backend"] == "etcd" and "rollingops-etcd-cleanup" not in bag


def test_update_status_keeps_etcd_when_the_worker_is_merely_dead(tmp_path):
    _files.write_worker_status(tmp_path, _files.WorkerStatus(7, False, 0))  # died holding
    _, bag = run(unit_bag(1, backend="etcd"), app_bag("etcd"))
    assert bag["rollingops-backend"] == "etcd"  # update-status restarts the worker instead


def test_etcd_sync_lock_times_out_on_contention_and_does_not_fall_back(monkeypatch):
    """The etcd lock is held by another unit: TimeoutError propagates, the unit stays on etcd.

    etcd is the in-memory fake of demo/fake_etcd.py behind the real EtcdLock.
    """
    from demo.fake_etcd import FakeEtcd, FakeEtcdClient

    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    client: Any = FakeEtcdClient(fake)
    other = _etcd_lock.EtcdLock(client, "/p/", "other-owner", "app/0")
    lease = fake.lease_grant(60, keeper=lambda: True)
    assert other.client.txn(
        [], [_etcd_client.op_put("/p/lock", other._value("async"), lease)]
    ).succeeded
    monkeypatch.setattr(_etcd_lock, "EtcdClient", lambda *a, **k: FakeEtcdClient(fake, **k))
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    rel = testing.PeerRelation(
        "restart", local_unit_data=unit_bag(backend="etcd"), local_app_data=app_bag("etcd")
    )
    state = testing.State(planned_units=PLANNED, relations={rel, testing.Relation("etcd")})
    with ctx(ctx.on.update_status(), state) as mgr:
        with pytest.raises(TimeoutError), mgr.charm.rolling.acquire_sync_lock("peer", timeout=0):
            raise AssertionError("the body must not run without the lock")
        out = mgr.run()
    bag = out.get_relation(rel.id).local_unit_data
    assert bag["rollingops-backend"] == "etcd" and "rollingops-etcd-cleanup" not in bag
    assert fake.keys["/p/lock"].lease == lease  # the other unit's lock is untouched
    assert not [k for k in fake.keys if k.startswith("/p/waiting-sync/")]  # our ticket is gone


LATE: list = [None]


class LateClusterCharm(EtcdCharm):
    def __init__(self, framework):
        ops.CharmBase.__init__(self, framework)
        self.rolling = RollingOpsManager(
            self,
            callback_targets={"restart": self._restart},
            peer_relation_name="restart",
            etcd_relation_name="etcd",
            cluster_id=LATE[0],
            base_dir=BASE[0],
        )


def test_late_cluster_id_publishes_the_request_at_the_end_of_that_dispatch():
    ctx = testing.Context(LateClusterCharm, meta=META, app_name=APP, unit_id=0)
    rel = testing.PeerRelation("restart")
    etcd = testing.Relation("etcd", remote_app_name="charmed-etcd")
    state = testing.State(planned_units=PLANNED, leader=True, relations={rel, etcd})
    LATE[0] = None
    out = ctx.run(ctx.on.update_status(), state)
    assert "requests" not in out.get_relation(etcd.id).local_app_data  # no cluster id: nothing
    assert not out.secrets
    LATE[0] = "late-cluster"
    out = ctx.run(ctx.on.update_status(), out)
    bag = out.get_relation(etcd.id).local_app_data
    (request,) = check_requirer_bag(bag)
    assert request["resource"] == "/coordinated-ops/rollingops/v1/late-cluster/"
    secret_id = out.get_relation(rel.id).local_app_data["rollingops-client-secret-id"]
    assert secret_id in {s.id for s in out.secrets}
    assert "client-key" not in json.dumps(dict(bag))  # only the mtls secret id is published
    LATE[0] = "renamed"  # a changed cluster id replaces the request, same certificate
    out = ctx.run(ctx.on.update_status(), out)
    (renamed,) = check_requirer_bag(out.get_relation(etcd.id).local_app_data)
    assert renamed["resource"] == "/coordinated-ops/rollingops/v1/renamed/"
    assert renamed["salt"] != request["salt"]  # a new prefix is a new request
    assert renamed["secret-mtls"] == request["secret-mtls"]
    assert out.get_relation(rel.id).local_app_data["rollingops-client-secret-id"] == secret_id


def test_sync_lock_with_an_endpoint_without_a_port_falls_back_instead_of_raising(tmp_path):
    """Issue 16: the client raised ValueError for an endpoint without a port; now EtcdError."""
    from charmlibs.rollingops import RollingOpsSyncLockError

    config_file = _files.etcd_dir(tmp_path) / _files.CONFIG_FILE
    config_file.write_text(config_file.read_text().replace("127.0.0.1:2379", "127.0.0.1"))
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    rel = testing.PeerRelation(
        "restart", local_app_data=app_bag("etcd"), local_unit_data=unit_bag(backend="etcd")
    )
    state = testing.State(planned_units=PLANNED, relations={rel, testing.Relation("etcd")})
    with ctx(ctx.on.update_status(), state) as mgr:
        # etcd failed: the manager fell back to the charm's sync backend, which this charm lacks.
        with (
            pytest.raises(RollingOpsSyncLockError, match="no sync lock backend"),
            mgr.charm.rolling.acquire_sync_lock("restart", 5),
        ):
            pytest.fail("must not enter")
        out = mgr.run()
    assert out.get_relation(rel.id).local_unit_data["rollingops-backend"] == "peer"


# --- fencing tokens across backends ----------------------------------------------------------


def app_bag_v2(mode, epoch, token=3):
    return {"rollingops-version": "2", "rollingops-epoch": str(epoch),
            "rollingops-token": str(token), "rollingops-mode": mode}  # fmt: skip


def test_lock_granted_token_packs_the_app_epoch_with_the_revision(monkeypatch, tmp_path):
    monkeypatch.setenv("ROLLINGOPS_LOCK_TOKEN", "42")
    monkeypatch.setattr(_etcd_lock.EtcdLock, "keep_slot", _slot_if(lambda token: token == 42))
    _, bag = run(
        unit_bag(1, backend="etcd"), app_bag_v2("etcd", 3), emit="rollingops_lock_granted"
    )
    assert [(g.backend, g.epoch, g.sequence) for g in CALLS] == [(ProcessingBackend.ETCD, 3, 42)]
    assert CALLS[0].token == make_token(3, 42)
    assert "rollingops-done" not in bag  # on etcd, done stays in stored state (no peer write)
    assert _files.read_result(tmp_path) == _files.LockResult(42, 1, "release")  # the worker's


def test_lock_granted_once_the_app_left_etcd_runs_nothing(monkeypatch, tmp_path):
    """The leader switched to peer (epoch 4): an etcd grant of epoch 3 must not start now."""
    monkeypatch.setenv("ROLLINGOPS_LOCK_TOKEN", "42")
    monkeypatch.setattr(_etcd_lock.EtcdLock, "holds", lambda self, token: True)
    _, bag = run(
        unit_bag(1, backend="etcd"), app_bag_v2("peer", 4), emit="rollingops_lock_granted"
    )
    assert CALLS == []
    result = _files.read_result(tmp_path)
    assert result is not None and result.result == "not-granted"
    assert bag["rollingops-backend"] == "peer"  # and it acknowledges peer mode


def test_each_mode_switch_raises_the_epoch(monkeypatch):
    monkeypatch.setattr(
        "charmlibs.rollingops._etcd_backend.EtcdBackend._publish_request", lambda self, peer: None
    )
    app, _ = run(unit_bag(), app_bag_v2("peer", 2), leader=True, peers={0: unit_bag()})
    assert (app["rollingops-mode"], app["rollingops-epoch"]) == ("etcd", "3")
    _files.delete_config(BASE[0])
    app, _ = run(unit_bag(), app_bag_v2("etcd", 3), leader=True, peers={0: unit_bag()})
    assert (app["rollingops-mode"], app["rollingops-epoch"]) == ("peer", "4")


def test_return_to_etcd_waits_until_every_unit_acknowledged_peer(monkeypatch):
    """Unit 0 may still run an etcd section of the old epoch: no new etcd epoch before its ack."""
    monkeypatch.setattr(
        "charmlibs.rollingops._etcd_backend.EtcdBackend._publish_request", lambda self, peer: None
    )
    peers = {0: unit_bag(backend="etcd")}
    app, _ = run(unit_bag(), app_bag("peer"), leader=True, peers=peers)
    assert app["rollingops-mode"] == "peer" and app.get("rollingops-epoch") == "0"
    app, _ = run(unit_bag(), app_bag("peer"), leader=True, peers={0: unit_bag(backend="peer")})
    assert (app["rollingops-mode"], app["rollingops-epoch"]) == ("etcd", "1")


def test_sync_lock_issues_no_token_once_the_app_left_etcd_while_acquiring(monkeypatch):
    """The app leaves etcd mode (epoch 3 -> 4) while the etcd sync lock is being acquired.

    The hook stands in for the leader's switch in the same hook (as Juju would show it: the
    leader's own write, read back); the lock itself is a recorder. No token may be made with
    an epoch that is not the current one (the old code made one with epoch 0): the etcd lock is
    released and the sync lock falls back to the charm's backend (this charm has none).
    """
    import contextlib

    from charmlibs.rollingops import RollingOpsSyncLockError

    released: list[int] = []
    app_data: list = []

    @contextlib.contextmanager
    def sync_lock(self, timeout):
        app_data[0].update({"rollingops-mode": "peer", "rollingops-epoch": "4"})
        try:
            yield 42
        finally:
            released.append(42)

    monkeypatch.setattr(_etcd_lock.EtcdLock, "sync_lock", sync_lock)
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    rel = testing.PeerRelation(
        "restart", local_unit_data=unit_bag(backend="etcd"), local_app_data=app_bag_v2("etcd", 3)
    )
    state = testing.State(
        planned_units=PLANNED, leader=True, relations={rel, testing.Relation("etcd")}
    )
    with ctx(ctx.on.update_status(), state) as mgr:
        relation = mgr.charm.model.get_relation("restart")
        assert relation is not None
        app_data.append(relation.data[mgr.charm.app])
        with (
            pytest.raises(RollingOpsSyncLockError, match="no sync lock backend"),
            mgr.charm.rolling.acquire_sync_lock("restart", 5) as grant,
        ):
            pytest.fail(f"the body ran with {grant}")
        assert released == [42]
        out = mgr.run()
    assert out.get_relation(rel.id).local_unit_data["rollingops-backend"] == "peer"


@pytest.mark.parametrize(("result", "after"), [(None, "idle"), ("retry-hold", "granted")])
def test_the_granted_hook_ends_reporting_the_grant_over(monkeypatch, tmp_path, result, after):
    """In etcd mode no later hook may come to refresh the unit's status.

    So the state at the end of the granted hook must say the grant is over (the worker releases
    it once the hook commits), unless the callback keeps it (retry-hold).
    """
    from charmlibs.rollingops import OperationResult

    monkeypatch.setenv("ROLLINGOPS_LOCK_TOKEN", "42")
    monkeypatch.setattr(_etcd_lock.EtcdLock, "keep_slot", _slot_if(lambda token: token == 42))
    _files.write_worker_status(tmp_path, _files.WorkerStatus(42, False, 0))  # the worker holds
    if result is not None:
        monkeypatch.setattr(EtcdCharm, "_restart", lambda self, **kw: OperationResult(result))
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    unit = unit_bag(1, backend="etcd")
    unit["rollingops-queue"] = unit["rollingops-queue"].replace('"max_retry": 0', '"max_retry": 2')
    rel = testing.PeerRelation(
        "restart", local_unit_data=unit, local_app_data=app_bag_v2("etcd", 3)
    )
    state = testing.State(planned_units=PLANNED, relations={rel, testing.Relation("etcd")})
    with ctx(ctx.on.update_status(), state) as mgr:
        mgr.charm.on.rollingops_lock_granted.emit()
        assert mgr.charm.rolling.state.status.value == after
        mgr.run()


# --- a pause key left by a hook that failed after putting it ---------------------------------


class PausingCharm(EtcdCharm):
    """Its pause action raises after the library paused: Juju discards the databag writes."""

    def __init__(self, framework):
        super().__init__(framework)
        framework.observe(self.on["pause"].action, self._on_pause)

    def _on_pause(self, event):
        self.rolling.pause()
        raise RuntimeError("the hook fails after the pause (leadership moved, a later bug...)")


PAUSE_KEY = "/p/paused/o"  # P paused/<owner without its unit number>: see the env fixture


@pytest.fixture
def fake_etcd(monkeypatch):
    """The simulator's in-memory etcd behind the hook side's client (hooks do not wait on it)."""
    from demo.fake_etcd import FakeEtcd, FakeEtcdClient

    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    monkeypatch.setattr(_etcd_lock, "EtcdClient", lambda *a, **kw: FakeEtcdClient(fake, *a, **kw))
    return fake


def quiet_leader_state(app_bag_, *, leader=True) -> tuple[testing.State, testing.PeerRelation]:
    """A unit whose last reconcile saw nothing in flight (the application idle on etcd)."""
    quiet = testing.StoredState(
        "_stored",
        owner_path=MANAGER_PATH,
        content={"quiet": True, "quiet_backend": "etcd", "quiet_cluster_id": "c1"},
    )
    rel = testing.PeerRelation(
        "restart", local_unit_data={**unit_bag(), "rollingops-backend": "etcd"},
        local_app_data=app_bag_,
    )  # fmt: skip
    state = testing.State(
        planned_units=PLANNED,
        leader=leader,
        relations={rel, testing.Relation("etcd")},
        stored_states={quiet},
    )
    return state, rel


def test_a_pause_key_whose_hook_failed_is_deleted_by_the_leaders_next_update_status(fake_etcd):
    """The failed hook's databag writes (pause, flag) are gone; its etcd put is not.

    Before the fix nothing ever deleted the key: the leader stayed quiet, `resume` said "not
    paused", and every etcd waiter waited for good.
    """
    state, rel = quiet_leader_state(app_bag_v2("etcd", 3))
    ctx = testing.Context(PausingCharm, meta=META, actions={"pause": {}}, app_name=APP, unit_id=1)
    with pytest.raises(testing.errors.UncaughtCharmError, match="fails after the pause"):
        ctx.run(ctx.on.action("pause"), state)
    assert PAUSE_KEY in fake_etcd.keys  # etcd is no databag: the put stays
    out = ctx.run(ctx.on.update_status(), state)  # Juju kept the pre-hook state
    assert PAUSE_KEY not in fake_etcd.keys
    assert "rollingops-etcd-paused" not in out.get_relation(rel.id).local_app_data
    assert not _files.pause_marked(BASE[0])
    calls = fake_etcd.calls
    ctx.run(ctx.on.update_status(), out)  # quiet again: no etcd call
    assert fake_etcd.calls == calls


def test_a_successful_pause_keeps_its_key_until_resume(fake_etcd):
    state, rel = quiet_leader_state(app_bag_v2("etcd", 3))
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    with ctx(ctx.on.update_status(), state) as mgr:
        mgr.charm.rolling.pause()
        out = mgr.run()
    app = out.get_relation(rel.id).local_app_data
    assert app["rollingops-etcd-paused"] == "true" and PAUSE_KEY in fake_etcd.keys
    out = ctx.run(ctx.on.update_status(), out)  # marked, so not quiet: the key stays
    assert PAUSE_KEY in fake_etcd.keys
    with ctx(ctx.on.update_status(), out) as mgr:
        mgr.charm.rolling.resume()
        out = mgr.run()
    assert PAUSE_KEY not in fake_etcd.keys and not _files.pause_marked(BASE[0])
    assert "rollingops-etcd-paused" not in out.get_relation(rel.id).local_app_data


@pytest.mark.parametrize("paused", [False, True])
def test_a_new_leader_deletes_a_pause_key_its_databag_does_not_record(fake_etcd, paused):
    """The predecessor's pause hook failed as leadership moved: only etcd kept the pause."""
    from demo.fake_etcd import FakeEtcdClient

    FakeEtcdClient(fake_etcd).put(PAUSE_KEY, "paused")
    bag = app_bag_v2("etcd", 3)
    if paused:  # a pause the databag records stays
        bag.update({"rollingops-paused": "by the operator", "rollingops-etcd-paused": "true"})
    state, _ = quiet_leader_state(bag)
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    ctx.run(ctx.on.leader_elected(), state)
    assert (PAUSE_KEY in fake_etcd.keys) is paused


def test_a_unit_no_longer_leader_drops_its_pause_mark(fake_etcd):
    _files.mark_pause(BASE[0])
    state, _ = quiet_leader_state(app_bag_v2("etcd", 3), leader=False)
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    ctx.run(ctx.on.update_status(), state)  # marked, so not quiet: it reconciles
    assert not _files.pause_marked(BASE[0])
    assert fake_etcd.calls == 0  # the new leader's own mark deals with the key
