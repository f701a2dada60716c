#!/usr/bin/env python3
"""The coordinated-ops demo charm: wiring only.

Each event is handed to the module that owns its concern: workload.py runs the demo service,
restart.py and one restart_<engine>.py per coordination library run the `restart` action.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import ops

import nfs
import restart
import workload
from restart_coordinator import CoordinatorEngine
from restart_rollingops import RollingOpsEngine
from restart_v0 import V0Engine
from upgrade import DemoUpgrade

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class CharmConfig:
    """The charm's config options (config.yaml), validated; Juju has already checked the types.

    A dataclass, not a pydantic model: collect-status loads it in every hook, and building a
    pydantic validator there costs about a fifth of importing ops (tests/benchmarks/dispatch.py).
    """

    port: int
    startup_seconds: float

    def __post_init__(self):
        if not 1024 <= self.port <= 65535:
            raise ValueError(f"port must be from 1024 to 65535, not {self.port}")
        if not 0 <= self.startup_seconds <= 30:
            raise ValueError(f"startup-seconds must be from 0 to 30, not {self.startup_seconds}")


class CoordinatedOpsCharm(ops.CharmBase):
    """Runs the demo service; restarts it one unit at a time through the chosen engine."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.engines: dict[str, restart.Engine] = {
            engine.name: engine
            for engine in [RollingOpsEngine(self), V0Engine(self), CoordinatorEngine(self)]
        }
        # Upgrades (src/upgrade.py): `juju refresh` and the `upgrade` action.
        self.upgrade = DemoUpgrade(self)
        framework.observe(self.on.install, self._on_install)
        framework.observe(self.on.start, self._on_start)
        framework.observe(self.on.config_changed, self._on_config_changed)
        framework.observe(self.on.upgrade_charm, self._on_config_changed)
        framework.observe(self.on.restart_action, self._on_restart_action)
        # NFS share (src/nfs.py): the leader requests it, every unit mounts it.
        self.nfs = nfs.NfsShare(self)
        framework.observe(self.on.nfs_mount_action, self._on_nfs_mount_action)
        for nfs_event in (
            self.nfs.requirer.on.server_connected,
            self.nfs.requirer.on.mount_share,
            self.nfs.requirer.on.umount_share,
            self.on[nfs.PEER].relation_changed,
            self.on.config_changed,
            self.on.update_status,
        ):
            framework.observe(nfs_event, self._on_nfs_event)
        framework.observe(self.on.collect_unit_status, self._on_collect_unit_status)
        framework.observe(self.on.collect_app_status, self._on_collect_app_status)

    def _on_install(self, _: ops.InstallEvent):
        if not workload.is_installed():
            workload.install(workload.DEFAULT_VERSION)

    def _on_start(self, _: ops.StartEvent):
        self.configure_and_run()

    def _on_config_changed(self, _: ops.EventBase):
        self.configure_and_run()

    def configure_and_run(self) -> None:
        """Idempotent: install if needed, write the settings, make sure the service runs.

        A settings change is applied by the next coordinated `restart`, never here: restarting in
        config-changed would restart every unit at once.
        """
        config = self._config()
        if config is None:
            return
        if not workload.is_installed():
            workload.install(workload.DEFAULT_VERSION)
        workload.ensure_config(config.port, config.startup_seconds)
        try:
            workload.start()
        except workload.WorkloadError as error:
            logger.error("the demo service did not start: %s", error)
        version = workload.get_version()
        if version:
            self.unit.set_workload_version(version)

    def _config(self) -> CharmConfig | None:
        try:
            return self.load_config(CharmConfig)
        except ValueError as error:
            logger.error("invalid config: %s", error)
            return None

    def journal_dirs(self) -> list[pathlib.Path]:
        """Where the operation journal goes besides the unit's own file."""
        return self.nfs.journal_dirs()

    def _on_nfs_mount_action(self, event: ops.ActionEvent):
        self.nfs.run_action(event)

    def _on_nfs_event(self, event: ops.EventBase):
        self.nfs.handle_event(event)

    def _on_restart_action(self, event: ops.ActionEvent):
        import pydantic  # here, not at the top: only actions validate with pydantic

        from models import RestartParams, explain

        try:
            params = RestartParams(**event.params)
        except pydantic.ValidationError as error:
            event.fail(explain(error))
            return
        engine = self.engines.get(params.engine)
        if engine is None:
            event.fail(
                f"engine: unknown engine {params.engine!r}; use one of {sorted(self.engines)}"
            )
            return
        busy = self.restart_in_flight(skip=engine)
        if busy:
            event.fail(busy)
            return
        if self.upgrade.in_flight():
            event.fail(f"{self.upgrade.describe()}; wait for it to finish or roll it back")
            return
        try:
            if params.sync:
                message = _restart_sync(engine, params.delay)
            else:
                message = engine.request(params.delay)
        except restart.EngineNotReady as error:
            event.fail(str(error))
            return
        event.set_results({"engine": engine.name, "delay": params.delay, "message": message})

    def restart_in_flight(self, skip: restart.Engine | None = None) -> str | None:
        """Actions only: why a restart of an engine other than `skip` is in flight, or None.

        An engine's `busy_for_action()` may ask etcd; the status uses the cheap `in_flight()`.
        """
        for name, engine in self.engines.items():
            if engine is skip:
                continue
            busy_for_action = getattr(engine, "busy_for_action", None)
            if busy_for_action is not None:
                why = busy_for_action()
            elif engine.in_flight():
                why = f"a restart with engine {name!r} is in flight; wait for it to finish"
            else:
                why = None
            if why:
                return why
        return None

    def _on_collect_unit_status(self, event: ops.CollectStatusEvent):
        if self._config() is None:
            event.add_status(ops.BlockedStatus("invalid config: see `juju debug-log`"))
        for engine in self.engines.values():
            status = engine.unit_status()
            if status is not None:
                event.add_status(status)
        upgrade_status = self.upgrade.unit_status()
        if upgrade_status is not None:
            event.add_status(upgrade_status)
        nfs_status = self.nfs.unit_status()
        if nfs_status is not None:
            event.add_status(nfs_status)
        if not workload.is_installed():
            event.add_status(ops.MaintenanceStatus("installing the demo service"))
        elif workload.health() is None:
            event.add_status(ops.BlockedStatus("demo service not healthy: run the restart action"))
        event.add_status(ops.ActiveStatus(f"serving {workload.get_version()}"))

    def _on_collect_app_status(self, event: ops.CollectStatusEvent):
        upgrade_status = self.upgrade.app_status()
        if upgrade_status is not None:
            event.add_status(upgrade_status)
        busy = [name for name, engine in self.engines.items() if engine.in_flight()]
        if busy:
            event.add_status(ops.MaintenanceStatus(f"rolling restart in progress ({busy[0]})"))
        event.add_status(ops.ActiveStatus())


def _restart_sync(engine: restart.Engine, delay: int) -> str:
    """`restart sync=true`: run the restart inside the action, if the engine has a sync mode."""
    restart_now = getattr(engine, "restart_now", None)
    if restart_now is None:
        raise restart.EngineNotReady(
            f"sync: engine {engine.name!r} has no sync mode; use rollingops"
        )
    return restart_now(delay)


if __name__ == "__main__":  # pragma: nocover
    ops.main(CoordinatedOpsCharm)
