"""Real rolling-ops worker processes on a real mTLS etcd.

What is checked: one holder at a time and every op served; increasing fencing tokens; no fixed
sleeps in the worker; a killed worker is found dead by its flock (not by a PID) and replaced; the
worker starts with ``sys.executable -m`` whatever the charm's layout.

Workers are launched exactly as the hook side launches them (``sys.executable -m
charmlibs.rollingops._worker``) from a copy of the package that lives under ``lib/`` only, with
``time.sleep`` made to raise in the worker processes (happy path never sleeps). Only ``juju-exec``
is a stand-in (no Juju agent can run here): see worker_harness.py.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import signal
import time

import pytest
from charmlibs.rollingops import _files
from charmlibs.rollingops._etcd_client import prefix_end
from charmlibs.rollingops._etcd_lock import EtcdLock, Lease

from tests.functional.etcd_server import EtcdServer
from tests.functional.test_rollingops_etcd import wait_for_key
from tests.functional.worker_harness import FakeUnit, WorkerHarness


@pytest.fixture
def harness(tmp_path: pathlib.Path, etcd_server: EtcdServer, etcd_prefix: str):
    h = WorkerHarness(tmp_path, etcd_server, etcd_prefix)
    yield h
    h.stop_all()


def wait_exit(unit: FakeUnit, timeout: float = 120) -> int:
    assert unit.process is not None
    return unit.process.wait(timeout)


def lock_grants(units: list[FakeUnit]) -> list[dict]:
    records = [r for u in units for r in u.dispatches() if r["event"] == "rollingops_lock_granted"]
    return sorted(records, key=lambda r: r["start"])


def test_workers_serve_all_ops_one_at_a_time(harness: WorkerHarness, etcd_server: EtcdServer):
    ops_per_unit = 17  # 3 units x 17 = 51 operations
    units = [harness.add_unit(f"app/{n}", pending=ops_per_unit) for n in range(3)]
    for unit in units:
        harness.start_worker(unit)
    for unit in units:
        assert wait_exit(unit) == 0, (unit.base_dir / "worker.log").read_text()

    grants = lock_grants(units)
    assert len(grants) == 3 * ops_per_unit
    assert all(g["fenced"] and g["result"] == "release" for g in grants)
    for before, after in itertools.pairwise(grants):
        assert before["end"] <= after["start"], f"overlap: {before} / {after}"
        assert before["token"] < after["token"]  # fencing tokens strictly increase
    for unit in units:
        assert len(unit.dispatches()) == ops_per_unit
        assert _files.read_work(unit.base_dir) == _files.WorkHint(pending=0, head=ops_per_unit + 1)
        assert _files.read_worker_status(unit.base_dir) == _files.WorkerStatus()
        assert not _files.worker_alive(unit.base_dir)
        log = (unit.base_dir / "worker.log").read_text()
        assert "time.sleep" not in log
    client = etcd_server.client()
    left = client.range(harness.prefix, prefix_end(harness.prefix)).kvs
    # Nothing left but the roll record, which the workers kept in their release transactions.
    assert [kv.key for kv in left] == [f"{harness.prefix}roll/model-uuid.app"]
    assert json.loads(left[0].value) == {"active": False, "done": 51, "failed": [], "strikes": 0}


def test_a_failed_operation_halts_the_roll_until_resume(
    harness: WorkerHarness, etcd_server: EtcdServer
):
    """Real workers: the failure is recorded and the halt put as the slot is released."""
    first = harness.add_unit("app/0", pending=1, halt_after=1, results=["dropped"])
    second = harness.add_unit("app/1", pending=1, halt_after=1)
    harness.start_worker(first)
    assert wait_exit(first) == 0, (first.base_dir / "worker.log").read_text()
    client = etcd_server.client()
    pause_key = f"{harness.prefix}paused/model-uuid.app"
    assert client.get(pause_key).value == b"halted after 1 failed operation(s): app/0"  # type: ignore[union-attr]
    harness.start_worker(second)
    wait_for_key(client, f"{harness.prefix}waiting/model-uuid.app-1")  # in line, no slot
    assert EtcdLock(client, harness.prefix, "model-uuid.app-0", "app/0").resume()
    assert wait_exit(second) == 0, (second.base_dir / "worker.log").read_text()
    assert [grant["result"] for grant in lock_grants([first, second])] == ["dropped", "release"]
    roll = json.loads(client.get(f"{harness.prefix}roll/model-uuid.app").value)  # type: ignore[union-attr]
    assert roll == {"active": False, "done": 1, "failed": ["app/0"], "strikes": 0}


def wait_for_status(unit: FakeUnit, check, timeout: float = 30.0) -> _files.WorkerStatus:
    """Re-read worker-status.json until ``check(status)`` (test side only); its last value."""
    deadline = time.monotonic() + timeout
    while True:
        status = _files.read_worker_status(unit.base_dir)
        if status is not None and check(status):
            return status
        if time.monotonic() > deadline:
            log = (unit.base_dir / "worker.log").read_text()
            raise AssertionError(f"worker status still {status}\n{log}")
        time.sleep(0.05)


def test_a_worker_waiting_on_a_halt_records_it_until_resume(
    harness: WorkerHarness, etcd_server: EtcdServer
):
    """worker-status.json names the halt while the worker waits on it; resume clears it.

    Failed on the old code: the worker wrote no `paused` and the hooks could not see the halt.
    """
    first = harness.add_unit("app/0", pending=1, halt_after=1, results=["dropped"])
    second = harness.add_unit("app/1", pending=2, halt_after=1)
    harness.start_worker(first)
    assert wait_exit(first) == 0, (first.base_dir / "worker.log").read_text()
    assert _files.read_worker_status(first.base_dir) == _files.WorkerStatus()  # waits on nothing
    harness.start_worker(second)
    halt = "halted after 1 failed operation(s): app/0"
    waiting = wait_for_status(second, lambda status: status.paused is not None)
    assert waiting == _files.WorkerStatus(paused=halt)
    assert _files.worker_alive(second.base_dir) and not second.dispatches()
    client = etcd_server.client()
    operator = EtcdLock(client, harness.prefix, "model-uuid.app-9", "app/9")
    with operator.sync_lock(timeout=10):  # the sync lock ignores the pause: the slot is taken
        assert operator.resume()
        # The key's deletion woke the worker; its attempt found the slot taken and no pause.
        resumed = wait_for_status(second, lambda status: status.paused is None)
        assert resumed == _files.WorkerStatus() and not second.dispatches()
    assert wait_exit(second) == 0, (second.base_dir / "worker.log").read_text()
    assert [grant["result"] for grant in lock_grants([second])] == ["release", "release"]
    assert _files.read_worker_status(second.base_dir) == _files.WorkerStatus()
    assert "no longer paused" in (second.base_dir / "worker.log").read_text()


def test_a_resume_that_keeps_the_window_pause_wakes_the_waiter_off_the_halt(
    harness: WorkerHarness, etcd_server: EtcdServer
):
    """resume(keep_paused=True), a closed maintenance window: the key stays, as the leader's.

    Putting "paused" over the halt deletes nothing, so `P wake/<app>` is put and deleted to wake
    the waiter: it reads the new value and no longer reports the halt.
    """
    first = harness.add_unit("app/0", pending=1, halt_after=1, results=["dropped"])
    second = harness.add_unit("app/1", pending=1, halt_after=1)
    harness.start_worker(first)
    assert wait_exit(first) == 0, (first.base_dir / "worker.log").read_text()
    harness.start_worker(second)
    halt = "halted after 1 failed operation(s): app/0"
    wait_for_status(second, lambda status: status.paused == halt)
    client = etcd_server.client()
    leader = EtcdLock(client, harness.prefix, "model-uuid.app-0", "app/0")
    assert leader.resume(keep_paused=True)
    assert wait_for_status(second, lambda status: status.paused != halt).paused == "paused"
    assert not client.range(leader.wake_key).kvs and not second.dispatches()
    leader.set_paused(False)  # the window opens
    assert wait_exit(second) == 0, (second.base_dir / "worker.log").read_text()
    assert _files.read_worker_status(second.base_dir) == _files.WorkerStatus()


def test_killed_holder_frees_lock_at_lease_expiry_and_restarts(
    harness: WorkerHarness, etcd_server: EtcdServer
):
    unit = harness.add_unit("app/0", pending=1, block=True)
    process = harness.start_worker(unit, lease_ttl=2)
    client = etcd_server.client()
    unit.wait_blocked_hook()  # the worker holds the lock and its hook is running
    assert _files.worker_alive(unit.base_dir)
    held = client.get(harness.prefix + "lock")
    assert held is not None

    os.kill(process.pid, signal.SIGKILL)  # the worker only; its blocked hook stays
    process.wait()
    assert not _files.worker_alive(unit.base_dir)  # the kernel dropped the flock at death

    other = EtcdLock(client, harness.prefix, "model-uuid.other-0", "other/0")
    with Lease(client, 10) as lease:
        token = other.acquire(lease, timeout=30)  # only possible once the lease expired
        assert token > held.create_revision
        other.release(token)
    os.killpg(process.pid, signal.SIGKILL)  # the stand-in hook still blocked in that session
    assert unit.dispatches()[0]["fenced"] and unit.dispatches()[0]["token"] == held.create_revision

    # A hook sees no live worker and starts a new one, which finishes the work.
    harness_settings = unit.charm_dir / "fake-hook.json"
    harness_settings.write_text(harness_settings.read_text().replace('"block": true', '"b": 0'))
    harness.start_worker(unit)
    assert wait_exit(unit) == 0
    last = unit.dispatches()[-1]
    assert last["fenced"] and last["result"] == "release"
    assert _files.read_work(unit.base_dir).pending == 0  # type: ignore[union-attr]


def test_three_failed_dispatches_mark_worker_failed(
    harness: WorkerHarness, etcd_server: EtcdServer
):
    unit = harness.add_unit("app/0", pending=1, exit_code=1)
    harness.start_worker(unit, forbid_sleep=False)
    assert wait_exit(unit) == 1
    status = _files.read_worker_status(unit.base_dir)
    assert status == _files.WorkerStatus(holding=None, failed=True, consecutive_failures=3)
    events = [r["event"] for r in unit.dispatches()]
    assert events == ["rollingops_lock_granted"] * 3 + ["rollingops_etcd_failed"]
    client = etcd_server.client()
    assert client.range(harness.prefix, prefix_end(harness.prefix)).kvs == []


def test_retry_hold_keeps_the_lock(harness: WorkerHarness):
    holder = harness.add_unit("app/0", pending=1, results=["retry-hold", "release"])
    other = harness.add_unit("app/1", pending=1)
    harness.start_worker(holder)
    harness.start_worker(other)
    assert wait_exit(holder) == 0
    assert wait_exit(other) == 0
    mine = holder.dispatches()
    assert [r["result"] for r in mine] == ["retry-hold", "release"]
    assert mine[0]["token"] == mine[1]["token"] and all(r["fenced"] for r in mine)
    grants = lock_grants([holder, other])
    assert len(grants) == 3
    for before, after in itertools.pairwise(grants):
        assert before["end"] <= after["start"]


def test_sigterm_stops_a_waiting_worker(harness: WorkerHarness, etcd_server: EtcdServer):
    client = etcd_server.client()
    blocker = EtcdLock(client, harness.prefix, "model-uuid.other-0", "other/0")
    with Lease(client, 10) as lease:
        token = blocker.acquire(lease)
        unit = harness.add_unit("app/0", pending=1)
        harness.start_worker(unit)
        wait_for_key(client, f"{harness.prefix}waiting/{unit.owner}")
        # A second worker for the same unit exits at once: the flock is taken.
        duplicate = harness.start_worker(unit)
        assert duplicate.wait(60) == 0
        assert _files.worker_alive(unit.base_dir)

        assert _files.stop_worker(unit.base_dir, timeout=10)
        assert client.get(f"{harness.prefix}waiting/{unit.owner}") is None
        assert blocker.holds(token)
        assert unit.dispatches() == []
        blocker.release(token)


def test_request_after_exit_gets_a_new_worker(harness: WorkerHarness):
    """An exited worker released its flock: the next request's hook sees none and starts one."""
    unit = harness.add_unit("app/0", pending=1)
    harness.start_worker(unit)
    assert wait_exit(unit) == 0
    # The worker is gone; a new request writes the hint, sees no live worker and starts one.
    unit.set_work(1)
    assert not _files.worker_alive(unit.base_dir)
    harness.start_worker(unit)
    assert wait_exit(unit) == 0
    assert [r["result"] for r in unit.dispatches()] == ["release", "release"]


@pytest.mark.parametrize("endpoint", ["127.0.0.1", "127.0.0.1:notaport", "[::1]"])
def test_unusable_endpoint_marks_the_worker_failed_and_falls_back(
    harness: WorkerHarness, endpoint: str
):
    """Issue 16: an endpoint without a port used to kill the worker with ``failed: false``."""
    unit = harness.add_unit("app/0", pending=1)
    config_file = _files.etcd_dir(unit.base_dir) / _files.CONFIG_FILE
    config = json.loads(config_file.read_text())
    config["endpoints"] = [endpoint]  # as an older charm revision or a bad provider wrote it
    config_file.write_text(json.dumps(config))
    harness.start_worker(unit, forbid_sleep=False)
    assert wait_exit(unit) == 1
    status = _files.read_worker_status(unit.base_dir)
    assert status is not None and status.failed
    assert [r["event"] for r in unit.dispatches()] == ["rollingops_etcd_failed"]
    assert not _files.worker_alive(unit.base_dir)
