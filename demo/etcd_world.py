"""charmlibs.rollingops on its etcd backend inside the simulator: fake etcd, worker actors, faults.

What is real: the whole charm and library hook side (`_manager`, `_peer`, `_etcd_backend`,
`_files` on per-unit directories, `_etcd_lock` including its transactions and fence checks) and the
lock primitive the worker uses (`EtcdLock.create_ticket`, `_try_acquire`, `release`). What stands
in, because it cannot exist in one process on logical time:

- etcd: `fake_etcd.FakeEtcd`, patched in place of `_etcd_lock.EtcdClient` for the hook side;
- the per-unit worker process (`_worker.Worker`): `WorkerActor`, a background actor
  (jujusim.protocols.Actor) with the same loop
  (ticket -> acquire -> dispatch `rollingops_lock_granted` with `ROLLINGOPS_LOCK_TOKEN`
  and learn its outcome -> read `result.json` -> retry-hold / release recording the result
  (`EtcdLock.release_recorded`, the real transaction) -> exit when `work.json`
  says no work; 3 failures in a row -> mark failed, dispatch `rollingops_etcd_failed`). Waiting
  on an etcd watch becomes "wake me when a lock or ticket key is deleted"; a broken watch (an
  outage) wakes it too. Each failed etcd step costs one tick (the client's own backoff);
- the worker's start (`subprocess.Popen([... -m charmlibs.rollingops._worker ...])` is routed to a
  new actor), liveness (`_files.worker_alive`: the actor is alive) and SIGTERM
  (`_files.stop_worker`: the actor releases what it can and exits);
- charmed-etcd: `charms.etcd_provider.EtcdProviderCharm`, which answers the request.

Faults: `outage(t1, t2)` (every etcd call fails, leases run out on logical time),
`kill_worker(unit)` (the process dies without clean-up; its lease expires `ttl` ticks later),
removing the etcd relation (`Simulator.remove_relation`), and `replace_cluster()` (a new, empty
etcd cluster whose revisions start again from 1; the old one keeps serving the workers that still
talk to it). One tick stands for one second of the
lease's 60 s TTL unless `ttl_ticks` says otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import pathlib
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

from charmlibs.rollingops import _etcd_lock, _files
from charmlibs.rollingops._etcd_client import EtcdError
from charmlibs.rollingops._etcd_lock import EtcdLock
from charmlibs.rollingops._models import RollingOpsError

from jujusim.simulator import Simulator

from . import etcd_provider
from .fake_etcd import FakeEtcd, FakeEtcdClient

WORKER_MODULE = "charmlibs.rollingops._worker"
LOCK_GRANTED = "rollingops_lock_granted"
ETCD_FAILED = "rollingops_etcd_failed"
TOKEN_ENV = "ROLLINGOPS_LOCK_TOKEN"
MAX_FAILURES = 3
LEASE_TTL_TICKS = 60


class _LeaseHandle:
    """What `EtcdLock` needs of a `Lease`: its id and whether it is lost."""

    def __init__(self, fake: FakeEtcd, lease_id: int):
        self.fake = fake
        self.id = lease_id

    @property
    def lost(self) -> _Flag:
        return _Flag(not self.fake.down() and self.id not in self.fake.leases)


class _Flag:
    def __init__(self, value: bool):
        self.value = value

    def is_set(self) -> bool:
        return self.value


class WorkerActor:
    """One unit's worker process, stepped by the world on logical time (see module docstring)."""

    def __init__(self, world: EtcdWorld, unit: str, base_dir: str):
        self.world = world
        self.unit = unit
        self.base_dir = base_dir
        self.alive = True
        self.phase = "start"  # start | idle | acquiring | waiting | dispatching | dispatched
        self.wake_at: int | None = world.sim.now
        self.lock: EtcdLock | None = None
        self.cluster: FakeEtcd = world.fake
        self.lease: _LeaseHandle | None = None
        self.holding: int | None = None
        self.position = 0
        self.slots = 1  # max_parallel from work.json (slots of the etcd semaphore)
        self.waited_from = 0
        self.failures = 0
        self.paused: str | None = None  # the pause key as the last failed attempt read it
        self.result: str | None = None
        self.dispatches = 0

    def __repr__(self) -> str:
        return f"<worker {self.unit} {self.phase} holding={self.holding} alive={self.alive}>"

    def is_alive(self) -> bool:
        """The lease keeper: a live worker keeps its lease alive (while etcd is reachable)."""
        return self.alive and not self.world.sim.units[self.unit].removed

    # --- the loop --------------------------------------------------------------------------

    def step(self) -> None:
        self.wake_at = None
        if not self.is_alive():
            self.alive = False
            return
        try:
            self._advance()
        except EtcdError as error:
            self.world.log(f"worker {self.unit}: etcd failure: {error}")
            self.failures += 1
            with contextlib.suppress(EtcdError):
                self._release()
            if self.failures >= MAX_FAILURES:
                self._give_up(f"{self.failures} consecutive failures")
                return
            self._write_status()
            self.phase = "idle"
            self.wake_at = self.world.sim.now + 1  # the client's backoff, then the next try

    def _advance(self) -> None:
        while self.alive and self.wake_at is None:
            if self.phase == "start":
                self._start()
            elif self.phase == "idle":
                self._idle()
            elif self.phase == "acquiring":
                self._acquire()
            elif self.phase == "dispatched":
                self._after_dispatch()
            else:
                return  # waiting or dispatching: woken by a deletion or the dispatch outcome

    def _start(self) -> None:
        try:
            config = _files.read_config(self.base_dir)
        except RollingOpsError as error:
            self._give_up(f"unusable local etcd config: {error}")
            return
        if config is None:
            self._give_up("no local etcd config")
            return
        self.cluster = self.world.fake  # the cluster this process talks to, replaced or not
        client: Any = FakeEtcdClient(self.cluster, keeper=self.is_alive, cert_file=config.cert)
        self.lock = EtcdLock(client, config.prefix, config.owner, self.unit)
        self._write_status()
        self.phase = "idle"

    def _idle(self) -> None:
        assert self.lock is not None
        if self.lease is None or self.lease.lost.is_set():  # on the cluster of its own client
            self.lease = _LeaseHandle(self.cluster, self.lock.client.lease_grant(60))
        work = None
        with contextlib.suppress(RollingOpsError):
            work = _files.read_work(self.base_dir)
        if work is None or work.pending <= 0:
            self.world.log(f"worker {self.unit}: no pending work; exiting")
            self.paused = None
            self._revoke_lease()
            self._write_status()
            self.alive = False
            return
        self.position = self.lock.create_ticket(self.lease)  # type: ignore[arg-type]
        self.slots = work.slots
        self.phase = "acquiring"

    def _acquire(self) -> None:
        assert self.lock is not None and self.lease is not None
        if self.lease.lost.is_set():
            raise EtcdError("lease lost while waiting")  # LockCancelledError in the real one
        token, revision, self.position = self.lock._try_acquire(
            self.lease,  # type: ignore[arg-type]
            self.position,
            False,
            self.slots,
        )
        if not token:
            self._note_pause(self.lock.pause_seen)  # `EtcdLock.acquire`'s on_wait
            self.waited_from = revision + 1
            self.phase = "waiting"
            return
        self.holding, self.paused = token, None
        self.world.log(f"worker {self.unit}: acquired token {token}")
        self._write_status()
        self._dispatch()

    def _dispatch(self) -> None:
        assert self.holding is not None
        _files.clear_result(self.base_dir)
        self.phase = "dispatching"
        self.dispatches += 1
        token = self.holding
        self.world.sim.fire_custom(
            self.unit,
            LOCK_GRANTED,
            {TOKEN_ENV: str(token)},
            on_done=functools.partial(self._dispatched, token=token, number=self.dispatches),
        )

    def _dispatched(self, ok: bool, *, token: int, number: int) -> None:
        """juju-exec returned: read result.json as the real worker does."""
        if not self.alive or number != self.dispatches or self.phase != "dispatching":
            return
        result = None
        if ok:
            try:
                found = _files.read_result(self.base_dir)
            except RollingOpsError:
                found = None
            if found is not None and found.token == token:
                result = found.result
        self.result = result
        self.phase = "dispatched"
        self.wake_at = self.world.sim.now

    def _after_dispatch(self) -> None:
        assert self.lease is not None
        result = self.result
        if result == "retry-hold" and not self.lease.lost.is_set():
            self.failures = 0
            self._dispatch()
            return
        self.phase = "idle"
        self._release(result, recorded=True)
        if result is None or result == "not-granted":
            self.failures += 1
            self.world.log(f"worker {self.unit}: dispatch failed ({self.failures})")
        else:
            self.failures = 0
        if self.failures >= MAX_FAILURES:
            self._give_up(f"{self.failures} consecutive failures")
            return
        self._write_status()

    def _note_pause(self, paused: str | None) -> None:
        """As `_worker.Worker._note_pause`: a change of the pause key goes to the status file."""
        if paused != self.paused:
            self.paused = paused
            self._write_status()

    # --- wake-ups ------------------------------------------------------------------------------

    def on_deletion(self) -> None:
        """Wake up if a lock or ticket key was deleted since we started waiting (a watch event)."""
        if self.phase != "waiting" or self.lock is None:
            return
        for event in self.cluster.history[::-1]:
            if event.kv.mod_revision < self.waited_from:
                break
            if event.kind == "DELETE" and self.lock._relevant(event.kv.key):
                self.phase = "acquiring"
                self.wake_at = self.world.sim.now
                return

    def on_outage(self) -> None:
        """The watch stream broke: the waiter retries (and fails while etcd is down)."""
        if self.phase == "waiting":
            self.phase = "acquiring"
            self.wake_at = self.world.sim.now

    # --- endings -------------------------------------------------------------------------------

    def _release(self, result: str | None = None, *, recorded: bool = False) -> None:
        """As `_worker.Worker._release`: after a dispatch, the result goes to the roll record."""
        if self.holding is None or self.lock is None:
            return
        token, self.holding = self.holding, None
        if recorded:
            work = None
            with contextlib.suppress(RollingOpsError):
                work = _files.read_work(self.base_dir)
            more = work is not None and work.pending > 0
            halt_after = work.halt_after if work is not None else None
            self.lock.release_recorded(token, result, more_work=more, halt_after=halt_after)
        else:
            self.lock.release(token)

    def _revoke_lease(self) -> None:
        lease, self.lease = self.lease, None
        if lease is not None and self.lock is not None:
            with contextlib.suppress(EtcdError):
                self.lock.client.lease_revoke(lease.id)

    def _cleanup(self) -> None:
        with contextlib.suppress(EtcdError):
            self._release()
        self.holding = None
        self._revoke_lease()
        self.paused = None
        self.alive = False

    def _give_up(self, why: str) -> None:
        self.world.log(f"worker {self.unit}: failed: {why}")
        self._write_status(failed=True)
        self._cleanup()
        self.world.sim.fire_custom(self.unit, ETCD_FAILED, {})

    def terminate(self) -> None:
        """SIGTERM from a hook (`_files.stop_worker`): release, revoke, exit."""
        if not self.alive:
            return
        self.world.log(f"worker {self.unit}: SIGTERM")
        failed = False
        with contextlib.suppress(RollingOpsError):
            status = _files.read_worker_status(self.base_dir)
            failed = bool(status and status.failed)
        self._cleanup()
        self._write_status(failed=failed)

    def kill(self) -> None:
        """The process dies without clean-up (kill -9, OOM): its lease runs out later."""
        if self.alive:
            self.world.log(f"worker {self.unit}: killed")
            for fake in self.world.clusters():
                fake.refresh()
            self.alive = False

    def _write_status(self, *, failed: bool = False) -> None:
        status = _files.WorkerStatus(self.holding, failed, self.failures, self.paused)
        with contextlib.suppress(RollingOpsError):
            _files.write_worker_status(self.base_dir, status)


class EtcdWorld:
    """The fake etcd and every unit's worker for one simulator; itself one background actor."""

    def __init__(self, sim: Simulator, ttl_ticks: int = LEASE_TTL_TICKS):
        self.sim = sim
        self.fake = self._new_cluster(ttl_ticks)
        self.retired: list[FakeEtcd] = []  # replaced clusters: their leases still run out
        self.workers: dict[str, WorkerActor] = {}  # base_dir -> the latest worker started there
        self.started = 0
        self.outage_starts: list[int] = []

    def _new_cluster(self, ttl_ticks: int) -> FakeEtcd:
        fake = FakeEtcd(self.now, ttl_ticks)
        fake.permissions = {}  # authentication on: only what the provider granted (RBAC)
        fake.delete_listeners.append(self._on_deletion)
        fake.outage_listeners.append(self._on_outage)
        return fake

    def clusters(self) -> list[FakeEtcd]:
        return [*self.retired, self.fake]

    def now(self) -> int:
        return self.sim.now

    def log(self, text: str) -> None:
        self.sim.log(f"[etcd] {text}")

    # --- actor protocol (rule: queues and background actors) ---------------------------------

    def next_time(self) -> int | None:
        times = [w.wake_at for w in self.workers.values() if w.alive and w.wake_at is not None]
        times += [t for t in (fake.next_expiry() for fake in self.clusters()) if t is not None]
        times += list(self.outage_starts)
        times += [t2 for _, t2 in self.fake.outages if t2 > self.sim.now]
        return min(times) if times else None

    def step(self, sim: Simulator) -> None:
        now = sim.now
        for t in [t for t in self.outage_starts if t <= now]:
            self.outage_starts.remove(t)
            self.log("outage begins")
            for fake in self.clusters():
                fake.outage_begins()
        for fake in self.clusters():
            if not fake.down():
                fake.refresh()
            gone = fake.expire()
            if gone:
                self.log(f"leases expired: {[hex(g) for g in gone]}")
        for _ in range(1000):  # a release may wake another worker: step until none is due
            due = [w for w in self.workers.values() if w.alive and w.wake_at is not None]
            due = [w for w in due if w.wake_at is not None and w.wake_at <= now]
            if not due:
                break
            for worker in due:
                worker.step()
        for worker in self.workers.values():  # a worker whose unit vanished stops here
            if not worker.is_alive():
                worker.alive = False

    def _on_deletion(self, revision: int) -> None:
        for worker in self.workers.values():
            if worker.alive:
                worker.on_deletion()

    def _on_outage(self) -> None:
        for worker in self.workers.values():
            if worker.alive:
                worker.on_outage()

    # --- faults ------------------------------------------------------------------------------

    def outage(self, t1: int, t2: int) -> None:
        """Make etcd unreachable from every client during [t1, t2)."""
        for fake in self.clusters():
            fake.outage(t1, t2)
        self.outage_starts.append(t1)
        self.log(f"outage scheduled [{t1}, {t2})")

    def replace_cluster(self) -> None:
        """A new etcd cluster replaces the current one: empty, its revisions restart from 1.

        Hook-side clients reach the new one from now on; a worker keeps the client (and the
        cluster) it started with, as a real worker keeps its connection. Outages still apply.
        """
        old = self.fake
        self.retired.append(old)
        self.fake = self._new_cluster(old.ttl_ticks)
        self.fake.outages = list(old.outages)
        # charmed-etcd keeps its users and roles for the same relations on the new cluster
        self.fake.permissions = {user: set(p) for user, p in (old.permissions or {}).items()}
        self.log("cluster replaced: a new etcd cluster, revisions from 1")

    def kill_worker(self, unit: str) -> bool:
        """Kill `unit`'s live worker, if any (the fault: its worker dies)."""
        for worker in self.workers.values():
            if worker.unit == unit and worker.alive:
                worker.kill()
                return True
        return False

    def holder(self) -> str | None:
        """The unit named by the etcd lock key (slot 0) now (whoever's prefix), or None."""
        for key, kv in self.fake.keys.items():
            if key.endswith("/lock"):
                holder = _etcd_lock.Holder.from_kv(kv)
                return holder.unit or None
        return None

    def holders(self) -> set[str]:
        """The units named by any slot of the etcd semaphore now (`P lock`, `P lock-<i>`)."""
        found = set()
        for key, kv in self.fake.keys.items():
            last = key.rsplit("/", 1)[-1]
            if last == "lock" or (last.startswith("lock-") and last[5:].isdigit()):
                found.add(_etcd_lock.Holder.from_kv(kv).unit)
        found.discard("")
        return found

    # --- the process side: start, liveness, SIGTERM --------------------------------------------

    def start_worker(self, argv: list[str]) -> None:
        base_dir = str(pathlib.Path(argv[argv.index("--base-dir") + 1]))
        unit = argv[argv.index("--unit") + 1]
        current = self.workers.get(base_dir)
        if current is not None and current.alive:
            return  # the new process finds worker.lock held and exits at once
        self.started += 1
        self.workers[base_dir] = WorkerActor(self, unit, base_dir)
        self.log(f"worker {unit} started")

    def worker_alive(self, base_dir: Any) -> bool:
        worker = self.workers.get(str(pathlib.Path(base_dir)))
        return worker is not None and worker.is_alive()

    def stop_worker(self, base_dir: Any, timeout: float = 10.0) -> bool:
        worker = self.workers.get(str(pathlib.Path(base_dir)))
        if worker is not None:
            worker.terminate()
        return True

    def patched(self) -> contextlib.AbstractContextManager[None]:
        """Route the hook side's etcd client, worker start, liveness and stop to this world."""
        return routing(lambda: self)


@contextlib.contextmanager
def routing(world: Callable[[], EtcdWorld]) -> Iterator[None]:
    """Patch what the hook side uses to reach etcd and its worker; `world()` says whose.

    `_etcd_lock.EtcdClient` (the hook side builds its client through it), `_files.worker_alive`,
    `_files.stop_worker`, and `subprocess.Popen` for the worker's command line only (every other
    command goes to the real Popen, juju-exec included: the simulator intercepts that one).
    """
    saved = (_etcd_lock.EtcdClient, _files.worker_alive, _files.stop_worker, subprocess.Popen)
    saved_grant = etcd_provider.grant_access
    real_popen = subprocess.Popen

    def client(*args: Any, **kwargs: Any) -> FakeEtcdClient:
        return FakeEtcdClient(world().fake, *args, **kwargs)

    def popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
        argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else [str(args)]
        if WORKER_MODULE in argv:
            world().start_worker(argv)
            return _StartedProcess(argv)
        return real_popen(args, *rest, **kwargs)

    def worker_alive(base_dir: Any) -> bool:
        return world().worker_alive(base_dir)

    def stop_worker(base_dir: Any, timeout: float = 10.0) -> bool:
        return world().stop_worker(base_dir, timeout)

    def grant_access(username: str, prefix: str) -> None:
        world().fake.grant(username, prefix)

    etcd_provider.grant_access = grant_access
    _etcd_lock.EtcdClient = client  # type: ignore[assignment, misc]
    _files.worker_alive = worker_alive  # type: ignore[assignment]
    _files.stop_worker = stop_worker  # type: ignore[assignment]
    subprocess.Popen = popen  # type: ignore[assignment, misc]
    try:
        yield
    finally:
        _etcd_lock.EtcdClient, _files.worker_alive, _files.stop_worker = saved[:3]  # type: ignore
        subprocess.Popen = saved[3]  # type: ignore[misc]
        etcd_provider.grant_access = saved_grant


class _StartedProcess:
    """What the hook's Popen returns for a worker start (it never waits on it)."""

    pid = 0
    returncode = None

    def __init__(self, argv: list[str]):
        self.args = argv

    def poll(self) -> None:
        return None
