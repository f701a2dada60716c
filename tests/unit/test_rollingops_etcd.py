"""charmlibs.rollingops, etcd backend, hook side (spec §10 etcd items, §5).

Mocked, because they cannot exist here: the Juju controller (ops.testing), the worker process
(subprocess.Popen recorded; tests/functional runs the real one) and etcd itself (EtcdLock methods
replaced by recorders; tests/functional runs the real lock against a real etcd).
"""

from __future__ import annotations

import json
import subprocess

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
from ops import testing

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
    state = testing.State(leader=leader, relations={rel, etcd})
    with ctx(getattr(ctx.on, event)(), state) as mgr:
        if emit:
            getattr(mgr.charm.on, emit).emit()
        if event == "update_status" and emit is None:
            pass
        out = mgr.run()
    r = out.get_relation(rel.id)
    return dict(r.local_app_data), dict(r.local_unit_data)


def test_request_in_etcd_mode_writes_queue_and_hint_and_starts_the_worker_once(
    env, tmp_path, monkeypatch
):
    ctx = testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=1)
    rel = testing.PeerRelation("restart", local_app_data=app_bag("etcd"))
    state = testing.State(relations={rel, testing.Relation("etcd")})
    with ctx(ctx.on.update_status(), state) as mgr:
        mgr.charm.rolling.request_async_lock("restart", {"a": 1}, 0)
        out = mgr.run()
    bag = out.get_relation(rel.id).local_unit_data
    assert bag["rollingops-backend"] == "etcd" and len(json.loads(bag["rollingops-queue"])) == 1
    assert _files.read_work(tmp_path) == _files.WorkHint(pending=1, head=1)
    assert len(env) == 1 and "charmlibs.rollingops._worker" in env[0]
    monkeypatch.setattr(_files, "worker_alive", lambda base: True)
    rel2 = testing.PeerRelation("restart", local_app_data=app_bag("etcd"),
                                local_unit_data=dict(bag))  # fmt: skip
    with ctx(
        ctx.on.update_status(), testing.State(relations={rel2, testing.Relation("etcd")})
    ) as mgr:
        mgr.charm.rolling.request_async_lock("restart", {"a": 2}, 0)
        mgr.run()
    assert len(env) == 1  # a live worker: none started
    assert _files.read_work(tmp_path) == _files.WorkHint(pending=2, head=1)


def test_etcd_failed_event_falls_back_with_cleanup_flag():
    _, bag = run(unit_bag(1, backend="etcd"), app_bag("etcd"), emit="rollingops_etcd_failed")
    assert bag["rollingops-backend"] == "peer" and bag["rollingops-etcd-cleanup"] == "true"


def test_lock_granted_runs_under_the_etcd_token_after_a_fence_check(monkeypatch, tmp_path):
    monkeypatch.setenv("ROLLINGOPS_LOCK_TOKEN", "42")
    monkeypatch.setattr(_etcd_lock.EtcdLock, "holds", lambda self, token: token == 42)
    _, bag = run(unit_bag(1, backend="etcd"), app_bag("etcd"), emit="rollingops_lock_granted")
    assert [(g.backend, g.token) for g in CALLS] == [(ProcessingBackend.ETCD, 42)]
    assert _files.read_result(tmp_path) == _files.LockResult(42, 1, "release")
    assert json.loads(bag["rollingops-queue"]) == []


def test_lock_granted_with_a_stale_token_runs_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("ROLLINGOPS_LOCK_TOKEN", "41")
    monkeypatch.setattr(_etcd_lock.EtcdLock, "holds", lambda self, token: False)
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
