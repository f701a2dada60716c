"""`RollingOpsManager.busy_units()` and the demo's action guards with units on the etcd backend.

A unit on etcd keeps its queue in its stored state and publishes none, so the other units can
only learn of its work from etcd: its ticket (`P waiting/O`, `P waiting-sync/O`) or the lock
(`P lock`). etcd here is the in-memory FakeEtcd of the simulator behind the real EtcdLock and
the real decoding (`tests/functional/test_rollingops_busy.py` runs the same read on a real etcd).
Mocked: the Juju controller (ops.testing), the demo service (FakeWorkload), the worker process.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from charmlibs.rollingops import BusyUnits, _certs, _etcd_lock, _files
from ops import testing

import upgrade
from demo.fake_etcd import FakeEtcd, FakeEtcdClient
from tests.unit.conftest import charm_context

APP = "coordinated-ops"
UUID = "8e1f2c3d-0000-4000-8000-00000000beef"
PREFIX = _etcd_lock.lock_prefix(APP)  # the demo's cluster_id is its application name
PLANNED = 9
CREDS: dict[str, str] = {}


def owner(unit: str, model: str = UUID) -> str:
    return _etcd_lock.owner_name(model, unit)


class Etcd:
    """The fake cluster, and every client the charm built (there must be none in a status hook)."""

    def __init__(self):
        self.fake = FakeEtcd(lambda: 0, ttl_ticks=60)
        self.clients: list[dict[str, Any]] = []
        self.client: Any = FakeEtcdClient(self.fake)

    def new_client(self, *args: Any, **kwargs: Any) -> FakeEtcdClient:
        self.clients.append(kwargs)
        return FakeEtcdClient(self.fake, **kwargs)

    def put(self, key: str, holder: str, unit: str) -> None:
        """Put `P key` on a live lease, valued as the worker of `unit` (owner `holder`) does."""
        lease = self.fake.lease_grant(60, keeper=lambda: True)
        value = json.dumps({"owner": holder, "unit": unit, "kind": "async"})
        self.client.put(PREFIX + key, value, lease)


@pytest.fixture
def etcd(monkeypatch, fake_workload, tmp_path) -> Etcd:
    """This unit's local etcd config (as the provider's answer writes it) and a fake etcd."""
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    monkeypatch.setattr(upgrade, "HEALTH_CHECK_WAIT", 0)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: None)  # the worker: not here
    creds = CREDS or CREDS.update(_certs.generate_client_credentials("unit-test")) or CREDS
    _files.write_config(
        tmp_path / "var/lib/rollingops",
        endpoints=["127.0.0.1:2379"],
        prefix=PREFIX,
        owner="written-by-the-relation-hook",
        server_ca_pem=creds["client-ca"],
        cert_pem=creds["client-cert"],
        key_pem=creds["client-key"],
    )
    world = Etcd()
    monkeypatch.setattr(_etcd_lock, "EtcdClient", world.new_client)
    return world


def on_etcd(queue: list | None = None) -> dict[str, str]:
    """A unit bag of a unit on the etcd backend: it publishes no queue."""
    return {"rollingops-version": "1", "rollingops-backend": "etcd", "rollingops-seq": "0",
            "rollingops-queue": json.dumps(queue or [])}  # fmt: skip


def state(leader: bool = False, peers: dict[int, dict[str, str]] | None = None) -> testing.State:
    """Unit 1 (or 0 when leader) with the others on etcd; the app on etcd; v0 and upgrade idle."""
    me = 0 if leader else 1
    others = peers if peers is not None else {i: on_etcd() for i in range(3) if i != me}
    app = {"rollingops-version": "2", "rollingops-epoch": "1", "rollingops-token": "0",
           "rollingops-mode": "etcd"}  # fmt: skip
    rolling = testing.PeerRelation(
        "rollingops", local_app_data=app, local_unit_data=on_etcd(), peers_data=others
    )
    upgrade_rel = testing.PeerRelation(
        "upgrade",
        local_unit_data={"state": "idle"},
        peers_data={i: {"state": "idle"} for i in others},
    )
    relations = {rolling, upgrade_rel, testing.PeerRelation("restart"), testing.Relation("etcd")}
    return testing.State(
        planned_units=PLANNED,
        leader=leader,
        relations=relations,
        model=testing.Model("test", uuid=UUID),
    )


def restart_action(unit_id: int, st: testing.State, **params: Any) -> testing.State:
    context = charm_context(app_name=APP, unit_id=unit_id)
    params = {"delay": 0, "engine": "rollingops", "sync": False, **params}
    return context.run(context.on.action("restart", params=params), st)


def busy_units(unit_id: int, st: testing.State) -> BusyUnits:
    context = charm_context(app_name=APP, unit_id=unit_id)
    with context(context.on.update_status(), st) as mgr:
        return mgr.charm.restarts.engines["rollingops"].manager.busy_units()  # type: ignore[attr-defined]


# --- the cross-engine refusal and the upgrade guards (failed on main: units on etcd looked idle)


@pytest.mark.parametrize("key", ["waiting/", "waiting-sync/", "lock"])
def test_another_engine_is_refused_while_a_unit_on_etcd_has_a_ticket_or_the_lock(etcd, key):
    holder = owner(f"{APP}/0")
    etcd.put(key + holder if key != "lock" else key, holder, f"{APP}/0")
    with pytest.raises(testing.ActionFailed) as failure:
        restart_action(1, state(), engine="v0")
    assert failure.value.message == (
        f"a restart, remount or upgrade step on the 'rollingops' lock is in flight ({APP}/0); "
        "wait for it to finish"
    )
    assert [client["attempts"] for client in etcd.clients] == [1]  # one client, one read


def test_pre_upgrade_check_is_not_refused_by_work_on_the_one_lock(etcd, fake_workload):
    # Each unit's upgrade step queues on the rollingops lock: it waits for that work, so
    # nothing is refused, and etcd is not even read.
    fake_workload.installed, fake_workload.running = "1.0.0", True
    etcd.put(f"waiting/{owner(f'{APP}/2')}", owner(f"{APP}/2"), f"{APP}/2")
    context = charm_context(app_name=APP, unit_id=0)
    context.run(context.on.action("pre-upgrade-check"), state(leader=True))
    assert (context.action_results or {})["message"].startswith("Pre-upgrade check successful")
    assert etcd.clients == []


def test_the_upgrade_action_is_not_refused_by_work_on_the_one_lock(etcd, fake_workload):
    fake_workload.installed, fake_workload.running = "1.0.0", True
    etcd.put(f"waiting/{owner(f'{APP}/1')}", owner(f"{APP}/1"), f"{APP}/1")
    context = charm_context(app_name=APP, unit_id=0)
    context.run(context.on.action("upgrade", params={"version": "1.1.0"}), state(leader=True))
    assert (context.action_results or {})["message"].startswith("upgrade to 1.1.0 started")
    assert etcd.clients == []


def test_work_queued_here_counts_before_the_worker_took_a_ticket(etcd):
    out = restart_action(1, state())  # queued in this unit's stored state, no ticket yet
    assert not etcd.fake.keys and not etcd.clients
    with pytest.raises(testing.ActionFailed, match=rf"'rollingops' lock is in flight \({APP}/1\)"):
        restart_action(1, out, engine="v0")


# --- what is not ours, and what cannot be read ---------------------------------------------------


def test_tickets_of_another_application_or_model_under_the_same_prefix_are_ignored(etcd):
    other_app, other_model = owner("other-app/0"), owner(f"{APP}/0", model="another-model")
    etcd.put(f"waiting/{other_app}", other_app, "other-app/0")
    etcd.put(f"waiting-sync/{other_model}", other_model, f"{APP}/0")
    etcd.put("lock", other_app, "other-app/0")
    etcd.put(f"units/{owner(f'{APP}/0')}", owner(f"{APP}/0"), f"{APP}/0")  # not a ticket
    assert busy_units(1, state()) == BusyUnits()
    context = charm_context(app_name=APP, unit_id=1)
    params = {"delay": 0, "engine": "v0", "sync": False}
    context.run(context.on.action("restart", params=params), state())
    assert (context.action_results or {})["engine"] == "v0"  # rollingops is idle: v0 takes it


def test_an_unreachable_etcd_refuses_the_action_with_the_reason(etcd):
    etcd.fake.outage(0, 10)
    with pytest.raises(testing.ActionFailed) as failure:
        restart_action(1, state(), engine="v0")
    message = failure.value.message
    assert message.startswith("cannot tell whether a rollingops restart is in flight: ")
    assert "coordinated-ops/0, coordinated-ops/2 use it" in message and "unreachable" in message


def test_no_etcd_read_when_every_other_unit_is_on_the_peer_backend(etcd):
    peers = {0: {"rollingops-version": "1", "rollingops-backend": "peer"}}
    assert busy_units(1, state(peers=peers)) == BusyUnits()
    assert etcd.clients == []  # grpc is not even imported on this path


def test_unreadable_peer_data_answers_unknown(etcd):
    peers = {0: {"rollingops-version": "99"}}
    result = busy_units(1, state(peers=peers))
    assert result.busy and result.units == ()
    assert result.unknown == "the rollingops data of coordinated-ops/0 is unreadable"


# --- the status path never talks to etcd ---------------------------------------------------------


@pytest.mark.parametrize("leader", [False, True])
def test_update_status_and_collect_status_build_no_etcd_client(etcd, leader):
    etcd.put(f"waiting/{owner(f'{APP}/2')}", owner(f"{APP}/2"), f"{APP}/2")
    context = charm_context(app_name=APP, unit_id=0 if leader else 1)
    out = context.run(context.on.update_status(), state(leader=leader))
    assert etcd.clients == []
    assert out.unit_status == testing.ActiveStatus("serving 1.0.0")
