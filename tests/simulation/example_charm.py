"""The README's example charm: a `restart` action whose restart runs one unit at a time.

`RollingOpsCharm` uses charmlibs.rollingops (peer backend: no etcd relation), `V0Charm`
charms.rolling_ops.v0.rollingops and `CoordinatorCharm` the Serial coordinator; `UnlockedCharm`
restarts without any lock (the check must catch it). `_restart` is the critical section
`check_charm` watches; `RESTARTS` counts the calls (nothing else is restarted).
"""

from __future__ import annotations

import pathlib

import ops
from charmlibs.rollingops import RollingOpsManager
from charms.coordinated_ops.v0.coordinator import Serial
from charms.rolling_ops.v0.rollingops import RollingOpsManager as V0Manager

CHARM_DIR = pathlib.Path(__file__).with_name("example_charm")
RESTARTS: list[str] = []


class RollingOpsCharm(ops.CharmBase):
    """charmlibs.rollingops: the action queues the restart; it runs later, under the lock."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.rolling = RollingOpsManager(
            self, callback_targets={"restart": self._restart}, peer_relation_name="restart"
        )
        framework.observe(self.on.restart_action, self._on_restart_action)

    def _on_restart_action(self, event: ops.ActionEvent) -> None:
        self.rolling.request_async_lock("restart", max_retry=None)

    def _restart(self) -> None:
        RESTARTS.append(self.unit.name)


class V0Charm(ops.CharmBase):
    """charms.rolling_ops.v0.rollingops on the `restart-v0` peer relation."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.restart_manager = V0Manager(self, relation="restart-v0", callback=self._restart)
        framework.observe(self.on.restart_action, self._on_restart_action)

    def _on_restart_action(self, event: ops.ActionEvent) -> None:
        self.on["restart-v0"].acquire_lock.emit()

    def _restart(self, event: ops.EventBase) -> None:
        RESTARTS.append(self.unit.name)


class CoordinatorCharm(ops.CharmBase):
    """charms.coordinated_ops.v0.coordinator: Serial, with the need kept in stored state."""

    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._stored.set_default(needs_restart=False)
        self.serial = Serial(self)
        framework.observe(self.on.restart_action, self._on_restart_action)
        for event in (
            self.on.coordinator_relation_changed,
            self.on.coordinator_relation_departed,
            self.on.leader_elected,
            self.serial.wake_up_event,
        ):
            framework.observe(event, self._maybe_restart)

    def _on_restart_action(self, event: ops.ActionEvent) -> None:
        self._stored.needs_restart = True
        self._maybe_restart(event)

    def _maybe_restart(self, event: ops.EventBase) -> None:
        if self.serial.granted("restart"):
            self._restart()
            self._stored.needs_restart = False
        elif self._stored.needs_restart:
            self.serial.acquire("restart")

    def _restart(self) -> None:
        RESTARTS.append(self.unit.name)


class UnlockedCharm(ops.CharmBase):
    """Restarts at once, in the action: every unit at the same time."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        framework.observe(self.on.restart_action, self._on_restart_action)

    def _on_restart_action(self, event: ops.ActionEvent) -> None:
        self._restart()

    def _restart(self) -> None:
        RESTARTS.append(self.unit.name)


class StaticCharm(UnlockedCharm):
    """UnlockedCharm whose restart is a staticmethod (`check_charm` must still see it)."""

    def _restart(self) -> None:
        self.restart_service(self.unit.name)

    @staticmethod
    def restart_service(unit: str) -> None:
        RESTARTS.append(unit)
