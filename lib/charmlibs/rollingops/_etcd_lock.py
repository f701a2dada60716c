"""The etcd lock of charmlibs.rollingops: leases, tickets, put-if-absent acquire, fencing tokens.

Key layout v1 under ``P = /coordinated-ops/rollingops/v1/<cluster_id>/`` (see :func:`lock_prefix`),
owner ``O = <model-uuid>.<unit name with / replaced by ->`` (see :func:`owner_name`):

- ``P lock``: ``{"owner": O, "unit": "app/0", "kind": "async" | "sync"}`` on the holder's lease.
  The **fencing token** of a grant is this key's ``create_revision``.
- ``P waiting/<O>``: async ticket on the worker's lease; its ``create_revision`` is its place
  in line.
- ``P waiting-sync/<O>``: sync ticket; while one exists, async waiters do not try to acquire.
- ``P units/<O>``: ``{"unit", "pending", "holding"}`` for people looking at etcd (on the lease).

Acquire is one transaction "lock absent, and no ticket older than mine, and no sync ticket: put the
lock on my lease". When it fails, the waiter watches ``P`` from that transaction's revision + 1 and
tries again when a key is deleted, so a handoff costs one release, one watch event and one
transaction. Every call is idempotent, so a retried call after a lost response is harmless.

Worker side (one lease for the worker's life)::

    lock = EtcdLock.from_config(config, unit="app/0")
    with Lease(lock.client) as lease:
        lock.create_ticket(lease)
        token = lock.acquire(lease)          # blocks on an etcd watch
        ...                                  # dispatch the hook with `token`
        lock.release(token)

Hook side::

    lock.holds(token)                        # fence check before running a callback
    with lock.sync_lock(timeout=30) as token:  # TimeoutError on contention
        ...
    lock.cleanup_owner()                     # before switching this unit back to etcd
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._etcd_client import EtcdClient
    from ._files import EtcdConfig

LEASE_TTL = 60
"""Seconds a lease (and so a lock) outlives its last keep-alive."""

KEY_ROOT = "/coordinated-ops/rollingops/v1/"


def lock_prefix(cluster_id: str) -> str:
    """Return the key prefix ``P`` of the lock shared by every app using ``cluster_id``."""
    if not cluster_id or "/" in cluster_id:
        raise ValueError(f"invalid cluster id {cluster_id!r}")
    return f"{KEY_ROOT}{cluster_id}/"


def owner_name(model_uuid: str, unit_name: str) -> str:
    """Return the owner id ``O`` of a unit: ``<model-uuid>.<unit name with / replaced by ->``."""
    return f"{model_uuid}.{unit_name.replace('/', '-')}"


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds ``P lock`` now, as read from etcd."""

    owner: str
    unit: str
    kind: str  # "async" | "sync"
    token: int  # create_revision of the lock key
    lease: int


class Lease:
    """An etcd lease kept alive by a daemon thread every ``ttl / 3`` seconds.

    ``lost`` is set (and the loss callbacks run) when etcd says the lease is gone or no keep-alive
    has succeeded for a whole TTL; whatever was attached to it (lock, tickets) is then gone too.
    Use as a context manager: grant on enter, stop the thread and revoke on exit.
    """

    def __init__(self, client: EtcdClient, ttl: int = LEASE_TTL):
        self.client = client
        self.ttl = ttl
        self.id = 0
        self.lost = threading.Event()

    def grant(self) -> int:
        """Grant the lease and start the keep-alive thread; return the lease id."""
        raise NotImplementedError

    def revoke(self) -> None:
        """Stop the keep-alive thread and revoke the lease (deleting every key attached to it)."""
        raise NotImplementedError

    def add_loss_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the keep-alive thread) when the lease is lost."""
        raise NotImplementedError

    def __enter__(self) -> Lease:
        self.grant()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.revoke()


class EtcdLock:
    """The application-wide lock under prefix ``P``, seen from owner ``O`` (one unit).

    All methods raise :class:`~charmlibs.rollingops._etcd_client.EtcdError` (a
    ``RollingOpsEtcdctlError``) when etcd cannot be reached or answers with an error.
    """

    def __init__(self, client: EtcdClient, prefix: str, owner: str, unit: str):
        self.client = client
        self.prefix = prefix
        self.owner = owner
        self.unit = unit

    @classmethod
    def from_config(cls, config: EtcdConfig, unit: str, *, timeout: float = 5.0) -> EtcdLock:
        """Build a lock (and its client) from the local ``config.json`` of :mod:`._files`."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the client's connections."""
        raise NotImplementedError

    def holder(self) -> Holder | None:
        """Return the current holder of ``P lock``, or ``None`` when it is free."""
        raise NotImplementedError

    def holds(self, token: int) -> bool:
        """Fence check (one read): True if ``P lock`` is ours and was created at ``token``."""
        raise NotImplementedError

    def create_ticket(self, lease: Lease) -> int:
        """Put ``P waiting/<O>`` on ``lease`` if absent; return its ``create_revision``."""
        raise NotImplementedError

    def acquire(
        self, lease: Lease, *, timeout: float | None = None, cancel: threading.Event | None = None
    ) -> int:
        """Wait for our turn and take the async lock; return the fencing token.

        Needs our ticket (:meth:`create_ticket`). Raises ``TimeoutError`` after ``timeout`` s,
        :class:`LockCancelledError` when ``cancel`` is set or ``lease`` is lost.
        """
        raise NotImplementedError

    def release(self, token: int) -> bool:
        """Owner-guarded release: delete ``P lock`` if its token is ``token``, and our ticket.

        Returns True if the lock was ours and is now deleted.
        """
        raise NotImplementedError

    def requeue(self, token: int, lease: Lease) -> int:
        """Release (as :meth:`release`) and take a new ticket at the back of the line."""
        raise NotImplementedError

    def set_status(self, lease: Lease, *, pending: int, holding: int | None) -> None:
        """Publish ``P units/<O>`` for observability."""
        raise NotImplementedError

    def cleanup_owner(self) -> None:
        """Remove every trace of this owner: tickets, status key, the lock if it names us.

        Leases attached to those keys are revoked. Used before a unit switches back from peer to
        etcd (spec §5.2); safe to call when nothing is left.
        """
        raise NotImplementedError

    @contextlib.contextmanager
    def sync_lock(self, timeout: float | None) -> Iterator[int]:
        """Hold the lock for the ``with`` block (spec §4.6) and yield the fencing token.

        Own lease (TTL 60 s, kept alive inside the block) and ``waiting-sync/<O>`` ticket; sync
        waiters go before async tickets. If ``P lock`` is held by this unit's own async owner (the
        hook runs its callback under the worker's grant) it is re-entrant: yields that token and
        leaves the lock in place. Raises ``TimeoutError`` when not acquired within ``timeout`` s
        (``None``: wait forever). Exceptions of the block propagate after release.
        """
        raise NotImplementedError
        yield 0


class LockCancelledError(Exception):
    """:meth:`EtcdLock.acquire` gave up because it was cancelled or its lease was lost."""
