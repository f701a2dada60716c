"""Restart engine `v0`: the peer-relation rolling lock of charms.rolling_ops.v0.rollingops."""

from __future__ import annotations

import ops
from charms.rolling_ops.v0.rollingops import Lock, Locks, RollingOpsManager

import restart

RELATION = "restart"


class V0Engine(ops.Object):
    """Queues restarts on the v0 lock; the lock's callback runs the restart."""

    name = "v0"
    _stored = ops.StoredState()

    def __init__(self, charm: ops.CharmBase, journal_dirs: restart.JournalDirs):
        super().__init__(charm, "restart-engine-v0")
        self.charm = charm
        self._journal_dirs = journal_dirs
        self._stored.set_default(delay=0)
        self.manager = RollingOpsManager(charm, relation=RELATION, callback=self._restart)

    def request(self, delay: int) -> str:
        """Ask the leader for the lock; the restart runs when this unit is granted it."""
        if self.model.get_relation(RELATION) is None:
            raise restart.EngineNotReady(
                f"the peer relation '{RELATION}' is not ready yet; run the action again once "
                "the unit has started"
            )
        self._stored.delay = delay
        self.charm.on[RELATION].acquire_lock.emit()
        return "restart queued with the v0 rolling lock; units restart one at a time"

    def in_flight(self) -> bool:
        """Any unit waiting for, holding, releasing or queueing for the v0 lock."""
        if self.model.get_relation(RELATION) is None:
            return False
        return any(lock.in_flight() for lock in Locks(self.manager))

    def quiet(self) -> bool:
        """The lock library saw nothing in flight when it last read the relation."""
        return self.manager.quiet

    def unit_status(self) -> ops.StatusBase | None:
        """The library's own wording, so operators see the same strings as with Charmhub's v0.

        A quiet unit reads nothing: no lock of its own, no malformed data to report.
        """
        if self.manager.quiet or self.model.get_relation(RELATION) is None:
            return None
        problems = self.manager.malformed_data()
        if problems:
            return ops.BlockedStatus(f"ignoring malformed '{RELATION}' data: {problems[0]}")
        lock = Lock(self.manager)
        if lock.is_held():
            return ops.MaintenanceStatus(f"Executing {RELATION} operation")
        if lock.is_pending():
            return ops.WaitingStatus(f"Awaiting {RELATION} operation")
        return None

    def _restart(self, event: ops.EventBase) -> None:
        token = getattr(event, "grant_token", None)  # "" when an older leader granted
        restart.run_restart(
            self.charm.unit.name,
            engine=self.name,
            delay=self._stored.delay,
            dirs=self._journal_dirs(),
            token=int(token) if token and token.isdigit() else None,
        )
