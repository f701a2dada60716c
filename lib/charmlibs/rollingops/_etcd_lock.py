"""The etcd lock of charmlibs.rollingops: leases, tickets, put-if-absent acquire, fencing tokens.

Key layout v1 under ``P = /coordinated-ops/rollingops/v1/<cluster_id>/`` (see :func:`lock_prefix`),
owner ``O = <model-uuid>.<unit name with / replaced by ->`` (see :func:`owner_name`):

- ``P lock``: ``{"owner": O, "unit": "app/0", "kind": "async" | "sync"}`` on the holder's lease.
  The **fencing token** of a grant is this key's ``create_revision``.
- ``P lock-<i>`` (i = 1 .. k-1): the other slots of a semaphore of k slots, same value, taken by
  a worker whose ``max_parallel`` is k > 1 (see :meth:`EtcdLock.acquire`); ``P lock`` is slot 0.
- ``P waiting/<O>``: async ticket on the worker's lease; its ``create_revision`` is its place
  in line.
- ``P waiting-sync/<O>``: sync ticket; while one exists, async waiters do not try to acquire.
- ``P units/<O>``: ``{"unit", "pending", "holding"}`` for people looking at etcd (on the lease).
- ``P paused/<model-uuid>.<app>``: present while that application's lock is paused (no lease);
  an async acquire requires it absent (the sync lock ignores it: an operator runs it by hand).
  Its value is ``"paused"`` when the leader put it (pause action, closed maintenance window;
  the leader deletes only that value) or the halt reason a worker put (``halted after 1 failed
  operation(s): app/3``; only ``resume`` deletes it).
- ``P wake/<model-uuid>.<app>``: put and deleted at once by a ``resume`` that keeps the pause
  key (a closed maintenance window): its deletion wakes the waiters, which then read the key's
  new value (``"paused"``) and stop reporting the halt (see :meth:`EtcdLock.resume`).
- ``P roll/<model-uuid>.<app>``: that application's roll record (no lease), the JSON of the
  peer ``rollingops-roll`` (``{"active", "done", "failed", "strikes"}``, ``failed`` the units of
  the last 50 failed operations): see :meth:`EtcdLock.release_recorded` and ``_controls``.

Every key is under ``P``, the prefix charmed-etcd grants our user read-write on (and nothing
else).

Acquire is one transaction "lock absent, and no ticket older than mine, and no sync ticket: put the
lock on my lease" (with k slots: "slot i absent, ...: put slot i and delete my ticket", i a slot
the last read saw free; deleting the ticket makes the next waiter the oldest, so it may take
another free slot). When it fails, the waiter watches ``P`` from that transaction's revision + 1
and tries again when a key is deleted, so a handoff costs one release, one watch event and one
transaction. Every call is idempotent, so a retried call after a lost response is harmless.

Worker side (one lease for the worker's life)::

    lock = EtcdLock.from_config(config, unit="app/0")
    with Lease(lock.client) as lease:
        lock.create_ticket(lease)
        token = lock.acquire(lease)          # blocks on an etcd watch
        ...                                  # dispatch the hook with `token`
        lock.release_recorded(token, result, more_work=..., halt_after=1)  # or release(token)

Hook side::

    slot = lock.keep_slot(token)             # fence check; None: not ours, run nothing
    try:
        ...                                  # the callback; the slot's lease is kept alive
    finally:
        slot.stop()
    with lock.sync_lock(timeout=30) as token:  # TimeoutError on contention
        ...
    lock.cleanup_owner()                     # before switching this unit back to etcd
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

from ._controls import (
    PAUSE_REASON_LIMIT,
    PAUSED_BY_LEADER,
    UNIT_NAME_LIMIT,
    Roll,
    halt_reason,
)
from ._etcd_client import (
    EtcdClient,
    EtcdCompactedError,
    EtcdConnectionError,
    EtcdError,
    KeyValue,
    WatchCancelledError,
    compare_create,
    compare_mod,
    compare_value,
    op_delete,
    op_put,
    op_range,
    prefix_end,
)
from ._models import printable

if TYPE_CHECKING:
    from ._files import EtcdConfig

logger = logging.getLogger(__name__)

LEASE_TTL = 60
"""Seconds a lease (and so a lock) outlives its last keep-alive."""

KEY_ROOT = "/coordinated-ops/rollingops/v1/"
ASYNC = "async"
CAS_ATTEMPTS = 20  # read-compare-write rounds on the roll record before giving up (no sleeps)
NOT_FOUND = 5  # gRPC status code etcd returns for an unknown lease
SYNC = "sync"


class LockCancelledError(EtcdError):
    """:meth:`EtcdLock.acquire` gave up: ``cancel_wait`` was called or the lease died."""


def app_owner_of(owner: str) -> str:
    """``<model-uuid>.<app>`` of a unit's owner name: what precedes its last ``-<number>``.

    Compared exactly: a prefix test would take app ``db-backup``'s units for app ``db``'s.
    """
    return owner.rsplit("-", 1)[0]


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
    """Who holds ``P lock`` now, as read from etcd (owner ``""`` if the value is not ours)."""

    owner: str
    unit: str
    kind: str  # "async" | "sync" | "unknown"
    token: int  # create_revision of the lock key
    lease: int

    @classmethod
    def from_kv(cls, kv: KeyValue) -> Holder:
        """Decode the lock key; a value we cannot read still counts as held by someone else."""
        try:
            data = json.loads(kv.value)
            owner, unit, kind = str(data["owner"]), str(data["unit"]), str(data["kind"])
            unit = printable(unit, UNIT_NAME_LIMIT)  # shown in statuses; any client may write
        except (ValueError, TypeError, KeyError, RecursionError):  # any client may write it
            logger.warning("unreadable value of %s, treated as a foreign holder", kv.key)
            owner, unit, kind = "", "", "unknown"
        return cls(owner=owner, unit=unit, kind=kind, token=kv.create_revision, lease=kv.lease)


@dataclasses.dataclass(frozen=True)
class AppState:
    """One application's lock as one read of etcd shows it (see :meth:`EtcdLock.app_state`)."""

    holders: list[str]
    queue: list[str]  # in grant order
    roll: Roll
    paused: str | None  # the pause key's value, None when absent


def _decode(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _pause_value(value: bytes) -> str:
    """A pause key's value for statuses: any application on the prefix may have written it."""
    return printable(_decode(value), PAUSE_REASON_LIMIT)


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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._callbacks: list[Callable[[], None]] = []
        self._guard = threading.Lock()

    def grant(self) -> int:
        """Grant the lease and start the keep-alive thread; return the lease id."""
        self.id = self.client.lease_grant(self.ttl)
        self._start()
        return self.id

    @classmethod
    def kept(cls, client: EtcdClient, lease_id: int, ttl: int = LEASE_TTL) -> Lease:
        """Keep alive a lease another process granted (until :meth:`stop`; never revoked here)."""
        lease = cls(client, ttl)
        lease.id = lease_id
        lease._start()
        return lease

    def _start(self) -> None:
        self._thread = threading.Thread(
            target=self._heartbeat, name=f"etcd-lease-{self.id:x}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the keep-alive thread (the lease then runs out a TTL after its last refresh)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.client.timeout + 1)  # at most one keep-alive call in flight

    def _heartbeat(self) -> None:
        last_ok = time.monotonic()
        # The lease keep-alive heartbeat: the one periodic wait the library has.
        while not self._stop.wait(self.ttl / 3):
            try:
                ttl = self.client.lease_keepalive(self.id)
            except EtcdError as e:
                if time.monotonic() - last_ok >= self.ttl:
                    self.mark_lost(f"no keep-alive for {self.ttl} s: {e}")
                    return
                logger.warning("etcd lease keep-alive failed (will retry): %s", e)
                continue
            if ttl <= 0:
                self.mark_lost("etcd no longer knows it")
                return
            last_ok = time.monotonic()

    def mark_lost(self, why: str) -> None:
        """Record that the lease is gone and run the loss callbacks (once)."""
        logger.error("etcd lease %x lost: %s", self.id, why)
        with self._guard:
            if self.lost.is_set():
                return
            self.lost.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_loss_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the keep-alive thread) when the lease is lost."""
        with self._guard:
            if not self.lost.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def remove_loss_callback(self, callback: Callable[[], None]) -> None:
        """Forget a callback registered with :meth:`add_loss_callback`."""
        with self._guard, contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def revoke(self) -> None:
        """Stop the keep-alive thread and revoke the lease (deleting every key attached to it)."""
        self.stop()
        if self.id and not self.lost.is_set():
            self.client.lease_revoke(self.id)

    def __enter__(self) -> Lease:
        self.grant()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.revoke()
        except EtcdError as e:
            logger.warning("could not revoke etcd lease %x (it expires by itself): %s", self.id, e)


class EtcdLock:
    """The application-wide lock under prefix ``P``, seen from owner ``O`` (one unit).

    All methods raise :class:`~charmlibs.rollingops._etcd_client.EtcdError` (a
    ``RollingOpsEtcdctlError``) when etcd cannot be reached or answers with an error.
    """

    def __init__(self, client: EtcdClient, prefix: str, owner: str, unit: str):
        if not prefix.endswith("/"):
            raise ValueError(f"prefix must end with '/': {prefix!r}")
        self.client = client
        self.prefix = prefix
        self.owner = owner
        self.unit = unit
        self.lock_key = prefix + "lock"
        self._slot_of: dict[int, str] = {}  # token -> slot key, for the grants taken here
        self.waiting = prefix + "waiting/"
        self.waiting_sync = prefix + "waiting-sync/"
        self.status_key = f"{prefix}units/{owner}"
        app_owner = app_owner_of(owner)  # <model-uuid>.<app>: this unit's application
        self.pause_key = f"{prefix}paused/{app_owner}"
        self.roll_key = f"{prefix}roll/{app_owner}"
        self.wake_key = f"{prefix}wake/{app_owner}"
        self.pause_seen: str | None = None  # the pause key as the last async attempt read it
        self._cancelled = threading.Event()
        self._watch_guard = threading.Lock()
        self._watch = None

    @classmethod
    def from_config(
        cls, config: EtcdConfig, unit: str, *, timeout: float = 5.0, attempts: int = 3
    ) -> EtcdLock:
        """Build a lock (and its client) from the local ``config.json`` of :mod:`._files`."""
        client = EtcdClient(
            config.endpoints,
            ca_file=config.server_ca,
            cert_file=config.cert,
            key_file=config.key,
            timeout=timeout,
            attempts=attempts,
        )
        return cls(client, config.prefix, config.owner, unit)

    def close(self) -> None:
        """Close the client's connections."""
        self.client.close()

    def ticket_key(self, *, sync: bool = False) -> str:
        """Return this owner's ticket key (``P waiting/<O>`` or ``P waiting-sync/<O>``)."""
        return (self.waiting_sync if sync else self.waiting) + self.owner

    def _value(self, kind: str) -> str:
        return json.dumps({"owner": self.owner, "unit": self.unit, "kind": kind}, sort_keys=True)

    # -- reading --

    def slot_key(self, slot: int) -> str:
        """Return the key of semaphore slot ``slot``: ``P lock`` for 0, ``P lock-<i>`` else."""
        return self.lock_key if slot == 0 else f"{self.lock_key}-{slot}"

    def is_slot(self, key: str) -> bool:
        """Whether ``key`` is a slot of the lock (``P lock`` or ``P lock-<i>``)."""
        if key == self.lock_key:
            return True
        rest = key[len(self.lock_key) + 1 :]
        return key.startswith(self.lock_key + "-") and rest.isdigit() and rest[0] != "0"

    def holder(self) -> Holder | None:
        """Return the current holder of ``P lock`` (slot 0), or ``None`` when it is free."""
        kv = self.client.get(self.lock_key)
        return Holder.from_kv(kv) if kv else None

    def holders(self) -> list[Holder]:
        """Every slot held now (one range read), in slot-key order."""
        kvs = self.client.range(self.lock_key, prefix_end(self.lock_key)).kvs
        return [Holder.from_kv(kv) for kv in kvs if self.is_slot(kv.key)]

    def holds(self, token: int) -> bool:
        """Fence check (one read): True if a slot is ours and was created at ``token``."""
        return any(
            holder.owner == self.owner and holder.token == token for holder in self.holders()
        )

    def keep_slot(self, token: int) -> Lease | None:
        """Fence check for a granted hook that also keeps the slot while the operation runs.

        None when no slot of ours was created at ``token`` or its lease is gone. Otherwise the
        slot's lease (its worker's) is refreshed at once and kept alive by the returned
        :class:`Lease` until its :meth:`Lease.stop`: a worker killed after its grant, whose hook
        starts late, no longer lets the slot expire under the running operation (it expires a
        TTL after the operation ends instead). One read and one keep-alive.
        """
        mine = [h for h in self.holders() if h.owner == self.owner and h.token == token]
        if not mine or not mine[0].lease:
            return None
        ttl = self.client.lease_keepalive(mine[0].lease)  # the lease's own TTL, 0 when gone
        return Lease.kept(self.client, mine[0].lease, ttl) if ttl > 0 else None

    def busy_owners(self) -> set[str]:
        """Owners that hold ``P lock`` or a ticket, of every application under ``P``: one read.

        The keys sort as ``lock`` < ``units/`` < ``waiting-sync/`` < ``waiting/``, so one range
        ``[P lock, end of P waiting/)`` sees the lock and both ticket lines at one revision (the
        ``units/`` keys in between are skipped). A ticket's owner is its key's last part; the
        lock's is in its value (an unreadable value names no owner).
        """
        owners: set[str] = set()
        for kv in self.client.range(self.lock_key, prefix_end(self.waiting)).kvs:
            if self.is_slot(kv.key):
                owners.add(Holder.from_kv(kv).owner)
            elif kv.key.startswith((self.waiting, self.waiting_sync)):
                owners.add(kv.key.rsplit("/", 1)[1])
        owners.discard("")
        return owners

    def app_state(self, app_owner: str) -> AppState:
        """``app_owner``'s slots, line, roll record and pause key: one range read.

        The keys sort as ``lock`` < ``lock-<i>`` < ``paused/`` < ``roll/`` < ``units/`` <
        ``waiting-sync/`` < ``waiting/``, so ``[P lock, end of P waiting/)`` holds them all at
        one revision. A malformed roll record is logged and reads as a new roll.
        """
        holders: list[str] = []
        waiting: list[tuple[int, str]] = []
        roll_kv = pause_kv = None
        pause_key = f"{self.prefix}paused/{app_owner}"
        roll_key = f"{self.prefix}roll/{app_owner}"
        for kv in self.client.range(self.lock_key, prefix_end(self.waiting)).kvs:
            if self.is_slot(kv.key):
                holder = Holder.from_kv(kv)
                if app_owner_of(holder.owner) == app_owner:
                    holders.append(holder.unit)
            elif kv.key.startswith(self.waiting):
                owner = kv.key[len(self.waiting) :]
                if app_owner_of(owner) == app_owner:
                    waiting.append((kv.create_revision, owner))
            elif kv.key == roll_key:
                roll_kv = kv
            elif kv.key == pause_key:
                pause_kv = kv
        app = app_owner.split(".", 1)[-1]
        queue = [f"{app}/{owner.rsplit('-', 1)[1]}" for _, owner in sorted(waiting)]
        return AppState(
            holders=sorted(holders),
            queue=[unit for unit in queue if unit not in holders],
            roll=self._roll(roll_kv),
            paused=_pause_value(pause_kv.value) if pause_kv is not None else None,
        )

    def _roll(self, kv: KeyValue | None) -> Roll:
        """The roll record in `kv` (None: a new roll); a malformed one is logged, a new roll."""
        if kv is None:
            return Roll()
        return Roll.parse(_decode(kv.value), f"etcd: bad roll record {kv.key}", [])

    def set_paused(self, paused: bool) -> None:
        """The leader's pause: put ``P paused/<app>`` if absent, or delete it if it is ours.

        One transaction. A halt reason a worker put stays (only :meth:`resume` clears it).
        """
        if paused:
            absent = compare_create(self.pause_key, "EQUAL", 0)
            self.client.txn([absent], [op_put(self.pause_key, PAUSED_BY_LEADER)])
        else:
            ours = compare_value(self.pause_key, "EQUAL", PAUSED_BY_LEADER)
            self.client.txn([ours], [op_delete(self.pause_key)])

    def resume(self, *, keep_paused: bool = False, force: bool = False) -> bool:
        """Clear a halt: strikes to 0 and the pause key deleted, in one transaction.

        Returns whether a worker's halt was there. Without ``force``, nothing is written
        unless there was one. ``keep_paused`` (a closed maintenance window): the pause key
        stays, as the leader's (``"paused"``): a put wakes no waiter, so the same transaction
        puts ``P wake/<app>`` and a second call deletes it, and every waiter tries again, reads
        the new value and stops reporting the halt (a failed delete is logged: the waiters then
        report it until the next deletion). The roll record is compared by mod_revision; a
        concurrent change is re-read and retried (at most ``CAS_ATTEMPTS`` rounds).
        """
        for _ in range(CAS_ATTEMPTS):
            read = self.client.txn([], [op_range(self.roll_key), op_range(self.pause_key)])
            roll_kvs, pause_kvs = read.kvs(0), read.kvs(1)
            halted = bool(pause_kvs) and pause_kvs[0].value != PAUSED_BY_LEADER.encode()
            if not halted and not force:
                return False
            roll_kv = roll_kvs[0] if roll_kvs else None
            roll = self._roll(roll_kv)
            writes = [
                op_put(self.pause_key, PAUSED_BY_LEADER)
                if keep_paused
                else op_delete(self.pause_key)
            ]
            if roll.strikes:
                roll.strikes = 0
                writes.append(op_put(self.roll_key, roll.to_json()))
            wake = keep_paused and halted
            if wake:
                writes.append(op_put(self.wake_key, ""))
            revision = roll_kv.mod_revision if roll_kv is not None else 0
            if self.client.txn([compare_mod(self.roll_key, "EQUAL", revision)], writes).succeeded:
                if wake:
                    try:
                        self.client.delete(self.wake_key)
                    except EtcdError as e:
                        logger.warning("waiters not woken (they wake at the next release): %s", e)
                return halted
        raise EtcdError(f"{self.roll_key} kept changing: resume not recorded, try again")

    # -- tickets --

    def create_ticket(self, lease: Lease, *, sync: bool = False) -> int:
        """Put our ticket on ``lease`` if absent; return its ``create_revision``.

        Idempotent: an existing ticket keeps its place (and is moved onto ``lease`` if it was on
        an older lease of ours, e.g. one of a previous worker).
        """
        key = self.ticket_key(sync=sync)
        value = self._value(SYNC if sync else ASYNC)
        result = self.client.txn(
            [compare_create(key, "EQUAL", 0)], [op_put(key, value, lease.id)], [op_range(key)]
        )
        if result.succeeded:
            return result.revision
        existing = result.kvs(0)[0]
        if existing.lease != lease.id:
            self.client.put(key, value, lease.id)  # a put keeps the create_revision
        return existing.create_revision

    def delete_ticket(self, *, sync: bool = False) -> None:
        """Delete our ticket (leave the line)."""
        self.client.delete(self.ticket_key(sync=sync))

    # -- acquire / release --

    def acquire(
        self,
        lease: Lease,
        *,
        timeout: float | None = None,
        sync: bool = False,
        slots: int = 1,
        on_wait: Callable[[str | None], None] | None = None,
    ) -> int:
        """Wait for our turn and take the lock (one of ``slots`` slots); return the fencing token.

        Creates our ticket if needed (:meth:`create_ticket`). Async: our ticket must be the oldest
        in ``waiting/`` and ``waiting-sync/`` must be empty. Sync: our ticket must be the oldest
        in ``waiting-sync/`` (async tickets are skipped). Waiting is an etcd watch from the failed
        transaction's revision + 1. Raises ``TimeoutError`` after ``timeout`` s (``None``:
        forever) and :class:`LockCancelledError` after :meth:`cancel_wait` or when ``lease`` is
        lost. ``on_wait`` is called before each wait with :attr:`pause_seen` (async: the pause
        key's value as that failed attempt read it, None when absent): a halt is put in the same
        transaction as a slot's deletion and a resume deletes the key, so every waiter wakes,
        tries and reports each change.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            position = self.create_ticket(lease, sync=sync)
            while True:
                if self._cancelled.is_set() or lease.lost.is_set():
                    raise LockCancelledError("lock wait cancelled or lease lost")
                token, revision, position = self._try_acquire(lease, position, sync, slots)
                if token:
                    return token
                if on_wait is not None:
                    on_wait(self.pause_seen)
                self._wait_for_deletion(revision + 1, deadline, lease)
        except EtcdError as e:
            if e.code == NOT_FOUND and "lease" in str(e):
                lease.mark_lost("etcd no longer knows it")
                raise LockCancelledError(f"lease lost while waiting: {e}") from e
            raise

    def _try_acquire(
        self, lease: Lease, position: int, sync: bool, slots: int = 1
    ) -> tuple[int, int, int]:
        """Try to take a slot; returns (token or 0, revision of the attempt, ticket position).

        One transaction for slot 0 (the only slot when ``slots`` is 1, and of a sync lock). With
        more slots, a failed attempt's read of every slot names a free one to try next, so an
        attempt is at most ``slots`` transactions (each slot is tried once).
        """
        slots = 1 if sync else max(1, slots)
        tried: set[str] = set()
        key = self.lock_key
        while True:
            tried.add(key)
            token, revision, position, held = self._try_slot(lease, position, sync, key, slots)
            untried = {self.slot_key(i) for i in range(slots)} - held - tried
            if token or key not in held or not untried:
                return token, revision, position  # taken, or not our turn, or every slot full
            key = min(untried, key=lambda k: (len(k), k))

    def _try_slot(
        self, lease: Lease, position: int, sync: bool, key: str, slots: int
    ) -> tuple[int, int, int, set[str]]:
        """One transaction for slot ``key``: `_try_acquire`'s answer plus the slots seen held.

        With ``slots`` > 1 it deletes our ticket when it takes the slot, and reads every slot.
        An async attempt also reads the pause key when it fails (:attr:`pause_seen`).
        """
        compares = [compare_create(key, "EQUAL", 0)]
        sync_end = prefix_end(self.waiting_sync)
        if sync:
            compares.append(compare_create(self.waiting_sync, "GREATER", position - 1, sync_end))
        else:
            compares.append(compare_create(self.waiting_sync, "LESS", 1, sync_end))
            waiting_end = prefix_end(self.waiting)
            compares.append(compare_create(self.waiting, "GREATER", position - 1, waiting_end))
            compares.append(compare_create(self.pause_key, "EQUAL", 0))
        kind = SYNC if sync else ASYNC
        success = [op_put(key, self._value(kind), lease.id)]
        if slots > 1:
            success.append(op_delete(self.ticket_key()))
            lock_read = op_range(self.lock_key, prefix_end(self.lock_key))
        else:
            lock_read = op_range(self.lock_key)
        failure = [lock_read, op_range(self.ticket_key(sync=sync))]
        if not sync:
            failure.append(op_range(self.pause_key))
        result = self.client.txn(compares, success, failure)
        if result.succeeded:
            self._slot_of[result.revision] = key
            self.pause_seen = None
            return result.revision, result.revision, position, set()
        if not sync:
            self.pause_seen = next((_pause_value(kv.value) for kv in result.kvs(2)), None)
        locks = [kv for kv in result.kvs(0) if self.is_slot(kv.key)]
        for lock in locks:
            if lock.lease == lease.id and Holder.from_kv(lock).owner == self.owner:
                # Our own earlier attempt succeeded but its response was lost: the slot is ours.
                self._slot_of[lock.create_revision] = lock.key
                held = {kv.key for kv in locks}
                return lock.create_revision, result.revision, position, held
        if not result.kvs(1):
            if lease.lost.is_set():
                raise LockCancelledError("lease lost while waiting")
            logger.warning("our etcd ticket vanished; taking a new one")
            position = self.create_ticket(lease, sync=sync)
        return 0, result.revision, position, {kv.key for kv in locks}

    def _relevant(self, key: str) -> bool:
        return (
            self.is_slot(key)
            or key in (self.pause_key, self.wake_key)
            or key.startswith(self.waiting)
            or key.startswith(self.waiting_sync)
        )

    def _wait_for_deletion(self, start: int, deadline: float | None, lease: Lease) -> None:
        """Block until a lock or ticket key is deleted at revision >= ``start``.

        A broken stream is resumed from the last revision seen, after bounded exponential backoff
        (tenacity); a compacted start revision returns at once (the caller re-reads and retries).
        """
        import tenacity

        progress = [start]
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.client.attempts),
            wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
            retry=tenacity.retry_if_exception_type(EtcdConnectionError),
            before_sleep=lambda state: logger.warning(
                "etcd watch broke, resuming from revision %s: %s",
                progress[0],
                state.outcome.exception() if state.outcome else None,
            ),
            reraise=True,
        )
        try:
            retrying(self._watch_once, progress, deadline, lease)
        except EtcdCompactedError:
            return

    def _watch_once(self, progress: list[int], deadline: float | None, lease: Lease) -> None:
        """Watch from ``progress[0]`` until a relevant deletion, advancing ``progress[0]``."""
        watch = self.client.watch(
            self.prefix,
            prefix_end(self.prefix),
            start_revision=progress[0],
            no_put=True,
            timeout=_remaining(deadline),
        )
        with self._watch_guard:
            self._watch = watch
        lease.add_loss_callback(watch.cancel)
        try:
            while True:
                if self._cancelled.is_set():
                    raise LockCancelledError("lock wait cancelled")
                try:
                    response = watch.next(_remaining(deadline))
                except WatchCancelledError as e:
                    raise LockCancelledError("lock wait cancelled or lease lost") from e
                progress[0] = max(event.kv.mod_revision for event in response.events) + 1
                if any(self._relevant(event.kv.key) for event in response.events):
                    return
        finally:
            lease.remove_loss_callback(watch.cancel)
            with self._watch_guard:
                self._watch = None
            watch.close()

    def cancel_wait(self) -> None:
        """Make a pending or later :meth:`acquire` raise :class:`LockCancelledError`.

        Safe to call from any thread (e.g. a signal handler's helper or a test).
        """
        self._cancelled.set()
        with self._watch_guard:
            watch = self._watch
        if watch is not None:
            watch.cancel()

    def release(self, token: int, *, sync: bool = False, key: str | None = None) -> bool:
        """Owner-guarded release: delete the slot if its token is ``token``, and our ticket.

        One transaction. The slot is ``key``, else the one this object took at ``token``, else
        ``P lock``. Returns True if the slot was ours and is now deleted.
        """
        slot = key or self._slot_of.pop(token, self.lock_key)
        ticket = self.ticket_key(sync=sync)
        result = self.client.txn(
            [compare_create(slot, "EQUAL", token)],
            [op_delete(slot), op_delete(ticket)],
            [op_delete(ticket)],
        )
        return result.succeeded

    def release_recorded(
        self, token: int, result: str | None, *, more_work: bool, halt_after: int | None
    ) -> bool:
        """:meth:`release` that records ``result`` in the roll record, in the same transaction.

        Read (one range: slots, pause key, roll record, tickets), then one transaction: "slot
        created at ``token`` (fencing) and roll record unchanged (mod_revision): put the new
        record, delete the slot and our ticket, and put the pause key with the halt reason when
        the strikes reach ``halt_after``" (over the leader's ``"paused"`` too: a maintenance
        window that opens does not lift a halt). So no slot is granted between a failure and
        the halt. A changed record is re-read and retried (at most ``CAS_ATTEMPTS`` rounds, then a
        plain release, logged: the count is lost, the slot is not kept). A slot that is no
        longer ours records nothing (plain release: our ticket goes). A result that counts
        nothing (`not-granted`, None) still ends the roll when it leaves nothing behind.

        The roll: a result recorded while the record is inactive begins a new one (counts from
        0). After this release the record is inactive when no slot or ticket of this
        application is left, ``more_work`` is False (this unit's pending work) and the
        application is not paused. Returns True if the slot was ours and is now deleted.
        """
        slot = self._slot_of.get(token, self.lock_key)
        for _ in range(CAS_ATTEMPTS):
            kvs = self.client.range(self.lock_key, prefix_end(self.waiting)).kvs
            by_key = {kv.key: kv for kv in kvs}
            mine = by_key.get(slot)
            if mine is None or mine.create_revision != token:
                logger.warning("slot %s is not ours (token %s): nothing recorded", slot, token)
                return self.release(token)
            roll_kv = by_key.get(self.roll_key)
            roll = self._roll(roll_kv)
            if result is not None and not roll.active:
                roll = Roll(active=True)  # a new roll begins with its first result
            roll.record(self.unit, result or "")
            halt = halt_reason(roll, halt_after)
            left = self._app_busy(kvs, slot) or more_work or self.pause_key in by_key
            roll.active = roll.active and (left or halt is not None)
            writes = [op_delete(slot), op_delete(self.ticket_key())]
            if roll_kv is not None or roll.active:
                writes.append(op_put(self.roll_key, roll.to_json()))
            if halt is not None:
                writes.append(op_put(self.pause_key, halt))  # the same txn as the slot's delete
            compares = [
                compare_create(slot, "EQUAL", token),
                compare_mod(self.roll_key, "EQUAL", roll_kv.mod_revision if roll_kv else 0),
            ]
            if self.client.txn(compares, writes).succeeded:
                self._slot_of.pop(token, None)
                if halt is not None:
                    logger.warning("the rolling operation is halted: %s", halt)
                return True
        logger.error("%s kept changing: result %s not recorded", self.roll_key, result)
        return self.release(token)

    def _app_busy(self, kvs: list[KeyValue], slot: str) -> bool:
        """Whether ``kvs`` (one read) hold another slot or async ticket of this application."""
        app = app_owner_of(self.owner)
        for kv in kvs:
            if kv.key in (slot, self.ticket_key()):
                continue
            if self.is_slot(kv.key) and app_owner_of(Holder.from_kv(kv).owner) == app:
                return True
            waiting = kv.key[len(self.waiting) :]
            if kv.key.startswith(self.waiting) and app_owner_of(waiting) == app:
                return True
        return False

    def requeue(self, token: int, lease: Lease) -> int:
        """Release (as :meth:`release`) and take a new ticket at the back of the line."""
        self.release(token)
        return self.create_ticket(lease)

    def set_status(self, lease: Lease, *, pending: int, holding: int | None) -> None:
        """Publish ``P units/<O>`` for observability."""
        value = json.dumps({"unit": self.unit, "pending": pending, "holding": holding})
        self.client.put(self.status_key, value, lease.id)

    def cleanup_owner(self) -> None:
        """Remove every trace of this owner: tickets, status key, the lock if it names us.

        The leases attached to those keys are revoked too. Used before a unit switches back from
        peer to etcd (the clean-up step of a mode switch, see _etcd_backend); safe to call when
        nothing is left.
        """
        keys = [self.ticket_key(), self.ticket_key(sync=True), self.status_key]
        slots = op_range(self.lock_key, prefix_end(self.lock_key))
        result = self.client.txn([], [slots] + [op_range(key) for key in keys], [])
        leases = {kv.lease for i in range(1, 4) for kv in result.kvs(i) if kv.lease}
        for lock in result.kvs(0):
            if self.is_slot(lock.key) and Holder.from_kv(lock).owner == self.owner:
                leases.add(lock.lease)
                self.release(lock.create_revision, key=lock.key)
                self.release(lock.create_revision, sync=True, key=lock.key)
        self.client.txn([], [op_delete(key) for key in keys], [])
        for lease in leases - {0}:
            self.client.lease_revoke(lease)

    # -- sync lock --

    @contextlib.contextmanager
    def sync_lock(self, timeout: float | None) -> Generator[int, None, None]:
        """Hold the lock for the ``with`` block and yield the fencing token.

        Own lease (TTL 60 s, kept alive inside the block) and ``waiting-sync/<O>`` ticket; sync
        waiters go before async tickets; the sync lock is slot 0 (``P lock``). If a slot is held
        by this unit's own async owner (the hook runs its callback under the worker's grant) it is
        re-entrant: yields that token and leaves the lock in place. Raises ``TimeoutError`` when
        not acquired within ``timeout`` s (``None``: wait forever). Exceptions of the block
        propagate after release.
        """
        ours = [holder for holder in self.holders() if holder.owner == self.owner]
        for holder in ours:
            if holder.kind == ASYNC:
                yield holder.token
                return
        for holder in ours:
            # Hooks of one unit never overlap, so a sync lock of ours is a leftover of a dead
            # hook: drop it rather than wait up to a lease TTL for it to expire.
            logger.warning("dropping a stale sync lock of this unit (token %s)", holder.token)
            self.release(holder.token, sync=True)
            if holder.lease:
                self.client.lease_revoke(holder.lease)
        lease = Lease(self.client, LEASE_TTL)
        lease.grant()
        try:
            token = self.acquire(lease, timeout=timeout, sync=True)
        except BaseException:
            _quiet_revoke(lease)
            raise
        try:
            yield token
        finally:
            try:
                self.release(token, sync=True)
            except EtcdError as e:
                logger.warning(
                    "could not release the sync lock (it expires with its lease): %s", e
                )
            _quiet_revoke(lease)


def _quiet_revoke(lease: Lease) -> None:
    try:
        lease.revoke()
    except EtcdError as e:
        logger.warning("could not revoke etcd lease %x (it expires by itself): %s", lease.id, e)


def _remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (``None``: no deadline); ``TimeoutError`` when past."""
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("timed out waiting for the etcd lock")
    return remaining
