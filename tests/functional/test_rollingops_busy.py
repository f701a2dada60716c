"""`RollingOpsManager.busy_units()` against a real etcd set up as charmed-etcd sets it up.

Real: etcd (mTLS, our user is our certificate's common name, RBAC on the test's prefix), the
library's gRPC client and, in one test, a real worker process (tests/functional/worker_harness.py).
Stand-in: the Juju controller (ops.testing runs the hook in which `busy_units` is called). The
other units are EtcdLock objects with their own clients and leases, keyed as their workers key
their tickets (owner `<model uuid>.<app>-<n>`).
"""

from __future__ import annotations

import json
import pathlib
import time

import ops
from charmlibs.rollingops import BusyUnits, RollingOpsManager, _files
from charmlibs.rollingops._etcd_lock import EtcdLock, Lease, owner_name
from ops import testing

from tests.functional.etcd_server import EtcdServer, free_port
from tests.functional.test_rollingops_etcd import wait_for_key
from tests.functional.worker_harness import WorkerHarness

APP = "app"
UUID = "model-uuid"  # the model uuid the worker harness gives its units' owners
META = {
    "name": APP,
    "peers": {"restart": {"interface": "rollingops"}},
    "requires": {"etcd": {"interface": "etcd_client", "limit": 1, "optional": True}},
}
BASE: list[str] = [""]


class BusyCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.rolling = RollingOpsManager(
            self,
            callback_targets={"restart": lambda: None},
            peer_relation_name="restart",
            etcd_relation_name="etcd",
            cluster_id="busy",
            base_dir=BASE[0],
        )


def configure_unit_1(base: pathlib.Path, server: EtcdServer, prefix: str, endpoint: str = ""):
    """Unit app/1's local etcd config, as the provider's answer writes it."""
    BASE[0] = str(base)
    _files.write_config(
        base,
        endpoints=[endpoint or server.endpoint],
        prefix=prefix,
        owner=owner_name(UUID, f"{APP}/1"),
        server_ca_pem=pathlib.Path(server.server_ca).read_text(),
        cert_pem=server.credentials["client-cert"],
        key_pem=server.credentials["client-key"],
    )


def busy_units_of_unit_1(timeout: float = 5.0) -> BusyUnits:
    """`busy_units()` in a hook of app/1; app/0 and app/2 are on etcd (they publish no queue)."""
    on_etcd = {"rollingops-version": "1", "rollingops-backend": "etcd", "rollingops-queue": "[]"}
    app = {"rollingops-version": "2", "rollingops-epoch": "1", "rollingops-mode": "etcd"}
    peer = testing.PeerRelation(
        "restart", local_app_data=app, local_unit_data=on_etcd, peers_data={0: on_etcd, 2: on_etcd}
    )
    state = testing.State(
        relations={peer, testing.Relation("etcd")},
        model=testing.Model("m", uuid=UUID),
        planned_units=3,
    )
    ctx = testing.Context(BusyCharm, meta=META, app_name=APP, unit_id=1)
    with ctx(ctx.on.update_status(), state) as mgr:
        result = mgr.charm.rolling.busy_units(timeout=timeout)  # type: ignore[attr-defined]
        mgr.run()
    return result


def test_busy_units_sees_another_units_ticket_and_ignores_other_apps_and_models(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: pathlib.Path
):
    configure_unit_1(tmp_path, etcd_server, etcd_prefix)
    assert busy_units_of_unit_1() == BusyUnits()  # nothing in etcd yet

    def lock(model: str, unit: str) -> EtcdLock:
        return EtcdLock(etcd_server.client(), etcd_prefix, owner_name(model, unit), unit)

    ours = lock(UUID, f"{APP}/0")
    other_app = lock(UUID, "other-app/0")  # another application sharing the cluster_id
    other_model = lock("another-model-uuid", f"{APP}/2")  # our app's name, in another model
    app_2_named_like_us = lock(UUID, f"{APP}-2/0")  # owner "<uuid>.app-2-0": not app/2
    with (
        Lease(ours.client, ttl=30) as lease,
        Lease(other_app.client, ttl=30) as other_lease,
        Lease(other_model.client, ttl=30) as model_lease,
        Lease(app_2_named_like_us.client, ttl=30) as named_lease,
    ):
        token = other_app.acquire(other_lease, timeout=10)  # holds P lock and its ticket
        other_model.create_ticket(model_lease, sync=True)
        app_2_named_like_us.create_ticket(named_lease)
        assert busy_units_of_unit_1() == BusyUnits()  # none of those is ours

        ours.create_ticket(lease)
        assert busy_units_of_unit_1() == BusyUnits(units=(f"{APP}/0",))

        other_app.release(token)
        other_model.delete_ticket(sync=True)  # async waiters stand back while a sync one waits
        app_2_named_like_us.delete_ticket()  # older than ours: it would be served first
        assert ours.acquire(lease, timeout=10)  # app/0 now holds the lock (ticket kept)
        ours.delete_ticket()
        assert busy_units_of_unit_1() == BusyUnits(units=(f"{APP}/0",))  # the lock alone counts
    assert busy_units_of_unit_1() == BusyUnits()  # leases revoked: lock and tickets are gone
    for each in (ours, other_app, other_model, app_2_named_like_us):
        each.close()


def test_busy_units_sees_a_real_workers_ticket_soon_after_it_starts(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: pathlib.Path
):
    """The window in which another unit's work is invisible: worker start to its first ticket."""
    harness = WorkerHarness(tmp_path / "workers", etcd_server, etcd_prefix)
    try:
        unit = harness.add_unit(f"{APP}/2", pending=1, block=True)  # owner model-uuid.app-2
        configure_unit_1(tmp_path / "me", etcd_server, etcd_prefix)
        ticket = f"{etcd_prefix}waiting/{unit.owner}"
        client = etcd_server.client()
        started = time.monotonic()
        harness.start_worker(unit)
        wait_for_key(client, ticket, timeout=30)  # an etcd watch, no polling
        window = time.monotonic() - started
        client.close()
        assert busy_units_of_unit_1() == BusyUnits(units=(f"{APP}/2",))
        unit.wait_blocked_hook()  # the worker holds the lock, its hook runs
        assert busy_units_of_unit_1() == BusyUnits(units=(f"{APP}/2",))
        print(f"worker start to visible ticket: {window * 1000:.0f} ms")
        assert window < 10, window
    finally:
        harness.stop_all()


def test_an_unreachable_etcd_answers_unknown_within_the_timeout(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: pathlib.Path
):
    configure_unit_1(tmp_path, etcd_server, etcd_prefix, endpoint=f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    result = busy_units_of_unit_1(timeout=1.0)
    elapsed = time.monotonic() - started
    assert result.busy and result.units == ()
    assert result.unknown is not None
    assert result.unknown.startswith("cannot read the etcd lock (app/0, app/2 use it): ")
    assert elapsed < 5, elapsed  # one attempt, bounded by the timeout (plus the hook's run)
    print(json.dumps({"unreachable_answer_s": round(elapsed, 3)}))
