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

`request_async_lock` queues the call in this unit's peer databag and returns; the callback runs
later, in a hook, when this unit holds the lock. An exception in the callback counts as
RETRY_RELEASE; an op runs at most `1 + max_retry` times (`max_retry=None`: without limit).
`acquire_sync_lock(backend_id, timeout)` is a context manager for work that must happen inside the
current hook. `state` reports `not-ready | waiting | granted | idle`, the backend, and
`etcd_problem` (why the provider's answer was refused, if it was); derive your status from it
(the library sets none). Backends: the **peer** backend (the leader grants, one holder per
application) always works; the **etcd** backend (a lease-backed lock in charmed-etcd,
one background worker per unit) is used when the `etcd_client` relation is ready. Any etcd
failure moves the application back to the peer backend without losing or repeating an operation.
While the application runs on the peer backend, exclusion with *other* applications sharing the
`cluster_id` does not hold.

Identity and version: this package is ours, written to the public API of PyPI's
`charmlibs-rollingops` 1.1.5 (tests/unit/test_rollingops_api.py compares the two) with our own
internals and wire formats. It shares that package's import name, so a charm installs one or the
other, never both. It is distributed as `coordinated-ops-rollingops` (pyproject.toml next to this
file), never under the name `charmlibs-rollingops`, and its version is `1.1.5+coordinated.N`: the
public part names the API it follows, the local label `coordinated.N` counts our releases (PyPI
refuses local versions, so it cannot be uploaded there by mistake). `LIBPATCH` is that N,
`LIBAPI` the API's major version and `LIBID` an id of our own; CHANGELOG.md says what each N
changed.

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
Peer relation, application databag (written by the leader only):
    rollingops-version  "1"
    rollingops-token    last peer grant token (monotonic, survives leader changes)
    rollingops-grant    {"unit": "app/3", "token": 42, "op": 7}, absent when free
    rollingops-order    JSON array of unit names: FIFO of the leader's first sighting
    rollingops-mode     peer | etcd   (the application-wide backend chosen by the leader)
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
                        lease; the fencing token is this key's create_revision
    P waiting/O         async ticket (its create_revision is its queue position)
    P waiting-sync/O    sync ticket (async waiters stand back while one exists)
Local files under base_dir/etcd/ carry {"version": 1}; see `_files.py`.

Bad relation data (one rule): a value another unit (or an earlier leader) wrote that does not
parse, is out of range or is too big is logged, listed in `state.malformed` for the charm to show
in its status, and ignored (read as absent; a bad queue entry is skipped, the rest of the bag
still counts); it never raises in a hook. Bounds: a value of at most 256 KiB, JSON nested at most
32 deep, no NaN or Infinity, integers of at most 19 digits in 0..2**63-1 (`_models.load_json`,
`_models.parse_int`). An unreadable `rollingops-token` stops granting (a token is never reused).
A value in another wire version is not malformed: see the versioning rule above.

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
hooks that talk to etcd (a fence check, a sync lock, a clean-up), `cryptography` only when the
leader makes the client certificate; importing the package imports neither.

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

__version__ = "1.1.5+coordinated.2"
LIBID = "coordinated-ops-charmlibs-rollingops"
LIBAPI = 1
LIBPATCH = 2

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
