"""Restart engine `rollingops` (the default): charmlibs.rollingops, etcd lock with peer fallback.

Asynchronous restart (the usual path): the action queues a request; the library calls `_restart`
in a later hook when this unit holds the lock, on etcd when the `etcd` relation is ready, on the
peer relation otherwise. The fencing token of the grant goes into the operation journal (one
increasing sequence across both backends).

Synchronous restart (`sync=true`): the restart runs inside the action, under
`acquire_sync_lock`: the etcd lock when etcd is available, else `LeaderPeerSyncLock`, a peer lock
that only the leader can take, and only while no unit holds or waits to run under a grant.

The one lock. This engine's lock is the charm's lock for every disruptive operation, not only
restarts: the NFS remount after an endpoint change (`nfs.NfsShare`) and each unit's upgrade step
(`upgrade.DemoUpgrade`) queue on it too, as the callbacks `remount` and `upgrade`
(`OPERATIONS`). They `register` their callback and `queue` requests; the library runs them one
unit at a time in grant order, on etcd or on the peer relation, whichever backend is in use. So
a restart, a remount and an upgrade step never run on two units at once, and each waits for the
others instead of being refused. The v0 and coordinator engines keep their own locks (see
`restart.policy`).
"""

from __future__ import annotations

import functools
import logging
import pathlib
from collections.abc import Callable

import ops
from charmlibs.rollingops import (
    OperationResult,
    ProcessingBackend,
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
OPERATIONS = ("restart", "remount", "upgrade")  # the callbacks of the one lock, in status order
VERBS = {"restart": "restarting", "remount": "remounting", "upgrade": "upgrading"}
NOUNS = {"restart": "restart", "remount": "remount", "upgrade": "upgrade step"}
REASON_LIMIT = 100  # characters of the pause reason shown in a status
SHOWN_UNITS = 3  # waiting units named in the leader's paused line; the rest are counted

Operation = Callable[..., "OperationResult | None"]
"""A callback of the one lock: runs while this unit holds it; None (or RELEASE) releases it."""


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
        self._operations: dict[str, Operation] = {"restart": self._restart}
        self.controls = Controls(charm, lambda: self.manager)
        self.manager = RollingOpsManager(
            charm,
            # Every id is known from the start (a queued op names one); the callables are
            # looked up when the op runs, so concerns built after this one can `register`.
            callback_targets={name: functools.partial(self._run, name) for name in OPERATIONS},
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

    # --- the one lock, as other concerns use it ---------------------------------------------

    def register(self, operation: str, callback: Operation) -> None:
        """Run `callback(**kwargs)` for each queued `operation` once this unit holds the lock."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; add it to OPERATIONS")
        self._operations[operation] = callback

    def queue(self, operation: str, **kwargs: object) -> None:
        """Queue `operation` on the one lock; raise EngineNotReady when it cannot be queued."""
        self._require_peer_relation()
        try:
            self.manager.request_async_lock(operation, kwargs=kwargs, max_retry=MAX_RETRY)
        except RollingOpsError as error:
            raise restart.EngineNotReady(f"rollingops refused the request: {error}") from error

    def queued(self, operation: str) -> bool:
        """Whether this unit has `operation` queued (or running) on the one lock."""
        return self.manager.is_waiting_callback(operation)

    def grant(self) -> tuple[int | None, str | None]:
        """(fencing token, backend) of the grant the running callback holds; Nones outside one."""
        grant = self.manager.lock_grant
        if grant is None:
            return None, None
        return grant.token, str(grant.backend)

    def _run(self, operation: str, **kwargs: object) -> OperationResult | None:
        callback = self._operations.get(operation)
        if callback is None:  # only if the charm forgot to register it: drop the op, loudly
            logger.error("no callback registered for %r: the queued op is dropped", operation)
            return OperationResult.RELEASE
        return callback(**kwargs)

    # --- restarts ----------------------------------------------------------------------------

    def request(self, delay: int) -> str:
        """Queue a restart; it runs when this unit is granted the lock."""
        self.queue("restart", delay=delay)
        backend = self.manager.state.processing_backend
        return (
            f"restart queued with rollingops ({backend} backend); units restart one at a time, "
            "behind any remount or upgrade step already queued"
        )

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

        Only restarts: a remount or an upgrade step on the lock shows in its own status. Units
        on the etcd backend publish no queue, so their work is missed here; actions use
        `busy_for_action`.
        """
        relation = self.model.get_relation(PEER_RELATION)
        if relation is None:
            return False
        units = [None, *(unit.name for unit in relation.units)]
        return any(self.manager.is_waiting_callback("restart", unit) for unit in units)

    def quiet(self) -> bool:
        """The library's last reconcile saw nothing in flight (read from stored state)."""
        return self.manager.quiet

    def progress(self) -> str | None:
        """The leader's app status line while a roll is on ("restart 3/10: app/4"), or None."""
        return self.manager.progress("restart")

    def paused_status(self) -> ops.StatusBase | None:
        """The leader's app status while the lock is paused: why, what waits, how to go on.

        Blocked: only the operator's `resume` (on the leader) lets the lock grant again, after a
        `pause` or a halt after failures. A hook that read the peer relation already (the lock
        is not `quiet`) reads the pause there and remembers it; a quiet one (an idle
        update-status) reads no relation and answers from that memory: on the peer backend
        nothing waits then (a published queue would have made the lock busy). What waits is
        named on the peer backend (in grant order); units on etcd publish no queue there.
        """
        peer = self.manager.state.processing_backend is ProcessingBackend.PEER
        if self.manager.quiet:
            reason = self.controls.remembered_pause
            waits = "nothing waits" if peer else None
        else:
            reason = self.manager.paused_reason
            self.controls.remember_pause(reason)
            waits = None
            if reason is not None and peer:
                queue = self.manager.rolling_status().queue  # peer: this hook's reads, no etcd
                waits = _waits([(unit, self._queued_on(unit)) for unit in queue])
        if reason is None:
            return None
        waits = waits or "`rolling-status` shows what waits"
        return ops.BlockedStatus(f"rollingops lock paused ({_short(reason)}): {waits}; run resume")

    def _queued_on(self, unit: str) -> list[str]:
        """The operations `unit` has queued, as its peer databag shows them."""
        try:
            return [op for op in OPERATIONS if self.manager.is_waiting_callback(op, unit)]
        except ValueError:  # it left the relation in between
            return []

    def busy_for_action(self) -> str | None:
        """Actions only (may ask etcd): why work on the lock may be in flight, or None if none."""
        found = self.manager.busy_units()
        if found.unknown:
            return (
                f"cannot tell whether a rollingops restart is in flight: {found.unknown}; "
                "try again once etcd answers"
            )
        if found.units:
            units = ", ".join(found.units)
            return (
                f"a restart, remount or upgrade step on the 'rollingops' lock is in flight "
                f"({units}); wait for it to finish"
            )
        return None

    def unit_status(self) -> ops.StatusBase | None:
        """Blocked: bad config, etcd refused, bad peer data; maintenance: running; waiting: queued.

        The operations named are those of this unit's queue (`restart` when it shows none). A
        quiet unit reads no relation here (the library answers from stored state).
        """
        problem = self.controls.unit_status()
        if problem is not None:
            return problem
        if not self.manager.quiet and self.model.get_relation(PEER_RELATION) is None:
            return None
        state = self.manager.state
        if state.etcd_problem:
            problem = state.etcd_problem[:STATUS_LIMIT]
            return ops.BlockedStatus(f"etcd refused, restarts use the peer relation: {problem}")
        if state.malformed:
            return ops.BlockedStatus(
                f"ignoring malformed '{PEER_RELATION}' data: {state.malformed[0]}"
            )
        if state.status in (RollingOpsStatus.GRANTED, RollingOpsStatus.WAITING):
            queued = [name for name in OPERATIONS if self.queued(name)]
            what = " + ".join(queued) or "restart"
            where = f"(rollingops, {state.processing_backend})"
            if state.status is RollingOpsStatus.WAITING:
                paused = self.manager.paused_reason
                if paused is not None:
                    return ops.WaitingStatus(
                        f"{what} queued {where} on a paused lock ({_short(paused)}): "
                        "`resume` on the leader continues"
                    )
                return ops.WaitingStatus(f"{what} queued {where}")
            doing = f"running {what}" if len(queued) > 1 else VERBS[what]
            return ops.MaintenanceStatus(f"{doing} {where}")
        if state.status is RollingOpsStatus.NOT_READY:
            return ops.WaitingStatus("rollingops not ready: see `juju debug-log`")
        return None

    def _restart(self, delay: int = 0) -> OperationResult:
        token, backend = self.grant()
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


def _short(text: str) -> str:
    """`text` cut to REASON_LIMIT characters for a status line."""
    return text if len(text) <= REASON_LIMIT else text[: REASON_LIMIT - 3] + "..."


def _waits(waiting: list[tuple[str, list[str]]]) -> str:
    """What waits on the paused lock, in grant order: "upgrade step of app/2 waits"."""
    named = [(unit, " + ".join(NOUNS[op] for op in ops_) or "work") for unit, ops_ in waiting]
    if not named:
        return "nothing waits"
    if len(named) == 1:
        unit, what = named[0]
        return f"{what} of {unit} waits"
    shown = ", ".join(f"{unit} ({what})" for unit, what in named[:SHOWN_UNITS])
    more = len(named) - SHOWN_UNITS
    return f"{shown}{f' and {more} more' if more > 0 else ''} wait"
