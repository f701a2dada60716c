#!/usr/bin/env python3
"""The coordinated-ops demo charm: it composes its concerns, each of which observes its own events.

- `service.Service`: installs, configures and runs the demo service (workload.py);
- `restart.policy.Restarts`: the `restart` action through one of three coordination engines, and
  the one lock (`restarts.lock`, charmlibs.rollingops) that every disruptive operation queues on;
- `upgrade.DemoUpgrade`: `juju refresh` and the `upgrade` action, one unit at a time, each
  unit's step under the one lock;
- `nfs.NfsShare`: the `nfs-mount` action and the share mounted on every unit, where the operation
  journal (journal.py) is also written; a remount after an endpoint change runs under the lock.

The order they are built in is the order their observers run within a hook: the restart engines
first, then the upgrade, the service and the share.
"""

from __future__ import annotations

import ops

from nfs import NfsShare
from restart.policy import Restarts
from service import Service
from upgrade import DemoUpgrade


class CoordinatedOpsCharm(ops.CharmBase):
    """Runs the demo service; restarts and upgrades it one unit at a time; mounts the share."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)

        # The share is built last (its observers run last) but the others journal to it:
        # they get a callable, evaluated when they run.
        def journal_dirs():
            return self.nfs.journal_dirs()

        self.restarts = Restarts(
            self, journal_dirs=journal_dirs, upgrade_ongoing=lambda: self.upgrade.ongoing()
        )
        self.upgrade = DemoUpgrade(
            self,
            restart_busy=self.restarts.busy_outside_lock,
            journal_dirs=journal_dirs,
            lock=self.restarts.lock,
        )
        self.service = Service(self)
        self.nfs = NfsShare(self, lock=self.restarts.lock)
        framework.observe(self.on.collect_unit_status, self._on_collect_unit_status)
        framework.observe(self.on.collect_app_status, self._on_collect_app_status)

    def _on_collect_unit_status(self, event: ops.CollectStatusEvent):
        """Each concern's status, most important first: among equal priorities the first wins."""
        statuses = [
            self.service.config_status(),
            *self.restarts.unit_statuses(),
            self.upgrade.unit_status(),
            self.nfs.unit_status(),
            *self.service.unit_statuses(),
        ]
        for status in statuses:
            if status is not None:
                event.add_status(status)

    def _on_collect_app_status(self, event: ops.CollectStatusEvent):
        for status in (self.upgrade.app_status(), self.restarts.app_status(), ops.ActiveStatus()):
            if status is not None:
                event.add_status(status)


if __name__ == "__main__":  # pragma: nocover
    ops.main(CoordinatedOpsCharm)
