"""Restart engine `rollingops` (the default): charmlibs.rollingops, etcd lock with peer fallback.

Asynchronous restart (the usual path): the action queues a request; the library calls `_restart`
in a later hook when this unit holds the lock, on etcd when the `etcd` relation is ready, on the
peer relation otherwise. The fencing token of the grant goes into the operation journal (one
increasing sequence across both backends).

Synchronous restart (`sync=true`): the restart runs inside the action, under
`acquire_sync_lock`: the etcd lock when etcd is available, else `LeaderPeerSyncLock`, a peer lock
that only the leader can take, and only while no unit holds or waits to run under a grant.
"""

from __future__ import annotations

import logging
import pathlib

import ops
from charmlibs.rollingops import (
    OperationResult,
    RollingOpsError,
    RollingOpsManager,
    RollingOpsStatus,
    SyncLockBackend,
)

import paths
import restart
from restart.controls import Controls

logger = logging.getLogger(__name__)

PEER_RELATION = "rollingops"
ETCD_RELATION = "etcd"
MAX_RETRY = 2  # a failed restart runs at most 3 times, then is dropped (and logged)
SYNC_TIMEOUT = 60
STATUS_LIMIT = 160  # characters of the etcd problem shown in the unit status


def base_dir() -> pathlib.Path:
    """The library's local state directory."""
    return paths.root() / "var/lib/rollingops"


class LeaderPeerSyncLock(SyncLockBackend):
    """The peer-mode sync lock: held by the leader's current hook while the peer lock is free.

    Only the leader's hooks grant the peer lock and Juju runs them one at a time, so while the
    leader is inside this lock no grant can be issued. A non-leader cannot take it (it would need
    the leader's cooperation in another hook): it fails at once, telling the operator why.
    """

    def __init__(self, engine: RollingOpsEngine):
        self.engine = engine

    def acquire(self, timeout: int | None) -> None:
        """Succeed at once or fail at once: waiting inside the leader's hook would be useless."""
        manager = self.engine.manager
        if not manager.model.unit.is_leader():
            raise RuntimeError(
                "without etcd only the leader can restart synchronously; run it on the leader "
                "or drop sync=true"
            )
        if not manager.peer_lock_free():
            raise TimeoutError("another unit holds or is about to take the lock; retry later")

    def release(self) -> None:
        """Nothing to undo: the lock was never written anywhere."""


class RollingOpsEngine(ops.Object):
    """Queues restarts on charmlibs.rollingops; the library's callback runs the restart."""

    name = "rollingops"

    def __init__(self, charm: ops.CharmBase, journal_dirs: restart.JournalDirs):
        super().__init__(charm, "restart-engine-rollingops")
        self.charm = charm
        self._journal_dirs = journal_dirs
        self.controls = Controls(charm, lambda: self.manager)
        self.manager = RollingOpsManager(
            charm,
            callback_targets={"restart": self._restart},
            peer_relation_name=PEER_RELATION,
            etcd_relation_name=ETCD_RELATION,
            cluster_id=charm.app.name,
            sync_lock_targets={"peer": LeaderPeerSyncLock(self)},
            max_parallel=self.controls.settings.max_parallel,
            halt_after_failures=self.controls.settings.halt_after_failures,
            maintenance_window=self.controls.settings.maintenance_window,
            base_dir=base_dir(),
        )

    def _require_peer_relation(self) -> None:
        if self.model.get_relation(PEER_RELATION) is None:
            raise restart.EngineNotReady(
                f"the peer relation '{PEER_RELATION}' is not ready yet; run the action again "
                "once the unit has started"
            )

    def request(self, delay: int) -> str:
        """Queue a restart; it runs when this unit is granted the lock."""
        self._require_peer_relation()
        try:
            self.manager.request_async_lock(
                "restart", kwargs={"delay": delay}, max_retry=MAX_RETRY
            )
        except RollingOpsError as error:
            raise restart.EngineNotReady(f"rollingops refused the request: {error}") from error
        backend = self.manager.state.processing_backend
        return f"restart queued with rollingops ({backend} backend); units restart one at a time"

    def restart_now(self, delay: int) -> str:
        """Restart inside this action under the sync lock; raise EngineNotReady if not possible."""
        self._require_peer_relation()  # else the peer lock looks busy, which it is not
        try:
            with self.manager.acquire_sync_lock("peer", timeout=SYNC_TIMEOUT) as grant:
                token = getattr(grant, "token", None)
                backend = str(grant.backend) if grant is not None else "peer"
                ok = self._run_restart(delay, token, backend)
        except TimeoutError as error:
            raise restart.EngineNotReady(f"sync restart: lock busy: {error}") from error
        except RollingOpsError as error:
            raise restart.EngineNotReady(f"sync restart: {error.__cause__ or error}") from error
        if not ok:
            raise restart.EngineNotReady("sync restart: the service did not come back healthy")
        fenced = "" if token is None else f", token {token}"
        lock = f"the rollingops sync lock ({backend} backend{fenced})"
        return f"restarted synchronously under {lock}"

    def in_flight(self) -> bool:
        """Cheap, for the status: a restart queued or running that the peer relation shows.

        Units on the etcd backend publish no queue, so their work is missed here; actions use
        `busy_for_action`.
        """
        relation = self.model.get_relation(PEER_RELATION)
        if relation is None:
            return False
        units = [None, *(unit.name for unit in relation.units)]
        return any(self.manager.is_waiting(unit) for unit in units)

    def progress(self) -> str | None:
        """The leader's app status line while a roll is on ("restart 3/10: app/4"), or None."""
        return self.manager.progress("restart")

    def busy_for_action(self) -> str | None:
        """Actions only (may ask etcd): why a restart may be in flight, or None when none is."""
        found = self.manager.busy_units()
        if found.unknown:
            return (
                f"cannot tell whether a rollingops restart is in flight: {found.unknown}; "
                "try again once etcd answers"
            )
        if found.units:
            units = ", ".join(found.units)
            return (
                f"a restart with engine 'rollingops' is in flight ({units}); wait for it to finish"
            )
        return None

    def unit_status(self) -> ops.StatusBase | None:
        """Blocked: bad config, etcd refused or peer data ignored; maintenance: restarting..."""
        problem = self.controls.unit_status()
        if problem is not None:
            return problem
        if self.model.get_relation(PEER_RELATION) is None:
            return None
        state = self.manager.state
        if state.etcd_problem:
            problem = state.etcd_problem[:STATUS_LIMIT]
            return ops.BlockedStatus(f"etcd refused, restarts use the peer relation: {problem}")
        if state.malformed:
            return ops.BlockedStatus(
                f"ignoring malformed '{PEER_RELATION}' data: {state.malformed[0]}"
            )
        if state.status is RollingOpsStatus.GRANTED:
            return ops.MaintenanceStatus(f"restarting (rollingops, {state.processing_backend})")
        if state.status is RollingOpsStatus.WAITING:
            return ops.WaitingStatus(f"restart queued (rollingops, {state.processing_backend})")
        if state.status is RollingOpsStatus.NOT_READY:
            return ops.WaitingStatus("rollingops not ready: see `juju debug-log`")
        return None

    def _restart(self, delay: int = 0) -> OperationResult:
        grant = self.manager.lock_grant
        token = grant.token if grant is not None else None
        backend = str(grant.backend) if grant is not None else None
        ok = self._run_restart(delay, token, backend)
        return OperationResult.RELEASE if ok else OperationResult.RETRY_RELEASE

    def _run_restart(self, delay: int, token: int | None, backend: str | None) -> bool:
        return restart.run_restart(
            self.charm.unit.name,
            engine=self.name,
            delay=delay,
            dirs=self._journal_dirs(),
            token=token,
            backend=backend,
        )
