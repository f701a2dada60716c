"""`RollingOpsManager`: the one object a charm creates. Observers, the public API, backend choice.

Every dispatch that can change the lock's state ends in `_reconcile`:

1. follow the application's backend mode (peer or etcd) chosen by the leader (`_follow_mode`);
2. if this unit holds an unacknowledged peer grant, run its queue head (never in the dispatch
   that issued the grant);
3. on the leader: choose the mode, release finished or stale grants, grant the next unit;
4. remember in stored state whether anything was in flight (`quiet`).

A quiet unit reads no relation data in update-status or for its status: work of other units
reaches it as a peer relation-changed (which reconciles), and its own work (a queue, a grant, a
leader's grant to itself whose wake-up was lost) keeps it from being quiet, so update-status
still reconciles then.

The constructor only registers observers: no I/O, no subprocess, no key generation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
from collections.abc import Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any

import ops

from . import _controls, _dispatch  # pyright: ignore[reportPrivateUsage] (our own modules)
from ._controls import RollingStatus
from ._goal_state import removed_units
from ._models import (
    BusyUnits,
    Grant,
    LockGrant,
    OperationResult,
    ProcessingBackend,
    RollingOpsControlError,
    RollingOpsError,
    RollingOpsInvalidLockRequestError,
    RollingOpsNoRelationError,
    RollingOpsState,
    RollingOpsStatus,
    RollingOpsSyncLockError,
    SyncLockBackend,
    now_iso,
    validate_request,
)
from ._peer import (
    AppView,
    UnitView,
    execute_grant,
    is_granted,
    not_granted,
    schedule,
)

if TYPE_CHECKING:
    from ._etcd_backend import EtcdBackend
    from ._etcd_lock import AppState

logger = logging.getLogger(__name__)

DEFAULT_BASE_DIR = "/var/lib/rollingops"
LOCK_GRANTED_EVENT = "rollingops_lock_granted"
ETCD_FAILED_EVENT = "rollingops_etcd_failed"
BUSY_TIMEOUT = 5.0  # seconds `busy_units` waits for etcd
TOKEN_ENV = "ROLLINGOPS_LOCK_TOKEN"  # noqa: S105 - a variable name, not a secret


class RollingOpsLockGrantedEvent(ops.EventBase):
    """Dispatched by a wake-up (peer) or by the etcd worker when this unit holds the lock."""


class RollingOpsEtcdFailedEvent(ops.EventBase):
    """Dispatched by the etcd worker when it gave up: the unit falls back to the peer backend."""


NOT_PAUSED = "the rolling operation is not paused: nothing to resume"
ETCD_STATUS_TIMEOUT = 2.0  # seconds: progress()'s one etcd read, on the leader, while busy


def _by_number(unit_names: Iterable[str]) -> list[str]:
    """Unit names in unit-number order (app/2 before app/10)."""
    return sorted(unit_names, key=lambda name: (len(name), name))


def _define_event(charm: ops.CharmBase, name: str, event_type: type[ops.EventBase]) -> None:
    events_type = type(charm.on)
    existing = getattr(events_type, name, None)
    if existing is None:
        events_type.define_event(name, event_type)
    elif getattr(existing, "event_type", None) is not event_type:
        # A reloaded module or another copy of this library defined it first: reuse it.
        logger.debug("event %s already defined on %s", name, events_type.__name__)


class RollingOpsManager(ops.Object):
    """Run charm callbacks one unit at a time: etcd lock when available, peer relation otherwise.

    Args:
        charm: the charm.
        callback_targets: callback id -> callable(**kwargs) returning an OperationResult or None.
        peer_relation_name: the peer relation holding queues and grants (mandatory).
        etcd_relation_name: the `requires` endpoint of interface `etcd_client`, if any.
        cluster_id: the etcd lock scope (apps with the same id share one lock); may be None until
            known. Pass the current value at every construction.
        sync_lock_targets: backend id -> SyncLockBackend used by `acquire_sync_lock` without etcd.
        base_dir: local state directory (default /var/lib/rollingops), created on first need.
        max_parallel: how many units may hold the lock at once (default 1). Pass the current
            value (say, from config) at every construction: a change applies from the next grant.
            On etcd it is the number of lock slots this unit's worker may take (see the package
            docstring). ValueError when below 1.
        halt_after_failures: pause the lock once that many operations failed in one roll (None:
            never). Counted by the leader from the peer grants, and by the workers in etcd on
            the etcd backend (see `_controls`); `resume` continues.
        maintenance_window: "HH:MM-HH:MM", daily in UTC: grants only inside it, as the leader's
            clock says (None or "": always). ValueError when it does not parse.
    """

    _stored = ops.StoredState()

    def __init__(
        self,
        charm: ops.CharmBase,
        *,
        callback_targets: dict[str, Callable[..., Any]],
        peer_relation_name: str,
        etcd_relation_name: str | None = None,
        cluster_id: str | None = None,
        sync_lock_targets: dict[str, SyncLockBackend] | None = None,
        max_parallel: int = 1,
        halt_after_failures: int | None = None,
        maintenance_window: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ):
        # Checked at run time too: a charm's config may hand over anything.
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"max_parallel must be an integer >= 1, not {max_parallel!r}")
        if halt_after_failures is not None and (
            isinstance(halt_after_failures, bool)
            or not isinstance(halt_after_failures, int)  # pyright: ignore[reportUnnecessaryIsInstance]
            or halt_after_failures < 1
        ):
            raise ValueError(
                f"halt_after_failures must be None or >= 1, not {halt_after_failures!r}"
            )
        if maintenance_window:
            _controls.parse_window(maintenance_window)  # ValueError saying what is wrong
        if cluster_id is not None and etcd_relation_name is None:
            raise ValueError("cluster_id needs etcd_relation_name (the etcd_client endpoint)")
        super().__init__(charm, "rolling-ops-manager")
        self.charm = charm
        self.callback_targets = dict(callback_targets)
        self.peer_relation_name = peer_relation_name
        self.etcd_relation_name = etcd_relation_name
        self.cluster_id = cluster_id
        self.sync_lock_targets = dict(sync_lock_targets or {})
        self.base_dir = pathlib.Path(os.fspath(base_dir or DEFAULT_BASE_DIR))
        self.max_parallel = max_parallel
        self.halt_after_failures = halt_after_failures
        self.maintenance_window = maintenance_window or None
        # Per-dispatch state (a dispatch is one process; nothing here outlives it).
        self._me: UnitView | None = None
        self._lock_grant: LockGrant | None = None
        self._executing_op: int | None = None
        self._granted_here: set[int] = set()
        self._etcd_backend: EtcdBackend | None = None
        self._resumed = False  # this hook resumed: a worker's recorded halt is stale

        _define_event(charm, LOCK_GRANTED_EVENT, RollingOpsLockGrantedEvent)
        _define_event(charm, ETCD_FAILED_EVENT, RollingOpsEtcdFailedEvent)
        on = charm.on
        observe = self.framework.observe
        observe(on[peer_relation_name].relation_changed, self._on_peer_changed)
        observe(on[peer_relation_name].relation_departed, self._on_peer_departed)
        observe(on.leader_elected, self._on_leader_elected)
        observe(on.update_status, self._on_update_status)
        observe(on.stop, self._on_stop)
        observe(getattr(on, LOCK_GRANTED_EVENT), self._on_lock_granted)
        observe(getattr(on, ETCD_FAILED_EVENT), self._on_etcd_failed)
        observe(self.framework.on.pre_commit, self._on_pre_commit)
        observe(self.framework.on.commit, self._on_commit)
        if etcd_relation_name is not None:
            etcd_events = on[etcd_relation_name]
            for event in (
                etcd_events.relation_created,
                etcd_events.relation_joined,
                etcd_events.relation_changed,
            ):
                observe(event, self._on_etcd_relation_changed)
            observe(etcd_events.relation_broken, self._on_etcd_relation_broken)
            observe(on.secret_changed, self._on_secret_changed)

    # --- public API ------------------------------------------------------------------------

    def request_async_lock(
        self,
        callback_id: str,
        kwargs: dict[str, Any] | None = None,
        max_retry: int | None = None,
    ) -> None:
        """Queue `callback_targets[callback_id](**kwargs)` to run when this unit gets the lock.

        Raises:
            RollingOpsInvalidLockRequestError: unknown callback id, kwargs not a JSON-serialisable
                dict, or max_retry not an integer >= 0 (None means unlimited retries).
            RollingOpsNoRelationError: the peer relation does not exist yet.
        """
        if callback_id not in self.callback_targets:
            raise RollingOpsInvalidLockRequestError(f"Unknown callback_id: {callback_id}")
        relation = self._peer_relation()
        if relation is None:
            raise RollingOpsNoRelationError(
                f"the peer relation {self.peer_relation_name!r} does not exist yet"
            )
        try:
            clean_kwargs = validate_request(kwargs, max_retry)
        except ValueError as error:
            raise RollingOpsInvalidLockRequestError(
                f"Failed to create the lock request: {error}"
            ) from None
        me = self._unit_view(relation)
        if not me.readable:
            raise RollingOpsInvalidLockRequestError(
                "Failed to create the lock request: this unit's databag has an unknown "
                "rollingops version"
            )
        op = me.append(
            callback_id,
            clean_kwargs,
            max_retry,
            executing_op=self._executing_op,
            requested_at=now_iso(),
        )
        if op is None:
            logger.info("request %s%s already queued last: not added", callback_id, clean_kwargs)
            return
        if max_retry is None:
            logger.warning(
                "op %s#%s (%s) queued with max_retry=None: it will be retried without limit",
                self.model.unit.name,
                op.id,
                callback_id,
            )
        self._write_me(relation)
        if self._executing_op is None:
            self._reconcile()

    @contextlib.contextmanager
    def acquire_sync_lock(
        self, backend_id: str, timeout: int | None
    ) -> Generator[Any, None, None]:
        """Hold an exclusive lock for the body of a `with` block, inside the current hook.

        With etcd available the lock is the etcd lock (yields its LockGrant); otherwise the
        charm-supplied `sync_lock_targets[backend_id]` (yields None).
        """
        etcd = self._etcd()
        if etcd is not None and etcd.sync_available():
            handled = False
            with etcd.sync_lock(timeout) as grant:
                if grant is not None:
                    handled = True
                    yield grant
            if handled:
                return
            relation = self._peer_relation()
            if relation is not None:
                self._write_me(relation)  # the etcd failure moved this unit to peer
        backend = self.sync_lock_targets.get(backend_id)
        if backend is None:
            raise RollingOpsSyncLockError(f"no sync lock backend registered as {backend_id!r}")
        try:
            backend.acquire(timeout)
        except TimeoutError:
            raise
        except Exception as error:
            raise RollingOpsSyncLockError(
                f"sync lock {backend_id!r}: acquire failed: {error}"
            ) from error
        try:
            yield None
        finally:
            try:
                backend.release()
            except Exception as error:
                raise RollingOpsSyncLockError(
                    f"sync lock {backend_id!r}: release failed: {error}"
                ) from error

    @property
    def quiet(self) -> bool:
        """True when the last reconcile saw nothing in flight; reads no relation data.

        Nothing in flight: this unit has no queued op and no etcd clean-up pending, the
        application bag holds no grant and no order, no data was malformed, no provider answer
        was refused and, on the leader, no unit published a queue or unreadable data. It is
        what this unit remembered (stored state) at the end of its last reconcile; another
        unit's request reaches it as a relation-changed, which reconciles and remembers again.
        A `cluster_id` other than the one of that reconcile is not quiet either (the leader has
        a request to publish), nor is a unit with a pause mark (one stat; see `_controls`).
        False means "maybe".
        """
        return (
            bool(getattr(self._stored, "quiet", False))
            and self._me is None
            and getattr(self._stored, "quiet_cluster_id", None) == self.cluster_id
            and not self._pause_marked()
        )

    def _pause_marked(self) -> bool:
        """The local pause mark of the etcd backend, without building the backend."""
        if self.etcd_relation_name is None:
            return False
        from . import _files

        return _files.pause_marked(self.base_dir)

    @property
    def state(self) -> RollingOpsState:
        """This unit's lock status, backend, ignored peer data and etcd problem (no writes).

        A quiet unit (see `quiet`) answers from memory: idle, no malformed data.
        """
        if self.quiet and self._lock_grant is None:  # no etcd problem either (see `_remember`)
            backend = ProcessingBackend(getattr(self._stored, "quiet_backend", "peer"))
            return RollingOpsState(RollingOpsStatus.IDLE, backend)
        state = dataclasses.replace(self._lock_state(), malformed=self._malformed())
        etcd = self._etcd()
        problem = etcd.problem() if etcd is not None else None
        return dataclasses.replace(state, etcd_problem=problem) if problem else state

    def _malformed(self) -> tuple[str, ...]:
        """Relation values ignored as malformed: app and own bag, every unit's on the leader."""
        relation = self._peer_relation()
        if relation is None:
            return ()
        errors = AppView.read(relation.data[self.model.app]).errors
        _controls.Roll.read(relation.data[self.model.app], errors)  # appends its own errors
        errors += UnitView.read(self.model.unit.name, relation.data[self.model.unit]).errors
        if self.model.unit.is_leader():
            for unit in relation.units:
                errors += UnitView.read(unit.name, relation.data[unit]).errors
        return tuple(errors)

    def _lock_state(self) -> RollingOpsState:
        relation = self._peer_relation()
        if relation is None:
            return RollingOpsState(RollingOpsStatus.NOT_READY, ProcessingBackend.PEER)
        app = AppView.read(relation.data[self.model.app])
        me = self._me or self._read_me(relation)
        if not app.readable or not me.readable:
            return RollingOpsState(RollingOpsStatus.NOT_READY, me.backend)
        if self._lock_grant is not None:
            return RollingOpsState(RollingOpsStatus.GRANTED, self._lock_grant.backend)
        if me.backend is ProcessingBackend.ETCD:
            etcd = self._etcd()
            if etcd is not None and etcd.worker_holding():
                return RollingOpsState(RollingOpsStatus.GRANTED, me.backend)
        elif is_granted(app, me):
            return RollingOpsState(RollingOpsStatus.GRANTED, me.backend)
        status = RollingOpsStatus.WAITING if me.queue else RollingOpsStatus.IDLE
        return RollingOpsState(status, me.backend)

    @property
    def lock_grant(self) -> LockGrant | None:
        """The grant the running callback holds (None outside a callback)."""
        return self._lock_grant

    def peer_lock_free(self) -> bool:
        """Whether no unit may hold or be about to run under the lock, as this leader sees it.

        True only on the leader, in peer mode, with every unit on the peer backend and no
        unacknowledged grant. A charm's peer `SyncLockBackend` may then run its critical section
        inside the current leader hook: the peer lock is only ever granted by the leader's hooks,
        which Juju runs one at a time.
        """
        relation = self._peer_relation()
        if relation is None or not self.model.unit.is_leader():
            return False
        app = AppView.read(relation.data[self.model.app])
        units = [self._me or self._read_me(relation)]
        units += [UnitView.read(unit.name, relation.data[unit]) for unit in relation.units]
        if not app.readable or app.mode is not ProcessingBackend.PEER:
            return False
        if any(not unit.readable or unit.backend is not ProcessingBackend.PEER for unit in units):
            return False
        return not any(is_granted(app, unit) for unit in units)  # a departed holder is stale

    def busy_units(self, timeout: float = BUSY_TIMEOUT) -> BusyUnits:
        """Which units of this application have work queued or running, on either backend.

        For actions (it may read etcd, within `timeout` seconds), never for collect-status.
        This unit: its own queue. A unit on the peer backend: its published queue (a granted
        op stays queued until done). A unit on the etcd backend publishes no queue, so etcd
        is asked, in one range read: a unit holding `P lock` or a ticket of ours (same model
        and application; other applications may share the cluster_id) is busy. etcd is read
        only when another unit says it is on etcd; grpc is imported only then.

        Never raises. When etcd cannot be read (error, timeout, no usable config here) or a
        unit's data is in a version we cannot read, the failure is logged and `unknown` says
        why (`busy` is then True): refuse the action and show `unknown`.

        Not seen: work of another unit on etcd that has no ticket yet. That is the time from
        the end of the hook that queued it to its worker's first ticket (process start, grpc
        import, a lease grant, one transaction: 0.6 s measured on a busy 2-core machine), the
        moment between a release and the worker's next ticket when more work is queued, and a
        worker killed without a trace (SIGKILL, reboot) until the unit's next hook restarts it.
        """
        relation = self._peer_relation()
        if relation is None:
            return BusyUnits()
        me = self._me or self._read_me(relation)
        busy: set[str] = {me.name} if me.queue else set()
        on_etcd: list[str] = []
        unreadable: list[str] = []
        for unit in relation.units:
            view = UnitView.read(unit.name, relation.data[unit])
            if view.queue:  # on peer; or a unit of an older version that mirrors its queue
                busy.add(unit.name)
            if not view.readable:
                unreadable.append(unit.name)
            elif view.backend is ProcessingBackend.ETCD:
                on_etcd.append(unit.name)
        problems: list[str] = []
        if unreadable:
            names = ", ".join(_by_number(unreadable))
            problems.append(f"the rollingops data of {names} is unreadable")
        etcd = self._etcd()
        if on_etcd and etcd is not None:
            try:
                busy |= etcd.busy_units(timeout)
            except RollingOpsError as error:
                users = ", ".join(_by_number(on_etcd))
                problems.append(f"cannot read the etcd lock ({users} use it): {error}")
        if problems:
            logger.warning("busy units unknown: %s", "; ".join(problems))
        return BusyUnits(tuple(_by_number(busy)), "; ".join(problems) or None)

    # --- operator controls (see _controls) -------------------------------------------------

    def pause(self, reason: str = "paused by the operator") -> None:
        """Leader: grant nothing more until `resume`; the operations running finish, queues stay.

        The pause is kept in the peer application databag (and, on the etcd backend, in etcd,
        where every acquire transaction checks it), so it survives a change of leader.
        Pausing a paused lock keeps its first reason. Raises RollingOpsControlError on a
        non-leader, without the peer relation, or when etcd cannot record it (nothing changed).
        """
        bag = self._control_bag()
        if _controls.paused(bag) is not None:
            return
        etcd = self._etcd()
        if AppView.read(bag).mode is ProcessingBackend.ETCD and etcd is not None:
            try:
                etcd.set_paused(True)
            except RollingOpsError as error:
                raise RollingOpsControlError(f"could not pause the etcd lock: {error}") from error
            bag[_controls.KEY_ETCD_PAUSED] = "true"
        _controls.set_paused(bag, reason)
        logger.info("rolling operations paused: %s", reason)

    def resume(self) -> None:
        """Leader: grant again after `pause` (or a halt after failures); counts strikes anew.

        Raises RollingOpsControlError when not paused, on a non-leader, or when etcd cannot be
        told (nothing changed then).
        """
        bag = self._control_bag()
        paused = _controls.paused(bag)
        etcd = self._etcd()
        window_open = _controls.window_open(self.maintenance_window)
        if AppView.read(bag).mode is ProcessingBackend.ETCD and etcd is not None:
            try:  # a worker's halt lives in etcd only: resume clears it and its strikes
                halted = etcd.resume(keep_paused=not window_open, force=paused is not None)
            except RollingOpsError as error:  # the workers would stay paused: change nothing
                raise RollingOpsControlError(f"could not resume the etcd lock: {error}") from error
            if paused is None and not halted:
                raise RollingOpsControlError(NOT_PAUSED)
            if window_open:
                bag.pop(_controls.KEY_ETCD_PAUSED, None)
            else:  # the window keeps the pause key, now the leader's
                bag[_controls.KEY_ETCD_PAUSED] = "true"
        elif paused is None:
            raise RollingOpsControlError(NOT_PAUSED)
        else:
            try:
                if window_open:  # else the window keeps it
                    self._clear_etcd_pause(bag)
            except RollingOpsError as error:
                logger.warning(
                    "etcd pause key not deleted yet (retried before etcd is used): %s", error
                )
        _controls.set_paused(bag, None)
        self._resumed = True
        roll = _controls.Roll.read(bag, [])
        if roll.strikes:
            roll.strikes = 0
            roll.write(bag)
        logger.info("rolling operations resumed")
        self._reconcile()

    def rolling_status(self, timeout: float = BUSY_TIMEOUT) -> RollingStatus:
        """Where the rolling operation stands (any unit; read-only: it writes nothing).

        On the peer backend: the grants, the leader's order and the roll counts from the peer
        relation. On the etcd backend: the slots, tickets, roll record and pause key of this
        application in etcd (one range read within `timeout` seconds, like `busy_units`); a
        halt the workers recorded there shows in `paused`. Never raises: what cannot be read is
        named in `unknown` (done and failed are then None).
        """
        relation = self._peer_relation()
        if relation is None:
            return RollingStatus(
                "peer", max_parallel=self.max_parallel, unknown="no peer relation"
            )
        bag = relation.data[self.model.app]
        app = AppView.read(bag)
        paused = _controls.paused(bag)
        views = [self._me or self._read_me(relation)]
        views += [UnitView.read(unit.name, relation.data[unit]) for unit in relation.units]
        if app.mode is ProcessingBackend.ETCD:
            status = self._etcd_status(views, paused, timeout)
            return dataclasses.replace(
                status,
                window=self.maintenance_window,
                window_open=bag.get(_controls.KEY_WINDOW) != "closed",
            )
        roll = _controls.Roll.read(bag, [])
        holders = [grant.unit for grant in app.grants]
        by_name = {view.name: view for view in views}
        queue = [name for name in app.order or [] if name in by_name and name not in holders]
        queue += sorted(
            (v.name for v in views if v.queue and v.name not in holders and v.name not in queue),
            key=lambda name: (len(name), name),
        )
        return RollingStatus(
            "peer",
            holders=tuple(holders),
            queue=tuple(queue),
            done=roll.done,
            failed=tuple(roll.failed),
            remaining=sum(len(view.queue) for view in views),
            paused=paused,
            max_parallel=self.max_parallel,
            window=self.maintenance_window,
            window_open=bag.get(_controls.KEY_WINDOW) != "closed",
        )

    def _etcd_status(
        self, views: list[UnitView], paused: str | None, timeout: float
    ) -> RollingStatus:
        state = self._etcd_state(timeout)
        local = [view.name for view in views if view.queue]  # units still on peer, or this one
        if isinstance(state, str):
            return RollingStatus(
                "etcd",
                remaining=len(local),
                paused=paused,
                max_parallel=self.max_parallel,
                unknown=state,
            )
        return RollingStatus(
            "etcd",
            holders=tuple(state.holders),
            queue=tuple(state.queue),
            done=state.roll.done,
            failed=tuple(state.roll.failed),
            remaining=len(set(state.holders) | set(state.queue) | set(local)),
            paused=_etcd_paused(paused, state),
            max_parallel=self.max_parallel,
        )

    def _etcd_state(self, timeout: float) -> AppState | str:
        """This application's lock in etcd (one read), or why it cannot be read."""
        etcd = self._etcd()
        if etcd is None:
            return "cannot read the etcd lock: etcd is not configured in this charm"
        try:
            return etcd.app_state(timeout)
        except RollingOpsError as error:
            return f"cannot read the etcd lock: {error}"

    def progress(self, operation: str | None = None) -> str | None:
        """A short progress line while a roll is on ("restart 3/10: app/4"), else None.

        For the leader's application status. The position counts the operations done and
        running; the total adds the ones queued. Peer backend: the peer relation only. Etcd
        backend: one etcd read (within ETCD_STATUS_TIMEOUT s), and only while this unit's last
        reconcile saw work in flight (a quiet unit reads nothing); there the queue counts the
        units waiting (one ticket each, whatever their number of queued operations).
        """
        relation = self._peer_relation()
        if relation is None:
            return None
        bag = relation.data[self.model.app]
        app = AppView.read(bag)
        if app.mode is ProcessingBackend.ETCD:
            return None if self.quiet else self._etcd_progress(bag, operation)
        roll = _controls.Roll.read(bag, [])
        if app.mode is not ProcessingBackend.PEER or not roll.active:
            return None
        views = [self._me or self._read_me(relation)]
        views += [UnitView.read(unit.name, relation.data[unit]) for unit in relation.units]
        holding = [grant.unit for grant in app.grants]
        queued = sum(len(view.queue) for view in views) - len(holding)
        heads = {view.name: view.queue[0].callback_id for view in views if view.queue}
        name = operation or next((heads[u] for u in holding if u in heads), "operation")
        return _progress_line(name, roll.done, holding, queued, _controls.paused(bag))

    def _etcd_progress(self, bag: ops.RelationDataContent, operation: str | None) -> str | None:
        state = self._etcd_state(ETCD_STATUS_TIMEOUT)
        if isinstance(state, str):
            logger.warning("no progress line: %s", state)
            return None
        if not (state.roll.active or state.holders or state.queue):
            return None
        paused = _etcd_paused(_controls.paused(bag), state)
        return _progress_line(
            operation or "operation", state.roll.done, state.holders, len(state.queue), paused
        )

    @property
    def paused_reason(self) -> str | None:
        """Why the lock is paused (`pause()`, or a halt after failures), or None when it is not.

        One read of the peer application databag (none if this hook read it already), on any
        unit and either backend: cheap enough for a status. A `quiet` unit need not ask.

        On the etcd backend a halt lives in etcd only; a unit whose worker waits learns it from
        that worker (`worker-status.json`: the pause key as its last attempt read it), so a
        waiting unit and a waiting leader name the halt with no etcd read. It shows from the
        unit's next hook after the halt (update-status at the latest) and goes as the worker,
        woken by `resume` deleting the key, tries again. A unit without work on etcd does not
        see an etcd halt (`rolling_status()` reads etcd).
        """
        relation = self._peer_relation()
        paused = None if relation is None else _controls.paused(relation.data[self.model.app])
        etcd = self._etcd()
        halt = etcd.worker_paused() if etcd is not None and not self._resumed else None
        if halt == _controls.PAUSED_BY_LEADER:  # the leader's own: the databag says why
            halt = None
        reasons = [reason for reason in (paused, halt) if reason]
        return "; ".join(dict.fromkeys(reasons)) or None

    def _window_closed(self, bag: ops.RelationDataContent) -> bool:
        """Leader: is the maintenance window closed now (this clock)? Recorded for the status."""
        closed = not _controls.window_open(self.maintenance_window)
        if closed and bag.get(_controls.KEY_WINDOW) != "closed":
            bag[_controls.KEY_WINDOW] = "closed"
        elif not closed and _controls.KEY_WINDOW in bag:
            del bag[_controls.KEY_WINDOW]
        return closed

    def _sync_etcd_stop(self, bag: ops.RelationDataContent, app: AppView, stop: bool) -> None:
        """Leader: etcd's pause key present exactly while paused or outside the window.

        The leader's key only (value "paused"): a halt a worker put stays until `resume`.

        Put only while the application runs on etcd (it never returns to etcd while stopped);
        deleted whenever it may be there (the flag, or the local pause mark: see `_controls`)
        and nothing stops the lock. Errors are logged and retried at the next leader hook. No
        etcd call when the flag already agrees and no mark is left.
        """
        etcd = self._etcd()
        if etcd is None:
            return
        flagged = _controls.KEY_ETCD_PAUSED in bag
        if stop == flagged and (stop or not etcd.pause_marked()):
            return
        if not etcd.usable() or (stop and app.mode is not ProcessingBackend.ETCD):
            return
        try:
            etcd.set_paused(stop)
        except RollingOpsError as error:
            logger.warning("cannot update the etcd pause key yet: %s", error)
            return
        if stop:
            bag[_controls.KEY_ETCD_PAUSED] = "true"
        elif flagged:
            del bag[_controls.KEY_ETCD_PAUSED]

    def _clear_etcd_pause(self, bag: ops.RelationDataContent) -> None:
        """Delete our pause key in etcd if we may have left one. Raises RollingOpsError."""
        etcd = self._etcd()
        if etcd is not None and (bag.get(_controls.KEY_ETCD_PAUSED) or etcd.pause_marked()):
            etcd.resume(keep_paused=False, force=True)
            etcd.forget_pause_mark()  # the key is gone, whoever put it
            bag.pop(_controls.KEY_ETCD_PAUSED, None)

    def _control_bag(self) -> ops.RelationDataContent:
        if not self.model.unit.is_leader():
            raise RollingOpsControlError(
                "only the leader can pause or resume: run the action on the leader unit"
            )
        relation = self._peer_relation()
        if relation is None:
            raise RollingOpsControlError(
                f"the peer relation {self.peer_relation_name!r} does not exist yet"
            )
        return relation.data[self.model.app]

    def is_waiting(self, unit_name: str | None = None) -> bool:
        """Whether `unit_name` (default: this unit) has queued operations.

        Another unit's queue is what it published: a unit on the etcd backend keeps its queue
        in its stored state (no peer write per request), so it reads as not waiting here. Use
        `busy_units()` (in actions) for an answer that covers units on etcd.
        """
        view = self._view_of(unit_name)
        return view is not None and bool(view.queue)

    def is_waiting_callback(self, callback_id: str, unit_name: str | None = None) -> bool:
        """Whether `unit_name` (default: this unit) has a queued op for `callback_id`.

        For another unit: what it published (see `is_waiting`).
        """
        view = self._view_of(unit_name)
        return view is not None and any(op.callback_id == callback_id for op in view.queue)

    # --- observers -------------------------------------------------------------------------

    def _on_reconcile(self, _: ops.EventBase) -> None:
        self._reconcile()

    def _on_leader_elected(self, _: ops.LeaderElectedEvent) -> None:
        etcd = self._etcd()
        if etcd is not None and etcd.usable():
            etcd.mark_pause()  # the predecessor may have left a pause key (see _controls)
        self._reconcile()

    def _on_peer_changed(self, _: ops.RelationChangedEvent) -> None:
        self._reconcile()

    def _on_peer_departed(self, event: ops.RelationDepartedEvent) -> None:
        departing = event.departing_unit.name if event.departing_unit else None
        if departing == self.model.unit.name:
            self._stored.departing = True  # never start a critical section from now on
            etcd = self._etcd()
            if etcd is not None:
                etcd.stop_worker()
            return
        self._reconcile(departing=departing)

    def _on_update_status(self, _: ops.UpdateStatusEvent) -> None:
        if self.quiet:
            return  # nothing queued here (so no worker to check) and nothing to poll for
        etcd = self._etcd()
        if etcd is not None:
            etcd.check_worker_health()
        self._reconcile()

    def _on_stop(self, _: ops.StopEvent) -> None:
        etcd = self._etcd()
        if etcd is not None:
            etcd.stop_worker()

    def _on_lock_granted(self, _: RollingOpsLockGrantedEvent) -> None:
        token = os.environ.get(TOKEN_ENV)
        etcd = self._etcd()
        if token is not None and etcd is not None:
            etcd.on_lock_granted(token)
        self._reconcile()

    def _on_etcd_failed(self, _: RollingOpsEtcdFailedEvent) -> None:
        etcd = self._etcd()
        if etcd is not None:
            etcd.fall_back("the etcd worker reported failure")
        self._reconcile()

    def _on_etcd_relation_changed(self, _: ops.RelationEvent) -> None:
        etcd = self._etcd()
        if etcd is not None:
            etcd.on_relation_changed()
        self._reconcile()

    def _on_etcd_relation_broken(self, _: ops.RelationBrokenEvent) -> None:
        etcd = self._etcd()
        if etcd is not None:
            etcd.on_relation_broken()
        self._reconcile()

    def _on_secret_changed(self, event: ops.SecretChangedEvent) -> None:
        etcd = self._etcd()
        if etcd is not None:
            etcd.on_secret_changed(event)
        self._reconcile()  # a refused answer moves this unit to peer in this very hook

    def _on_pre_commit(self, _: ops.PreCommitEvent) -> None:
        # Only a dispatch that read this unit's view (or a new cluster_id) can have changed what
        # the leader publishes to etcd or what the worker must do: a quiet one reads nothing
        # (and does not even import the etcd backend).
        if self._me is None and self.quiet:
            return
        etcd = self._etcd()
        if etcd is None:
            return
        if self._peer_relation() is not None and not etcd.end_of_dispatch():
            self._stored.quiet = False  # the request was not published: the next hook retries

    def _on_commit(self, _: ops.CommitEvent) -> None:
        etcd = self._etcd_backend
        if etcd is not None:
            etcd.write_pending_result()

    # --- reconcile -------------------------------------------------------------------------

    def _reconcile(self, departing: str | None = None) -> None:
        relation = self._peer_relation()
        if relation is None:
            return
        app = AppView.read(relation.data[self.model.app])
        me = self._unit_view(relation)
        if not app.readable or not me.readable:
            if getattr(self._stored, "quiet", False):
                self._stored.quiet = False  # not ready is not quiet: the status must say so
            return
        self._follow_mode(app, me)
        grant = app.grant_of(me.name)
        if grant is not None and is_granted(app, me):
            if grant.token in self._granted_here:
                pass  # the leader never runs its own grant in the dispatch that issued it
            elif me.backend is ProcessingBackend.PEER and self._unit_leaving(relation, departing):
                logger.info("a unit is leaving the application: grant %s waits", grant.token)
            elif me.backend is ProcessingBackend.PEER:
                self._executing_op = me.queue[0].id if me.queue else None
                try:
                    done = execute_grant(me, grant, self.callback_targets, self._run_callback)
                finally:
                    self._executing_op = None
                logger.info("grant %s done: %s", grant.token, done.result)
            else:
                not_granted(me, grant)
        self._write_me(relation)
        units = {me.name: me}
        if self.model.unit.is_leader():
            units = self._schedule(relation, app, me, departing)
        elif self._pause_marked() and (etcd := self._etcd()) is not None:
            etcd.forget_pause_mark()  # the leader's own mark covers what we may have left
        self._remember(app, units)

    def _remember(self, app: AppView, units: dict[str, UnitView]) -> None:
        """Store whether nothing is in flight in `app` and `units` (see `quiet`)."""
        quiet = (
            not app.grants
            and not app.order
            and not app.errors
            and all(
                unit.readable and not unit.queue and not unit.etcd_cleanup and not unit.errors
                for unit in units.values()
            )
        )
        etcd = self._etcd()
        if quiet and etcd is not None and etcd.problem() is not None:
            quiet = False  # a refused provider answer: the status shows it in every hook
        me = units[self.model.unit.name]
        if getattr(self._stored, "quiet", None) != quiet:
            self._stored.quiet = quiet
        if getattr(self._stored, "quiet_backend", None) != me.backend.value:
            self._stored.quiet_backend = me.backend.value
        if getattr(self._stored, "quiet_cluster_id", None) != self.cluster_id:
            self._stored.quiet_cluster_id = self.cluster_id

    def _schedule(
        self, relation: ops.Relation, app: AppView, me: UnitView, departing: str | None
    ) -> dict[str, UnitView]:
        units = {
            unit.name: UnitView.read(unit.name, relation.data[unit])
            for unit in relation.units
            if unit.name != departing and unit.name != me.name
        }
        peer_work = any(
            unit.queue and unit.backend is ProcessingBackend.PEER for unit in [me, *units.values()]
        )
        if any(grant.unit != me.name for grant in app.grants) or peer_work:
            # Peer work is in flight: on Juju 4 a removed unit stays listed, and may hold a grant
            # or say `etcd` for good ("Juju 3.6 and 4"). An idle leader reads nothing more.
            for name in removed_units(units):
                del units[name]
        units[me.name] = me
        bag = relation.data[self.model.app]
        paused = _controls.paused(bag)
        closed = self._window_closed(bag)
        stop = paused is not None or closed
        etcd = self._etcd()
        if etcd is not None:
            self._sync_etcd_stop(bag, app, stop)
            hold = stop or _controls.KEY_ETCD_PAUSED in bag or etcd.pause_marked()
            etcd.choose_mode(app, units, hold=hold)
        # A unit whose data we cannot read (another wire version, garbage) may be on etcd and
        # hold its lock: it blocks peer grants like a unit that says etcd.
        may_grant = (
            not stop
            and app.mode is ProcessingBackend.PEER
            and all(
                unit.readable and unit.backend is ProcessingBackend.PEER for unit in units.values()
            )
        )
        roll = _controls.Roll.read(bag, [])
        outcome = schedule(
            app,
            units,
            may_grant=may_grant,
            max_parallel=self.max_parallel,
            halt=self._counter(bag, roll, units),
        )
        if outcome.granted and not roll.active:
            roll = _controls.Roll(active=True)  # a roll begins with its first grant
        queued = any(u.queue for u in units.values() if u.backend is ProcessingBackend.PEER)
        if not app.grants and not queued and _controls.paused(bag) is None:
            roll.active = False  # over: its counts stay for rolling_status
        if roll.active or _controls.KEY_ROLL in bag:
            roll.write(bag)
        app.write(bag)
        for granted in outcome.granted:
            if granted.unit == me.name:
                self._granted_here.add(granted.token)
                _dispatch.spawn_wakeup(
                    me.name, LOCK_GRANTED_EVENT, str(self.framework.charm_dir), self.base_dir
                )
        return units

    def _counter(
        self, bag: ops.RelationDataContent, roll: _controls.Roll, units: dict[str, UnitView]
    ) -> Callable[[list[Grant]], bool]:
        """Leader: `schedule`'s halt check: count the ended grants, pause after too many fail."""

        def halted(released: list[Grant]) -> bool:
            for grant in released:
                holder = units.get(grant.unit)
                done = holder.done if holder is not None else None
                if done is not None and done.token >= grant.token:
                    roll.record(grant.unit, done.result)
            halt = _controls.halt_reason(roll, self.halt_after_failures)
            if halt is None or _controls.paused(bag) is not None:
                return False
            logger.warning("pausing the rolling operation: %s", halt)
            _controls.set_paused(bag, halt)
            return True

        return halted

    def _follow_mode(self, app: AppView, me: UnitView) -> None:
        etcd = self._etcd()
        if etcd is not None:
            etcd.follow_mode(app, me)
        elif me.backend is not ProcessingBackend.PEER:
            # etcd is no longer configured in this charm: this unit cannot hold an etcd lock.
            me.backend = ProcessingBackend.PEER
            me.etcd_cleanup = True

    def _run_callback(
        self, grant: LockGrant, callback: Callable[..., Any], kwargs: dict[str, Any]
    ) -> OperationResult:
        self._lock_grant = grant
        try:
            value = callback(**kwargs)
        except Exception:
            logger.exception(
                "callback %s (op %s) raised: will retry", grant.callback_id, grant.op_id
            )
            return OperationResult.RETRY_RELEASE
        finally:
            self._lock_grant = None
        if isinstance(value, str) and value in {r.value for r in OperationResult}:
            return OperationResult(value)
        return OperationResult.RELEASE

    # --- helpers ---------------------------------------------------------------------------

    def _unit_leaving(self, relation: ops.Relation, departing: str | None = None) -> bool:
        """Whether this unit, or another one, is being removed: no critical section starts then.

        The leader releases the grant of a unit that departs (it may never come back: its machine
        can be gone), but a unit removed gracefully still runs hooks after the leader has seen it
        depart, for example a queued wake-up. So a holder does not start its operation while any
        unit of the application is leaving (Juju's planned unit count is below the units this
        unit sees) or after it saw its own departure; it starts once the departures are done.
        """
        if getattr(self._stored, "departing", False):  # stored state is read only when needed
            return True
        try:
            planned = self.model.app.planned_units()
        except (ops.ModelError, RuntimeError) as error:  # goal-state unavailable: do not block
            logger.debug("planned units unknown: %s", error)
            return False
        # In relation-departed, ops still lists the departing unit: it no longer counts.
        staying = [unit.name for unit in relation.units if unit.name != departing]
        if planned < 1 + len(staying):
            # On Juju 4 a removed unit stays listed for good: only one still in goal-state
            # (dying) is leaving (see "Juju 3.6 and 4").
            gone = removed_units(staying)
            return planned < 1 + len(staying) - len(gone)
        return False

    def _peer_relation(self) -> ops.Relation | None:
        return self.model.get_relation(self.peer_relation_name)

    def _unit_view(self, relation: ops.Relation) -> UnitView:
        if self._me is None:
            self._me = self._read_me(relation)
        return self._me

    def _read_me(self, relation: ops.Relation) -> UnitView:
        """This unit's view: its peer databag, with the local queue while it runs on etcd.

        A bag saying `etcd` without a local copy was written by a version that mirrored the
        queue in the bag (before a refresh): the bag's queue is then the one to use.
        """
        me = UnitView.read(self.model.unit.name, relation.data[self.model.unit])
        if me.readable and me.backend is ProcessingBackend.ETCD:
            local = getattr(self._stored, "etcd_local", None)
            if local is not None:
                me.load_local(local)
        return me

    def _write_me(self, relation: ops.Relation) -> None:
        """Publish this unit's view; on the etcd backend its queue goes to stored state only.

        The local copy is never cleared: once the bag says `peer` it is ignored, and the next
        switch to etcd overwrites it. So a hook whose stored state was saved but whose relation
        write was lost (Juju saves the two separately) still finds every op somewhere.
        """
        me = self._me
        if me is None or not me.readable:
            return
        if getattr(self._stored, "quiet", False) and (me.queue or me.etcd_cleanup):
            self._stored.quiet = False  # work outside a reconcile (a sync-lock fallback)
        me.write(relation.data[self.model.unit])
        if me.backend is ProcessingBackend.ETCD:
            local = me.to_local()
            if getattr(self._stored, "etcd_local", None) != local:
                self._stored.etcd_local = local
        etcd = self._etcd()
        if etcd is not None:
            etcd.note_queue(me)

    def _view_of(self, unit_name: str | None) -> UnitView | None:
        relation = self._peer_relation()
        if relation is None:
            return None
        if unit_name is None or unit_name == self.model.unit.name:
            return self._me or self._read_me(relation)
        for unit in relation.units:
            if unit.name == unit_name:
                return UnitView.read(unit_name, relation.data[unit])
        raise ValueError(f"unit {unit_name!r} is not on the {self.peer_relation_name!r} relation")

    def _etcd(self) -> EtcdBackend | None:
        """The etcd backend, built on first use (imports nothing etcd-specific until then)."""
        if self.etcd_relation_name is None:
            return None
        if self._etcd_backend is None:
            from ._etcd_backend import EtcdBackend

            self._etcd_backend = EtcdBackend(_EtcdHost(self))
        return self._etcd_backend


class _EtcdHost:
    """The manager as the etcd backend sees it (`_etcd_backend.Host`): a few names, no more."""

    def __init__(self, manager: RollingOpsManager):
        self._manager = manager
        self.model = manager.model
        self.base_dir = manager.base_dir
        self.charm_dir = pathlib.Path(manager.framework.charm_dir)
        self.peer_relation_name = manager.peer_relation_name
        self.etcd_relation_name = manager.etcd_relation_name
        self.cluster_id = manager.cluster_id
        self.callback_targets = manager.callback_targets
        self.max_parallel = manager.max_parallel
        self.halt_after_failures = manager.halt_after_failures

    def unit_view(self, relation: ops.Relation) -> UnitView:
        return self._manager._unit_view(relation)  # pyright: ignore[reportPrivateUsage]

    def write_me(self, relation: ops.Relation) -> None:
        self._manager._write_me(relation)  # pyright: ignore[reportPrivateUsage]

    def run_callback(
        self, grant: LockGrant, callback: Callable[..., Any], kwargs: dict[str, Any]
    ) -> OperationResult:
        return self._manager._run_callback(grant, callback, kwargs)  # pyright: ignore[reportPrivateUsage]

    @contextlib.contextmanager
    def executing(self, op_id: int | None) -> Generator[None, None, None]:
        self._manager._executing_op = op_id  # pyright: ignore[reportPrivateUsage]
        try:
            yield
        finally:
            self._manager._executing_op = None  # pyright: ignore[reportPrivateUsage]


def _progress_line(
    name: str, done: int, holding: list[str], queued: int, paused: str | None
) -> str:
    """The line "restart 3/10: app/4" (position: done and running; total: plus queued)."""
    where = ", ".join(holding) or "waiting"
    position = done + len(holding)
    line = f"{name} {position}/{position + max(queued, 0)}: {where}"
    return f"{line} (paused: {paused})" if paused else line


def _etcd_paused(paused: str | None, state: AppState) -> str | None:
    """Why an etcd application is paused: the peer bag's reason and a worker's halt in etcd."""
    halt = state.paused if state.paused != _controls.PAUSED_BY_LEADER else None
    reasons = [reason for reason in (paused, halt) if reason]
    return "; ".join(dict.fromkeys(reasons)) or None
