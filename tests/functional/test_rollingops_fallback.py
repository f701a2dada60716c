"""Exclusion across backends on a real etcd: etcd stops while a unit holds the lock, and back.

What is real here:
- etcd 3.4 with mutual TLS on 127.0.0.1 (a private server for this test, stopped and restarted);
- the unit's worker: a real `python -m charmlibs.rollingops._worker` process started from a copy
  of the package under `lib/` only (worker_harness.py), holding a real lease, ticket and lock;
- the hook side: the real `RollingOpsManager` and `EtcdBackend` (real `EtcdClient` over mTLS, real
  local files under base_dir, the real flock/pidfd stop of the worker), run in ops.testing.

What stands in, because it cannot exist here:
- the Juju controller: ops.testing runs each hook of the two units (app/0 the leader, app/1) and
  this test carries the peer databags from one unit's hook output to the next unit's input, as
  Juju would publish them;
- `juju-exec`: the harness's stand-in, in "block" mode: the worker's dispatch of
  `rollingops_lock_granted` is left waiting (as it would behind the unit's machine hook lock), so
  the unit holds the etcd lock without having run its operation yet. The dispatch the test then
  runs itself (in ops.testing, with the worker's token) is that hook.

The claim (the package docstring of charmlibs.rollingops, 'Why it holds'): with etcd stopped
while app/1 holds the etcd lock, no peer grant is issued until app/1 has acknowledged peer mode
with its worker stopped; app/1's operation then runs exactly once, on the peer backend; with etcd
back and the queues drained, the application returns to etcd and app/1's stale etcd lock is
cleaned up.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ops
import pytest
from charmlibs.rollingops import RollingOpsManager, _files
from charmlibs.rollingops._etcd_lock import EtcdLock
from ops import testing

from tests.functional.etcd_server import EtcdServer, find_etcd
from tests.functional.worker_harness import FakeUnit, WorkerHarness

META = {
    "name": "app",
    "peers": {"restart": {"interface": "rollingops"}},
    "requires": {"etcd": {"interface": "etcd_client", "limit": 1, "optional": True}},
}
CALLS: list[tuple[str, Any]] = []
BASE_DIRS: dict[str, str] = {}


class Charm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.rolling = RollingOpsManager(
            self,
            callback_targets={"restart": self._restart},
            peer_relation_name="restart",
            etcd_relation_name="etcd",
            cluster_id="r10",
            base_dir=BASE_DIRS[self.unit.name],
        )

    def _restart(self, **kwargs: Any) -> None:
        CALLS.append((self.unit.name, self.rolling.lock_grant))


def queue(*ids: int) -> str:
    ops_ = [{"id": i, "callback_id": "restart", "kwargs": {}, "max_retry": 0, "attempt": 0}
            for i in ids]  # fmt: skip
    return json.dumps(ops_)


class TwoUnits:
    """Juju's side for two units: databags routed between them, each unit's stored state kept."""

    def __init__(
        self,
        app_bag: dict[str, str],
        unit_bags: dict[int, dict[str, str]],
        stored: dict[int, frozenset[testing.StoredState]],
    ):
        self.app_bag = app_bag
        self.unit_bags = unit_bags
        self.stored = stored
        self.ctx = {
            n: testing.Context(Charm, meta=META, app_name="app", unit_id=n) for n in (0, 1)
        }
        self.secrets: frozenset = frozenset()
        self.etcd = testing.Relation("etcd", remote_app_name="charmed-etcd")

    def state(self, n: int) -> tuple[testing.State, testing.PeerRelation]:
        other = 1 - n
        rel = testing.PeerRelation(
            "restart",
            id=7,
            local_app_data=dict(self.app_bag),
            local_unit_data=dict(self.unit_bags[n]),
            peers_data={other: dict(self.unit_bags[other])},
        )
        state = testing.State(
            leader=n == 0,
            planned_units=2,
            relations={rel, self.etcd},
            secrets=self.secrets,
            stored_states=self.stored[n],
        )
        return state, rel

    def run(self, n: int, event: str, **env: str) -> None:
        """Run one hook on app/n and publish its writes (what Juju does at a clean hook end)."""
        state, rel = self.state(n)
        ctx = self.ctx[n]
        if event == "relation_changed":
            out = ctx.run(ctx.on.relation_changed(rel, remote_unit=1 - n), state)
        elif event == "update_status":
            out = ctx.run(ctx.on.update_status(), state)
        else:
            with pytest.MonkeyPatch.context() as mp:
                for key, value in env.items():
                    mp.setenv(key, value)
                with ctx(ctx.on.update_status(), state) as mgr:
                    getattr(mgr.charm.on, event).emit()
                    out = mgr.run()
        got = out.get_relation(rel.id)
        self.unit_bags[n] = dict(got.local_unit_data)
        self.stored[n] = frozenset(out.stored_states)
        if n == 0:
            self.app_bag = dict(got.local_app_data)
        self.secrets = frozenset(out.secrets)

    def backend(self, n: int) -> str:
        return self.unit_bags[n].get("rollingops-backend", "peer")

    def grant(self) -> dict | None:
        raw = self.app_bag.get("rollingops-grant")
        return json.loads(raw) if raw else None


@pytest.fixture
def etcd(tmp_path: pathlib.Path):
    if find_etcd() is None:
        pytest.skip("no etcd/etcdctl binary found (install etcd-server and etcd-client)")
    server = EtcdServer(tmp_path / "etcd-r10")
    server.start()
    yield server
    server.stop()


def test_etcd_stops_while_a_unit_holds_the_lock_fallback_then_return(
    tmp_path: pathlib.Path, etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch
):
    CALLS.clear()
    prefix = etcd.allow("/coordinated-ops/rollingops/v1/r10/")
    harness = WorkerHarness(tmp_path / "units", etcd, prefix)
    try:
        _run_scenario(harness, etcd, monkeypatch)
    finally:
        harness.stop_all()


def _run_scenario(harness: WorkerHarness, etcd: EtcdServer, monkeypatch: pytest.MonkeyPatch):
    # app/1 has one queued op and is on etcd; its worker really holds the etcd lock.
    leader = harness.add_unit("app/0", pending=0)
    holder: FakeUnit = harness.add_unit("app/1", pending=1, block=True)
    for unit in (leader, holder):
        BASE_DIRS[unit.name] = str(unit.base_dir)
    # The stop path's pidfd wait must not hang the test if something goes wrong.
    worker = harness.start_worker(holder, forbid_sleep=False)
    holder.wait_blocked_hook(timeout=60)
    token = next(
        r["token"] for r in holder.dispatches() if r["event"] == "rollingops_lock_granted"
    )
    lock = EtcdLock(etcd.client(), harness.prefix, "probe", "probe")
    held = lock.holder()
    assert held is not None and held.owner == holder.owner and held.token == token
    # On etcd, app/1 publishes only its backend; its queue is in its stored state.
    local = {"etcd_local": {"queue": queue(1), "seq": 1, "done": ""}}
    juju = TwoUnits(
        {"rollingops-version": "1", "rollingops-token": "0", "rollingops-mode": "etcd"},
        {
            0: {"rollingops-version": "1", "rollingops-queue": "[]", "rollingops-seq": "0",
                "rollingops-backend": "etcd"},
            1: {"rollingops-version": "1", "rollingops-queue": "[]", "rollingops-seq": "0",
                "rollingops-backend": "etcd"},
        },
        {0: frozenset(), 1: frozenset({testing.StoredState(
            "_stored", owner_path="Charm/RollingOpsManager[rolling-ops-manager]", content=local
        )})},
    )  # fmt: skip

    # etcd goes away while app/1 holds the lock and has not run its operation yet.
    etcd.stop()
    # The leader's hooks during the outage: app/1 is still on etcd, so no peer grant, whatever
    # the leader itself decides about the mode.
    for _ in range(2):
        juju.run(0, "update_status")
        assert juju.grant() is None
    assert worker.poll() is None  # app/1's worker is alive and still "holds" the lock

    # app/1's queued rollingops_lock_granted dispatch runs: the fence check cannot reach etcd ->
    # fall back: stop the worker (flock-guarded SIGTERM), run nothing, acknowledge peer mode.
    juju.run(1, "rollingops_lock_granted", ROLLINGOPS_LOCK_TOKEN=str(token))
    assert CALLS == []
    assert juju.backend(1) == "peer" and juju.unit_bags[1]["rollingops-etcd-cleanup"] == "true"
    assert [op["id"] for op in json.loads(juju.unit_bags[1]["rollingops-queue"])] == [1]
    assert worker.poll() is not None and not _files.worker_alive(holder.base_dir)
    result = _files.read_result(holder.base_dir)
    assert result is not None and result.result == "not-granted" and result.token == token

    # Only now can the leader switch the application to peer and grant app/1 on the peer backend.
    for _ in range(3):
        juju.run(0, "relation_changed")
        if juju.grant():
            break
    grant = juju.grant()
    assert grant is not None and grant["unit"] == "app/1"
    assert juju.app_bag["rollingops-mode"] == "peer" and juju.backend(0) == "peer"
    assert grant["token"] > token  # one token sequence: above the etcd holder's, in epoch 1
    juju.run(1, "relation_changed")
    assert [(unit, g.backend.value, g.token) for unit, g in CALLS] == [
        ("app/1", "peer", grant["token"])
    ]
    juju.run(0, "relation_changed")  # the leader sees the acknowledgement and releases
    assert juju.grant() is None

    # etcd comes back; the queues are drained: the leader returns the application to etcd, and
    # app/1 removes its stale etcd lock (the dead worker's) before it switches back.
    etcd.start()
    held = lock.holder()
    assert held is not None and held.owner == holder.owner  # still there: nobody released it
    juju.run(0, "update_status")
    assert juju.app_bag["rollingops-mode"] == "etcd"
    assert juju.app_bag["rollingops-epoch"] == "2"  # etcd (0, a version 1 bag) -> peer -> etcd
    juju.run(1, "relation_changed")
    juju.run(0, "relation_changed")
    assert juju.backend(1) == "etcd" and "rollingops-etcd-cleanup" not in juju.unit_bags[1]
    assert juju.backend(0) == "etcd"
    assert lock.holder() is None  # the stale lock is gone: etcd is usable by everyone again
    assert len(CALLS) == 1  # the operation ran exactly once
    lock.close()
