"""charmlibs.rollingops: disruptive operations k units at a time, on etcd or the peer relation.

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
            token = self.rolling.lock_grant.token      # fencing token: one increasing integer
            ...
            return OperationResult.RELEASE             # or RETRY_RELEASE / RETRY_HOLD

`request_async_lock` queues the call (see "Where a queue lives" below) and returns; the callback
runs later, in a hook, when this unit holds the lock. An exception in the callback counts as
RETRY_RELEASE; an op runs at most `1 + max_retry` times (`max_retry=None`: without limit).
`acquire_sync_lock(backend_id, timeout)` is a context manager for work that must happen inside the
current hook. `state` reports `not-ready | waiting | granted | idle` (on etcd, the granted hook
already reports the grant over at its end unless the callback keeps it: no later hook may come
to refresh a status), the backend, and
`etcd_problem` (why the provider's answer was refused, if it was); derive your status from it
(the library sets none).

Operator controls (`_controls.py`): `max_parallel=k` (constructor, default 1) lets up to k units
hold the lock at once (k peer grants; on etcd a semaphore of k slots). Pass the current value at
every construction: a change applies from the next grant, and lowering it revokes nothing.
`halt_after_failures=n` (default None: never) pauses the lock once n operations failed in one
roll (on peer counted by the leader from the grants; on etcd by the workers in the etcd
transaction that ends each grant, `P roll/`; see `_controls`). `pause()` / `resume()` (leader only;
`RollingOpsControlError` elsewhere, or when resuming what is not paused): no new grant while
paused, running operations finish, every queue stays; kept in the peer app databag (and in etcd,
where every acquire checks it), so it survives a leader change; a pause hook that fails after
its etcd put leaves no pause behind (a local mark: see `_controls`). `rolling_status()` (any
unit, read-only, one etcd read on etcd) returns a `RollingStatus`: holders, the queue in grant
order, done / failed / remaining, paused, the maintenance window; `progress()` a short line for
the leader's app status; `paused_reason` why the lock is paused (one read of the peer app
databag, and on etcd the halt this unit's waiting worker met, from a local file: for
statuses). `maintenance_window="02:00-04:00"` (daily, UTC; `parse_window` checks one): grants
only inside it, as the leader's own clock says (on etcd the leader closes the lock with the
pause key); no unit ever compares its clock with another's.

Is any unit busy? `busy_units(timeout=5.0)` returns a `BusyUnits`: `units`, the units of this
application with work queued or running on either backend, and `unknown`, why that answer may be
incomplete (`busy` is True when either is set). Call it from actions (say, to refuse an operation
that must not overlap a rolling restart), never from collect-status: it reads etcd whenever
another unit runs on it, once, within `timeout` seconds, importing grpc then. It never raises: an
unreadable etcd is logged and reported in `unknown`. `is_waiting(unit)` and
`is_waiting_callback` read only the peer relation (cheap, for status), where a unit on etcd looks
idle. Backends: the **peer** backend (the leader grants, one holder per
application) always works; the **etcd** backend (a lease-backed lock in charmed-etcd,
one background worker per unit) is used when the `etcd_client` relation is ready. Any etcd
failure moves the application back to the peer backend without losing or repeating an operation.
While the application runs on the peer backend, exclusion with *other* applications sharing the
`cluster_id` does not hold. On etcd they share one line too: a paused or halted application keeps
its tickets, and so holds the others back until its `resume`; each of them may also write any key
under the shared prefix (charmed-etcd grants the prefix), so what is read there is shown only as
short printable text. Give an application its own `cluster_id` unless it must never overlap
another.

Identity and version: this package is ours, written to the public API of PyPI's
`charmlibs-rollingops` 1.1.5 (tests/unit/test_rollingops_api.py compares the two) with our own
internals and wire formats. It shares that package's import name, so a charm installs one or the
other, never both. It is distributed as `coordinated-ops-rollingops` (pyproject.toml next to this
file), never under the name `charmlibs-rollingops`, and its version is `1.1.5+coordinated.N`: the
public part names the API it follows, the local label `coordinated.N` counts our releases (PyPI
refuses local versions, so it cannot be uploaded there by mistake). `LIBPATCH` is that N,
`LIBAPI` the API's major version and `LIBID` an id of our own; CHANGELOG.md says what each N
changed.

The backend switch (one lock domain across both backends):

- Mode. The leader chooses the application's backend, `rollingops-mode` (app databag): etcd
  when etcd is usable here (configured, and its local configuration parses), every unit's data is
  readable, no peer grant is outstanding, no published queue holds work and every unit
  acknowledged peer mode; peer when etcd is not usable or a unit with work reports that it cannot
  use etcd
  (`rollingops-backend: peer` plus `rollingops-etcd-cleanup`). Each switch raises the fencing
  epoch (see "Fencing tokens" below).
- Acknowledgement. Each unit states its backend in `rollingops-backend`. It moves to etcd only
  in mode etcd, after deleting its stale etcd keys. It moves to peer when the mode says peer or
  an etcd call fails in one of its hooks or in its worker; that hook first stops the worker
  (SIGTERM, then waits until the worker's flock is free) and publishes the unit's queue.
- Where a queue lives. On the peer backend: in the unit's databag, where the leader schedules
  it. On the etcd backend: in the unit's stored state (ops StoredState). The databag then only
  says `etcd`, with an empty queue and intent idle. So while etcd is healthy a rolling restart
  writes nothing to the peer relation and wakes no other unit: N units cost N action hooks
  plus N lock-granted hooks. Before, each unit mirrored every etcd transition into its databag,
  and each write woke every other unit: O(N^2) hooks (312 at N=10). The price: the other units
  learn of that work only from etcd. `busy_units()` reads, in one range read, `P lock` and the
  tickets (keys below) whose owner is of our model and application (other applications may share
  the cluster_id), plus this unit's own queue. Not visible there: the work of another unit from
  the end of the hook that queued it until its worker's first ticket (worker start, a lease
  grant, one transaction: 0.6 s measured on a busy machine), and between a release and the next
  ticket of a unit with more work.
- Grants. The leader grants on the peer backend only in mode peer and only while every unit's
  databag says `peer`; its FIFO `rollingops-order` counts only the units on peer.

Why it holds:

- At most k holders across both backends (k = max_parallel; 1 by default). On the peer backend the
  leader keeps at most k grants outstanding (its own current k) and releases each only on its
  holder's `done`. On etcd the lock is k slot keys (`P lock`, `P lock-1`, ...); a worker takes one
  only in a transaction that requires it absent, and the granted hook checks it again (the fence
  check) and keeps its lease alive while the operation runs (so a worker killed after its grant
  cannot let the slot expire under a running operation); a worker competes for slots 0..k-1 of its
  own unit's k, so while units disagree on k (a config change reaching them one by one) the bound
  is the largest k. Across the two backends, a peer grant needs every databag to say `peer`. A unit
  writes `peer` only in a hook that first stops its worker. Even if a worker outlived that hook,
  every later lock-granted hook on that unit sees `peer` and runs nothing (a unit runs one hook at
  a time, and an etcd critical section only ever runs in such a hook). The unit goes back to etcd
  only in mode etcd, after deleting its stale etcd keys. The leader sets mode etcd only while no
  peer grant is outstanding, and grants nothing in mode etcd. So no peer grant starts while any
  unit can still hold or take the etcd lock, and no unit takes the etcd lock while a peer grant is
  open.
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

Juju 3.6 and 4: on 3.6 a removed unit leaves the peer relation (the others run relation-departed
and the leader releases its grant: "it left the relation"). On Juju 4 (juju/juju#23326) a removed
unit stays in `relation.units` and nobody runs relation-departed. So the leader, while another
unit holds a peer grant or a unit (itself included) has work queued on the peer backend (never
when idle, nor for work on etcd), reads the `goal-state` hook tool and treats a listed unit
goal-state no longer shows as gone: its grant is released, its queue never granted, and its last
`rollingops-backend: etcd` no longer blocks peer grants. A holder pauses while a unit is being
removed (planned units below the units it sees) but counts only the units goal-state still shows
(`dying` ones), so a removed unit that stays listed does not pause it for good. On etcd a removed
holder's lease expires and frees the lock, on either version.

Wire format (ours; every writer stamps its version, a reader that meets a version it does not
know logs it, reports not-ready and never overwrites the data; a change bumps the version of the
databag it touches; a newer reader reads the older versions it lists):

Peer relation, unit databag (written by that unit only), version 1:
    rollingops-version  "1"
    rollingops-queue    JSON array of ops {"id": 7, "callback_id": "restart", "kwargs": {...},
                        "max_retry": 2 | null, "attempt": 0, "requested_at": "<UTC, for humans>"}
    rollingops-seq      last op id issued by this unit (monotonic)
    rollingops-intent   idle | request | retry-release | retry-hold
    rollingops-done     {"token": T, "op": 7, "result": "release" | "retry-release" |
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
Peer relation, application databag (written by the leader only), version 2 (read: 1 and 2; a
version 1 bag is read as epoch 0, its tokens unchanged, and rewritten as version 2):
    rollingops-version  "2"
    rollingops-epoch    fencing epoch of the current mode (raised at every mode switch)
    rollingops-token    last peer grant token T (packed, see below; survives leader changes)
    rollingops-grant    {"unit": "app/3", "token": T, "op": 7}, absent when free
    rollingops-order    JSON array of unit names: FIFO of the leader's first sighting
    rollingops-mode     peer | etcd   (the application-wide backend chosen by the leader)
    rollingops-more-grants  JSON array of grants like rollingops-grant: the grants beyond the
                        first while max_parallel > 1, in the order issued (absent when none)
    rollingops-paused, rollingops-roll, rollingops-etcd-paused   the operator controls' state
                        (see `_controls.py`)
  The keys added for the controls are optional (a reader without them ignores them): no version
  bump. Mixed versions with max_parallel > 1: an older unit sees only `rollingops-grant`, so an
  extra grant given to it waits for its refresh (safe, slower); an older leader keeps one grant
  at a time and leaves the extra grants it does not know to finish. Keep max_parallel at 1 and
  the lock unpaused during `juju refresh` from an older release.
    rollingops-client-secret-id   ID of the app secret holding the etcd client certificate
    rollingops-etcd-request   our etcd_client request object (below), kept so that its salt, and
                        so its request id, stay the same across hooks and leaders (added in
                        LIBPATCH 1; optional: a reader without it ignores it, so no version bump)
etcd_client relation (charmed-etcd's format "v1"; docs/etcd-client-relation.md):
  our application databag (written by our leader):
    version             "v1"
    requests            [{"resource": P, "salt": S, "request-id": R, "secret-mtls": "secret:..."}]
                        S: 16 of [A-Za-z0-9], new only when P or our certificate changes;
                        R = sha256(f"{P}:{S}").hexdigest()[:16]; secret-mtls: URI of our app
                        secret {"mtls-cert": <client certificate PEM>}, granted to this relation
                        instance before the request is written (a re-created relation gets its
                        own grant). The URI is the one Juju gave at creation (or `get_info()`),
                        never a label lookup's `.id` (None).
  the provider's application databag (read by every unit):
    requests            [{..., "request-id": R, "endpoints": "host:port,...", "secret-user":
                        URI {username, uris}, "secret-tls": URI {tls-ca, tls}, "version": ...}]
                        Only the entry with our R is ours. It is checked on arrival (relation-
                        changed, secret-changed): endpoints are host:port with a DNS name, IPv4
                        or [IPv6] host and a port 1-65535; tls-ca parses as PEM certificates;
                        username equals our certificate's common name. A refused answer is
                        logged, kept in base_dir/etcd/provider-problem.json for `state`, and the
                        local config is deleted, so the unit runs on the peer backend.
etcd keys, P = /coordinated-ops/rollingops/v1/<cluster_id>/, owner O = <model uuid>.<unit-name>:
    P lock              {"owner": O, "unit": "app/0", "kind": "async" | "sync"} on the holder's
                        lease; its create_revision is the sequence of the etcd grant's token
    P waiting/O         async ticket (its create_revision is its queue position)
    P waiting-sync/O    sync ticket (async waiters stand back while one exists)
    P lock-<i>          slot i (1 <= i < k) of the semaphore when max_parallel is k > 1; value
                        and token as `P lock` (slot 0; the sync lock only ever takes slot 0)
    P paused/<model uuid>.<app>   present while that application is paused (no lease); every
                        async acquire transaction requires it absent. Value "paused" when the
                        leader put it (pause, closed window), else a worker's halt reason
    P roll/<model uuid>.<app>     that application's roll record (no lease), the JSON of
                        `rollingops-roll`; written by the worker in the transaction that deletes
                        its slot (since LIBPATCH 7; an older reader ignores it)
    P wake/<model uuid>.<app>     put and deleted at once by a resume that keeps the pause key
                        (closed window): its deletion wakes the waiters (since LIBPATCH 8)
Local files under base_dir/etcd/ carry {"version": 1}; see `_files.py`.

Bad relation data (one rule): a value another unit (or an earlier leader) wrote that does not
parse, is out of range or is too big is logged, listed in `state.malformed` for the charm to show
in its status, and ignored (read as absent; a bad queue entry is skipped, the rest of the bag
still counts); it never raises in a hook. Bounds: a value of at most 256 KiB, JSON nested at most
32 deep, no NaN or Infinity, integers of at most 19 digits in 0..2**63-1 (`_models.load_json`,
`_models.parse_int`). An unreadable `rollingops-token` stops granting (a token is never reused).
A value in another wire version is not malformed: see the versioning rule above.

Fencing tokens: one sequence per application lock, strictly increasing from one holder to the
next whatever the backend, across leader changes and etcd clusters. A token is one integer
`epoch << 40 | sequence` (`split_token(token)` gives the pair back, `LockGrant.epoch` and
`.sequence` too); compare tokens as integers. The leader raises `rollingops-epoch` by one at every
mode switch, in the same write as `rollingops-mode`, so each epoch has exactly one mode:

- peer grant: the leader issues `max(rollingops-token + 1, epoch << 40 | 1)`;
- etcd grant: `epoch << 40 | create_revision(P lock)`, the epoch read by the granted hook, which
  runs the callback only if the application is on etcd in that hook (else: not-granted); the etcd
  sync lock likewise (the epoch read before acquiring, still current once the lock is held). A
  revision past 2**40 cannot be packed: the unit falls back to peer.
- epochs end at 2**23 - 1 (`MAX_EPOCH`, so a token fits in 63 bits): a larger `rollingops-epoch`
  (only ever written by hand; no token of it can exist) is malformed: logged, shown in status and
  replaced by the epoch of the last token issued. The leader never leaves the last epoch.

Claim: if critical section A ended before B's grant was issued (a section spans the hook that runs
it; a grant is issued by the leader's hook, or by the etcd transaction that creates B's slot key),
then token(A) < token(B). With k = 1 a grant is issued only once the previous holder has ended, so
this is "A ended before B started". With k > 1, B may have been granted first and still enter
after A (its hook ran later): tokens follow grant order, and a resource fenced with "reject a token
below the highest seen" must then accept up to k writers' tokens out of order.
The epoch only grows (only the leader writes it, each new leader reads it). Lemma: every section
of epoch e ends before any section of a higher epoch starts.
Peer epoch e: the leader leaves peer mode only while no peer grant is outstanding, and it releases
a grant only once the holder's `done` is committed (by the hook that ran the section) or the holder
can no longer run it (left, or off the peer backend). Etcd epoch e: the section runs in a hook that
saw this unit's `rollingops-backend` = etcd at its start; epoch e+1 is a peer epoch, whose grants
wait until every unit acknowledged peer mode (the cross-backend barrier that keeps exclusion across
backends, see `_etcd_backend`), and the return to etcd (e+2) waits for the same acknowledgements; a
unit writes its acknowledgement in that hook after the section or in a later hook, and the leader
sees it only once committed. So no section of a lower epoch starts once a section of a higher epoch
has started; were e(A) > e(B), B would end before A starts, yet A ended before B started: so e(A)
<= e(B). If e(A) < e(B) the packing orders them. If e(A) = e(B), both ran on one backend: peer
grants are issued by a counter that only grows (B's grant came after A's, which was issued before
A ran); etcd grants come from one cluster (below), where B's worker created its slot key after A
ended, and A's slot key was created before A ran: B's create_revision is higher. (So this holds for
any k; the epoch lemma never counted holders.)

A new etcd cluster (its revisions restart from 1) arrives as a new `etcd_client` relation: the old
relation's relation-broken makes etcd unusable on the leader (mode peer, new epoch) and deletes
each unit's local config; the leader returns to etcd only from a config written from the new
relation and once every unit acknowledged peer mode, in a new epoch. So an epoch never spans two
clusters. Not detected: a provider that rebuilds its cluster in place behind the same relation (the
etcd response header's cluster_id would show it; the fence check could compare it with one recorded
in the app databag).

Mixed versions during `juju refresh` from 1.1.5+coordinated.2 or earlier (released as 1.2.x;
app databag version 1): the first new leader rewrites the bag as version 2 at epoch 0, so tokens
continue where they were (the old peer counter and raw revisions are epoch-0 tokens). An old unit
cannot read version 2: it runs no peer grant and acknowledges no mode until refreshed, which holds
the barrier (safe; a grant given to it waits for its refresh), so its etcd sections, still epoch
0, precede every later epoch. An old leader meeting version 2 does nothing; downgrading stalls the
lock until a leader runs coordinated.3 or later again. A unit whose data the leader cannot read
(another wire version, garbage) counts as possibly on etcd: it blocks peer grants.

Release is detected without clocks: unit U has finished grant T when its `rollingops-done.token`
is T. No PID and no timestamp used for a decision is ever written to relation data.

etcd client: our own (`charmlibs.rollingops._etcd_client`), gRPC through the `grpcio` package
with our own encoding of the dozen etcd v3 messages it uses (`_etcd_proto.py`; no generated code,
no `protobuf`). charmed-etcd runs etcd with authentication on and our user named after our client
certificate's common name, which etcd honours for gRPC clients only (its JSON gateway answers
HTTP 400). Trust comes from the files in base_dir/etcd only: our CA as the channel's explicit
roots, our certificate and key; proxies are off, and no environment variable (`https_proxy`,
`grpc_proxy`, `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`, `REQUESTS_CA_BUNDLE`) changes whom we trust or
where traffic goes. Every failure is an `EtcdError` (a `RollingOpsEtcdctlError`). Measured on
etcd 3.4 set up as charmed-etcd sets it up: ~0.7 ms per get, ~1 ms per acquire transaction
(etcdctl: ~15 ms a process); lock handoff between two workers p50 ~5 ms
(docs/adr/0002-etcd-grpc-transport.md, tests/benchmarks/etcd_client.py,
tests/benchmarks/etcd_handoff.py). `grpc` (~70 ms) is imported only by the worker and by the
hooks that talk to etcd (a fence check, a sync lock, a clean-up, `busy_units`), `cryptography`
only when the leader makes the client certificate; importing the package imports neither.

Worker (one background process per etcd-managed unit with pending work):
`python -m charmlibs.rollingops._worker --base-dir D --unit U --charm-dir C` (see
`_worker.worker_argv`); liveness = `flock` on base_dir/etcd/worker.lock (`_files.worker_alive`,
`_files.stop_worker`); the hook side writes work.json under `_files.queue_lock` and only then
checks `worker_alive()`, so a request racing with an exiting worker always gets a worker.

Testing your charm with this library:
In Scenario (`ops.testing`) one `ctx.run` is one dispatch; feed each output State into the next.

- Set `planned_units` in your State. Scenario's default is 1, and once the peer relation has a
  remote unit the library reads "fewer planned units than units I see" as a removal under way:
  a unit on the peer backend runs no callback while it lasts, so every grant is held forever.
  Use `State(planned_units=1 + len(peer.peers_data), ...)`.
- Drive a peer grant: run the action that calls `request_async_lock` on the leader, then run
  `update_status()` (or the peer `relation_changed` with a `remote_unit`) on its output: the
  leader grants itself in the first run and calls the callback in the second, never in the run
  that requested. Another unit: give its unit bag (its queue) to the leader's State, run
  `relation_changed` there, then give the resulting app bag (`rollingops-grant`) to the unit's
  State and run its `relation_changed`.
- `base_dir` (default /var/lib/rollingops) is where the library keeps its local files: pass a
  temporary directory in tests.
- The etcd backend cannot be driven in Scenario: its grant comes from a background worker and
  the granted hook checks the lock in etcd. Leave the `etcd` relation out of the State and test
  your callbacks on the peer backend (they are the same callbacks).
- No `juju-exec` on a test machine: the wake-up is logged once and skipped.
- Several units, interleavings and faults: `jujusim.check_charm` with
  `jujusim.grants.rollingops_peer(peer_relation_name)` (the repository's README has a 20-line
  test).
"""

from ._controls import RollingStatus, parse_window
from ._manager import RollingOpsEtcdFailedEvent, RollingOpsLockGrantedEvent, RollingOpsManager
from ._models import (
    BusyUnits,
    LockGrant,
    OperationResult,
    ProcessingBackend,
    RollingOpsControlError,
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
    split_token,
)

__version__ = "1.1.5+coordinated.10"
LIBID = "coordinated-ops-charmlibs-rollingops"
LIBAPI = 1
LIBPATCH = 10

__all__ = [
    "BusyUnits",
    "LockGrant",
    "OperationResult",
    "ProcessingBackend",
    "RollingOpsControlError",
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
    "RollingStatus",
    "SyncLockBackend",
    "__version__",
    "parse_window",
    "split_token",
]
