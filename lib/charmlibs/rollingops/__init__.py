"""charmlibs.rollingops: disruptive operations one unit at a time, on etcd or the peer relation.

Usage (one manager per charm; build it in `__init__` with the current `cluster_id` every time)::

    from charmlibs.rollingops import OperationResult, RollingOpsManager

    class MyCharm(ops.CharmBase):
        def __init__(self, framework):
            super().__init__(framework)
            self.rolling = RollingOpsManager(
                self,
                callback_targets={"restart": self._restart},
                peer_relation_name="restart",          # peers: restart: {interface: rollingops}
                etcd_relation_name="etcd",             # requires: etcd: {interface: etcd_client}
                cluster_id="my-cluster",               # apps with one id share one etcd lock
            )

        def _on_restart_action(self, event):
            self.rolling.request_async_lock("restart", kwargs={"delay": 3}, max_retry=2)

        def _restart(self, delay):                     # runs under the lock, in a hook
            token = self.rolling.lock_grant.token      # fencing token: store (backend, token)
            ...
            return OperationResult.RELEASE             # or RETRY_RELEASE / RETRY_HOLD

`request_async_lock` queues the call (see "Where a queue lives" below) and returns; the callback
runs later, in a hook, when this unit holds the lock. An exception in the callback counts as
RETRY_RELEASE; an op runs at most `1 + max_retry` times (`max_retry=None`: without limit).
`acquire_sync_lock(backend_id, timeout)` is a context manager for work that must happen inside the
current hook. `state` reports `not-ready | waiting | granted | idle` and the backend; derive your
status from it (the library sets none). Backends: the **peer** backend (the leader grants, one
holder per application) always works; the **etcd** backend (a lease-backed lock in charmed-etcd,
one background worker per unit) is used when the `etcd_client` relation is ready. Any etcd
failure moves the application back to the peer backend without losing or repeating an operation.
While the application runs on the peer backend, exclusion with *other* applications sharing the
`cluster_id` does not hold.

The backend switch (one lock domain across both backends):

- Mode. The leader chooses the application's backend, `rollingops-mode` (app databag): etcd
  when etcd is configured, no peer grant is outstanding and no published queue holds work; peer
  when etcd is not configured or a unit with work reports that it cannot use etcd
  (`rollingops-backend: peer` plus `rollingops-etcd-cleanup`).
- Acknowledgement. Each unit states its backend in `rollingops-backend`. It moves to etcd only
  in mode etcd, after deleting its stale etcd keys. It moves to peer when the mode says peer or
  an etcd call fails in one of its hooks or in its worker; that hook first stops the worker
  (SIGTERM, then waits until the worker's flock is free) and publishes the unit's queue.
- Where a queue lives. On the peer backend: in the unit's databag, where the leader schedules
  it. On the etcd backend: in the unit's stored state (ops StoredState). The databag then only
  says `etcd`, with an empty queue and intent idle. So while etcd is healthy a rolling restart
  writes nothing to the peer relation and wakes no other unit: N units cost N action hooks
  plus N lock-granted hooks. Before, each unit mirrored every etcd transition into its databag,
  and each write woke every other unit: O(N^2) hooks (312 at N=10).
- Grants. The leader grants on the peer backend only in mode peer and only while every unit's
  databag says `peer`; its FIFO `rollingops-order` counts only the units on peer.

Why it holds:

- At most one holder across both backends. On each backend there is one holder: the leader
  issues one peer grant at a time and releases it only on the holder's `done`, and the etcd
  lock is one key, checked again by the granted hook (the fence check). Across the two
  backends, a peer grant needs every databag to say `peer`. A unit writes `peer` only in a
  hook that first stops its worker. Even if a worker outlived that hook, every later
  lock-granted hook on that unit sees `peer` and runs nothing (a unit runs one hook at a time,
  and an etcd critical section only ever runs in such a hook). The unit goes back to etcd only
  in mode etcd, after deleting its stale etcd keys. The
  leader sets mode etcd only while no peer grant is outstanding, and grants nothing in mode
  etcd. So no peer grant starts while any unit can still hold or take the etcd lock, and no
  unit takes the etcd lock while a peer grant is open.
- Nothing lost, nothing repeated. A unit's queue has exactly one authoritative place: its
  databag while that says `peer`, its stored copy while it says `etcd`. A move between the two
  happens in one hook that writes both. A failed hook keeps neither: Juju drops its relation
  writes and ops saves stored state only when the dispatch ends cleanly. ops saves the stored
  state before Juju commits the relation data. If only the relation write is lost, the databag
  still names the old backend, and that backend's copy is intact: the stored copy is never
  deleted, only ignored under `peer` and overwritten at the next move to etcd. An op leaves a
  queue only in the hook that ran it (or dropped it: unknown callback, retries used up).
- Liveness. In mode etcd, a unit with work has a worker: it is started at the end of every hook
  that leaves work pending, and update-status restarts a dead one. A worker that gives up moves
  its unit to peer with the unit's queue published, and the leader then switches the
  application to peer. The mode change wakes every unit (relation-changed), so each one moves
  to peer and publishes its queue in that hook. The leader then serves the published queues in
  FIFO order, and returns the application to etcd once they are empty.

Wire format, version 1 (ours; every writer stamps its version, a reader that meets another version
logs it, reports not-ready and never overwrites the data; a change bumps the version):

Peer relation, unit databag (written by that unit only):
    rollingops-version  "1"
    rollingops-queue    JSON array of ops {"id": 7, "callback_id": "restart", "kwargs": {...},
                        "max_retry": 2 | null, "attempt": 0, "requested_at": "<UTC, for humans>"}
    rollingops-seq      last op id issued by this unit (monotonic)
    rollingops-intent   idle | request | retry-release | retry-hold
    rollingops-done     {"token": 42, "op": 7, "result": "release" | "retry-release" |
                        "retry-hold" | "dropped" | "missing-callback" | "no-op" | "not-granted"}
    rollingops-backend  peer | etcd   (what this unit runs; "peer" also acknowledges that its
                        etcd worker is stopped)
    rollingops-etcd-cleanup  "true" while stale etcd keys of this unit must be removed
  queue, seq, intent and done are meaningful only while rollingops-backend is "peer". A unit on
  etcd publishes `[]` and `idle` and leaves seq and done as they were; it keeps its queue, seq
  and done in its stored state (`{"queue": <as rollingops-queue>, "seq": 7, "done": <as
  rollingops-done, or "">}`), and publishes them in the hook that writes "peer".
  Mixed versions during `juju refresh` (the version stays "1", every v1 reader stays correct):
  an older unit reads a newer unit on etcd as an idle unit on etcd, which v1 never grants on
  the peer backend. An older leader may then return the application to etcd while that unit
  still has local work. That is harmless: the unit is already on etcd, and that leader grants
  nothing in mode etcd. A newer leader ignores the queues that older units still mirror while
  on etcd. A unit refreshed while on etcd finds no stored copy and takes its queue from its
  databag once, then stops mirroring it.
Peer relation, application databag (written by the leader only):
    rollingops-version  "1"
    rollingops-token    last peer grant token (monotonic, survives leader changes)
    rollingops-grant    {"unit": "app/3", "token": 42, "op": 7}, absent when free
    rollingops-order    JSON array of unit names: FIFO of the leader's first sighting
    rollingops-mode     peer | etcd   (the application-wide backend chosen by the leader)
    rollingops-client-secret-id   ID of the app secret holding the etcd client certificate
etcd keys, P = /coordinated-ops/rollingops/v1/<cluster_id>/, owner O = <model uuid>.<unit-name>:
    P lock              {"owner": O, "unit": "app/0", "kind": "async" | "sync"} on the holder's
                        lease; the fencing token is this key's create_revision
    P waiting/O         async ticket (its create_revision is its queue position)
    P waiting-sync/O    sync ticket (async waiters stand back while one exists)
Local files under base_dir/etcd/ carry {"version": 1}; see `_files.py`.

Release is detected without clocks: unit U has finished grant T when its `rollingops-done.token`
is T. No PID and no timestamp used for a decision is ever written to relation data.

etcd client: our own (`charmlibs.rollingops._etcd_client`), stdlib only (http.client + ssl +
json) over etcd's v3 JSON gateway (`/v3/...`), mutual TLS from the files in base_dir/etcd (no
environment variable can override the CA). Measured on a real mTLS etcd 3.4: ~0.7 ms per get,
~1.2 ms per acquire transaction, vs ~1.4 ms with etcd3gw and ~20 ms per etcdctl process; lock
handoff between two workers p50 ~10 ms (docs/adr/0001-etcd-client.md,
tests/benchmarks/etcd_client.py, tests/benchmarks/etcd_handoff.py). `cryptography` and the
client are imported only on the etcd path.

Worker (one background process per etcd-managed unit with pending work):
`python -m charmlibs.rollingops._worker --base-dir D --unit U --charm-dir C` (see
`_worker.worker_argv`); liveness = `flock` on base_dir/etcd/worker.lock (`_files.worker_alive`,
`_files.stop_worker`); the hook side writes work.json under `_files.queue_lock` and only then
checks `worker_alive()`, so a request racing with an exiting worker always gets a worker.
"""

from ._manager import RollingOpsEtcdFailedEvent, RollingOpsLockGrantedEvent, RollingOpsManager
from ._models import (
    LockGrant,
    OperationResult,
    ProcessingBackend,
    RollingOpsDecodingError,
    RollingOpsError,
    RollingOpsEtcdctlError,
    RollingOpsEtcdNotConfiguredError,
    RollingOpsFileSystemError,
    RollingOpsInvalidLockRequestError,
    RollingOpsInvalidSecretContentError,
    RollingOpsLibMissingError,
    RollingOpsNoRelationError,
    RollingOpsState,
    RollingOpsStatus,
    RollingOpsSyncLockError,
    SyncLockBackend,
)

__version__ = "1.2.1"
LIBID = "coordinated-ops-charmlibs-rollingops"
LIBAPI = 1
LIBPATCH = 1

__all__ = [
    "LockGrant",
    "OperationResult",
    "ProcessingBackend",
    "RollingOpsDecodingError",
    "RollingOpsError",
    "RollingOpsEtcdFailedEvent",
    "RollingOpsEtcdNotConfiguredError",
    "RollingOpsEtcdctlError",
    "RollingOpsFileSystemError",
    "RollingOpsInvalidLockRequestError",
    "RollingOpsInvalidSecretContentError",
    "RollingOpsLibMissingError",
    "RollingOpsLockGrantedEvent",
    "RollingOpsManager",
    "RollingOpsNoRelationError",
    "RollingOpsState",
    "RollingOpsStatus",
    "RollingOpsSyncLockError",
    "SyncLockBackend",
    "__version__",
]
