"""The demo service in the charm: install it, apply the config, keep it running; its status.

The service program itself is demo_service.py; workload.py installs and runs it. This concern
observes the lifecycle events. A settings change is applied by the next coordinated `restart`,
never here: restarting in config-changed would restart every unit at once.
"""

from __future__ import annotations

import dataclasses
import logging

import ops

import workload

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


class Service(ops.Object):
    """Installs, configures and starts the demo service; reports its config and health."""

    def __init__(self, charm: ops.CharmBase):
        super().__init__(charm, "service")
        self.charm = charm
        self.framework.observe(charm.on.install, self._on_install)
        for event in (charm.on.start, charm.on.config_changed, charm.on.upgrade_charm):
            self.framework.observe(event, self._on_configure)

    def _on_install(self, _: ops.InstallEvent):
        if not workload.is_installed():
            workload.install(workload.DEFAULT_VERSION)

    def _on_configure(self, _: ops.EventBase):
        """Idempotent: install if needed, write the settings, make sure the service runs."""
        config = self.config()
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
            self.charm.unit.set_workload_version(version)

    def config(self) -> CharmConfig | None:
        """The validated config, or None (logged) when an option is out of range."""
        try:
            return self.charm.load_config(CharmConfig)
        except ValueError as error:
            logger.error("invalid config: %s", error)
            return None

    def config_status(self) -> ops.StatusBase | None:
        """Blocked while the config is invalid (checked first: it outranks every other cause)."""
        if self.config() is None:
            return ops.BlockedStatus("invalid config: see `juju debug-log`")
        return None

    def unit_statuses(self) -> list[ops.StatusBase]:
        """Installing, or unhealthy; then Active naming the version served."""
        statuses: list[ops.StatusBase] = []
        if not workload.is_installed():
            statuses.append(ops.MaintenanceStatus("installing the demo service"))
        elif workload.health() is None:
            statuses.append(ops.BlockedStatus("demo service not healthy: run the restart action"))
        statuses.append(ops.ActiveStatus(f"serving {workload.get_version()}"))
        return statuses
