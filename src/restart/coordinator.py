"""Restart engine `coordinator`: the leadership FIFO coordinator (Serial) of coordinated_ops.

Each unit requests the `restart` lock on the peer relation `coordinator`; the leader grants it to
one unit at a time in request order; a unit restarts in the first dispatch that sees its grant,
and the grant is released at the end of that dispatch. The pending restart (and its delay) is
kept in StoredState, so the need survives the hooks between the request and the grant.
"""

from __future__ import annotations

import ops
from charms.coordinated_ops.v0.coordinator import BaseCoordinator, Serial

import restart

RELATION = "coordinator"
LOCK = "restart"


class CoordinatorEngine(ops.Object):
    """Queues restarts on a Serial coordinator; runs the restart once the lock is granted."""

    name = "coordinator"
    coordinator_class: type[BaseCoordinator] = Serial  # a subclass may plug in another policy
    _stored = ops.StoredState()

    def __init__(self, charm: ops.CharmBase, journal_dirs: restart.JournalDirs):
        super().__init__(charm, "restart-engine-coordinator")
        self.charm = charm
        self._journal_dirs = journal_dirs
        self._stored.set_default(pending_delay=None)
        # Registered before the coordinator's own pre_commit observer (which releases visible
        # grants): whatever the dispatch, a visible grant is used, never released unused.
        self.framework.observe(self.framework.on.pre_commit, self._reconcile)
        self.serial = self.coordinator_class(
            charm, relation_key="coordinator", peer_relation_name=RELATION
        )
        for event in (
            charm.on[RELATION].relation_changed,  # grants arrive here
            charm.on.leader_elected,
            charm.on.update_status,
            self.serial.wake_up_event,  # the leader's own grant arrives here
        ):
            self.framework.observe(event, self._reconcile)

    def request(self, delay: int) -> str:
        """Record the pending restart and request the lock; the restart runs when granted."""
        if self._stored.pending_delay is not None:
            self._stored.pending_delay = delay
            return "a restart is already queued with the coordinator; its delay is now updated"
        self._stored.pending_delay = delay
        self._reconcile(None)  # requests the lock (or restarts, if already granted)
        return "restart queued with the coordinator (Serial, first come first served)"

    def in_flight(self) -> bool:
        """Any unit of the application requesting or holding the restart lock."""
        if self._stored.pending_delay is not None:
            return True
        self.serial.initialize()
        me = self.model.unit.name
        releasing = self.serial.granted(LOCK)  # this unit's grant ends with this dispatch
        for table in (self.serial.requests or {}, self.serial.grants or {}):
            for unit, locks in table.items():
                if LOCK in locks and not (unit == me and releasing):
                    return True
        return False

    def quiet(self) -> bool:
        """No restart pending here and the coordinator saw no request or grant when it loaded."""
        return self._stored.pending_delay is None and self.serial.quiet

    def unit_status(self) -> ops.StatusBase | None:
        """Waiting while this unit's restart is queued; a note when peer data was ignored."""
        if self._stored.pending_delay is not None:
            return ops.WaitingStatus("Awaiting coordinator restart")
        if self.serial.quiet:
            return None  # nothing loaded: no malformed data seen either
        self.serial.initialize()
        if self.serial.bad_data:
            return ops.ActiveStatus("ignored malformed coordinator data (see debug-log)")
        return None

    def _reconcile(self, _: ops.EventBase | None) -> None:
        """Restart if granted and a restart is pending; re-request if a grant was lost."""
        delay = self._stored.pending_delay
        if delay is None:
            return
        if self.serial.granted(LOCK):
            self._stored.pending_delay = None
            restart.run_restart(
                self.charm.unit.name, engine=self.name, delay=delay, dirs=self._journal_dirs()
            )
        else:
            self.serial.acquire(LOCK)  # guarded by the durable pending flag: no hook loop
            # (a no-op while the request is outstanding; after a lost grant it requests again)
