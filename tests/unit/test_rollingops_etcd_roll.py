"""Operator controls on the etcd backend: done / failed, the halt, resume and the progress line.

The charm runs in ops.testing with the application on etcd; etcd is the simulator's FakeEtcd
behind the real EtcdLock (see test_rollingops_busy.py for the fixture). The roll record and the
halt are put as the workers' release transaction writes them (`P roll/<model>.<app>`, the pause
key with the halt reason); tests/functional/test_rollingops_etcd_roll.py has that transaction on
a real etcd.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from charmlibs.rollingops import _files
from charmlibs.rollingops._controls import PAUSED_BY_LEADER
from ops import testing

from tests.unit.conftest import charm_context
from tests.unit.test_rollingops_busy import APP, PREFIX, UUID, etcd, owner, state

__all__ = ["etcd"]  # the fixture, used by name

ROLL_KEY = f"{PREFIX}roll/{UUID}.{APP}"
PAUSE_KEY = f"{PREFIX}paused/{UUID}.{APP}"
HALT = f"halted after 1 failed operation(s): {APP}/2"


def record(**fields) -> str:
    return json.dumps({"active": True, "done": 3, "failed": [f"{APP}/2"], "strikes": 1, **fields})


def test_rolling_status_on_etcd_reports_done_failed_and_the_halt(etcd):
    etcd.client.put(ROLL_KEY, record())
    etcd.client.put(PAUSE_KEY, HALT)
    etcd.put(f"waiting/{owner(f'{APP}/0')}", owner(f"{APP}/0"), f"{APP}/0")
    context = charm_context(app_name=APP, unit_id=1)
    context.run(context.on.action("rolling-status"), state())
    results = context.action_results or {}
    assert results["backend"] == "etcd"
    assert (results["done"], results["failed"], results["failed-units"]) == ("3", "1", f"{APP}/2")
    assert results["paused"] == "true" and results["paused-reason"] == HALT
    assert results["queue"] == f"{APP}/0"
    assert "3 done, 1 failed" in results["summary"]
    assert len(etcd.clients) == 1  # one client, one read


def test_a_malformed_roll_record_reads_as_a_new_roll(etcd, caplog):
    etcd.client.put(ROLL_KEY, "[1, 2")
    context = charm_context(app_name=APP, unit_id=1)
    context.run(context.on.action("rolling-status"), state())
    assert (context.action_results or {})["done"] == "0"
    assert "bad roll record" in caplog.text


@pytest.fixture
def leader_config(etcd, tmp_path):
    """The leader's local etcd config with its real owner (the provider's answer writes it)."""
    from tests.unit.test_rollingops_busy import CREDS

    _files.write_config(
        tmp_path / "var/lib/rollingops",
        endpoints=["127.0.0.1:2379"],
        prefix=PREFIX,
        owner=owner(f"{APP}/0"),
        server_ca_pem=CREDS["client-ca"],
        cert_pem=CREDS["client-cert"],
        key_pem=CREDS["client-key"],
    )
    return etcd


def test_the_leader_resumes_a_halt_recorded_in_etcd(leader_config):
    etcd = leader_config
    etcd.client.put(ROLL_KEY, record())
    etcd.client.put(PAUSE_KEY, HALT)
    context = charm_context(app_name=APP, unit_id=0)
    context.run(context.on.action("resume"), state(leader=True))
    assert PAUSE_KEY not in etcd.fake.keys
    assert json.loads(etcd.fake.keys[ROLL_KEY].value)["strikes"] == 0


def test_resume_on_etcd_with_nothing_paused_fails_and_changes_nothing(leader_config):
    etcd = leader_config
    etcd.client.put(ROLL_KEY, record(strikes=1))  # one strike, no halt (halt-after 2, say)
    etcd.client.put(PAUSE_KEY, PAUSED_BY_LEADER)  # the leader's (a closed window), not a halt
    context = charm_context(app_name=APP, unit_id=0)
    with pytest.raises(Exception, match="not paused"):
        context.run(context.on.action("resume"), state(leader=True))
    assert json.loads(etcd.fake.keys[ROLL_KEY].value)["strikes"] == 1
    assert PAUSE_KEY in etcd.fake.keys


def test_the_progress_line_on_etcd(etcd):
    etcd.client.put(ROLL_KEY, record(failed=[], strikes=0))
    etcd.put("lock", owner(f"{APP}/1"), f"{APP}/1")
    etcd.put(f"waiting/{owner(f'{APP}/2')}", owner(f"{APP}/2"), f"{APP}/2")
    context = charm_context(app_name=APP, unit_id=0)
    with context(context.on.update_status(), state(leader=True)) as mgr:
        line = mgr.charm.restarts.engines["rollingops"].progress()  # type: ignore[attr-defined]
    assert line == f"restart 4/5: {APP}/1"


def test_the_work_hint_carries_halt_after_failures_to_the_worker(tmp_path):
    with _files.queue_lock(tmp_path):  # makes the directory, as the hook's hand-off does
        _files.write_work(tmp_path, 2, 7, 2, 3)
    hint = _files.read_work(tmp_path)
    assert hint is not None and (hint.slots, hint.halt_after) == (2, 3)
    _files.write_work(tmp_path, 2, 7)
    assert _files.read_work(tmp_path).halt_after is None  # type: ignore[union-attr]


# --- a halt in etcd in the statuses of the units that wait on it ---------------------------------


def wait_on_the_halt(etcd, tmp_path, unit: str) -> Any:
    """`unit`'s live worker tries to acquire on the halted lock, as `_worker.Worker` does.

    The real transaction on the fake etcd (`_try_acquire`: refused by the pause key, whose value
    it reads) and the real worker's record of it (`Worker._note_pause` writes
    worker-status.json); only the process around them is missing, so this test holds its
    `worker.lock` (the hook then sees a live worker and starts none).
    """
    from charmlibs.rollingops._etcd_lock import EtcdLock
    from charmlibs.rollingops._worker import Worker

    from demo.etcd_world import _LeaseHandle

    base = tmp_path / "var/lib/rollingops"
    lock = EtcdLock(etcd.client, PREFIX, owner(unit), unit)
    lease: Any = _LeaseHandle(etcd.fake, etcd.fake.lease_grant(60, keeper=lambda: True))
    position = lock.create_ticket(lease)
    token, _, _ = lock._try_acquire(lease, position, False)
    assert token == 0 and lock.pause_seen == HALT
    Worker(str(base), unit, str(tmp_path))._note_pause(lock.pause_seen)
    worker_lock = _files.hold_worker_lock(base)
    assert worker_lock is not None
    return worker_lock  # the caller closes it (the worker's exit)


def test_a_unit_waiting_on_an_etcd_halt_names_it_and_resume(etcd, tmp_path):
    """Failed on the old code: the unit said only "restart queued (rollingops, etcd)"."""
    etcd.client.put(ROLL_KEY, record())
    etcd.client.put(PAUSE_KEY, HALT)
    context = charm_context(app_name=APP, unit_id=1)
    params = {"delay": 0, "engine": "rollingops", "sync": False}
    queued = context.run(context.on.action("restart", params=params), state())
    clients = len(etcd.clients)
    with wait_on_the_halt(etcd, tmp_path, f"{APP}/1"):
        out = context.run(context.on.update_status(), queued)
    assert out.unit_status == testing.WaitingStatus(
        f"restart queued (rollingops, etcd) on a paused lock ({HALT}): "
        "`resume` on the leader continues"
    )
    assert len(etcd.clients) == clients  # the hook asked etcd nothing
    # The worker died (its flock is gone) without rewriting the file: its record no longer counts.
    dead = context.run(context.on.update_status(), out)
    assert dead.unit_status == testing.WaitingStatus("restart queued (rollingops, etcd)")


def test_the_leader_waiting_on_an_etcd_halt_shows_it_until_resume(leader_config, tmp_path):
    etcd = leader_config
    etcd.client.put(ROLL_KEY, record())
    etcd.client.put(PAUSE_KEY, HALT)
    context = charm_context(app_name=APP, unit_id=0)
    params = {"delay": 0, "engine": "rollingops", "sync": False}
    queued = context.run(context.on.action("restart", params=params), state(leader=True))
    with wait_on_the_halt(etcd, tmp_path, f"{APP}/0"):
        out = context.run(context.on.update_status(), queued)
        assert out.app_status == testing.BlockedStatus(
            f"rollingops lock paused ({HALT}): `rolling-status` shows what waits; run resume"
        )
        assert HALT in out.unit_status.message
        resumed = context.run(context.on.action("resume"), out)
    assert PAUSE_KEY not in etcd.fake.keys
    # This hook deleted the key: the worker's record (rewritten when the deletion wakes it) is
    # stale already, so neither status shows the halt any more.
    assert HALT not in resumed.app_status.message
    assert HALT not in resumed.unit_status.message
