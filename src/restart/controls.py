"""Operator controls of the rollingops engine: its config, read and checked in one place.

`max-parallel` (default 1) is how many units may restart at once. A value that cannot be used
(below 1, above the application's unit count, not an integer) blocks the unit with a message
naming the fix, and changes nothing: the last good value stays in force (kept in this unit's
stored state; 1 before any).
"""

from __future__ import annotations

import dataclasses
import logging

import ops

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The controls in force: the last good value of each option."""

    max_parallel: int = 1


class Controls(ops.Object):
    """Reads and checks the controls' config at every dispatch (no I/O beyond the model)."""

    _stored = ops.StoredState()

    def __init__(self, charm: ops.CharmBase):
        super().__init__(charm, "rollingops-controls")
        self.charm = charm
        self._stored.set_default(max_parallel=1)
        self.problem: str | None = None
        self.settings = self._read()

    def _read(self) -> Settings:
        config = self.charm.config
        max_parallel = config.get("max-parallel", 1)
        units = _unit_count(self.charm)
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int):
            self.problem = f"max-parallel must be an integer, not {max_parallel!r}"
        elif max_parallel < 1:
            self.problem = f"max-parallel={max_parallel}: set it to 1 or more"
        elif units is not None and max_parallel > units:
            self.problem = f"max-parallel={max_parallel} is above the {units} units: lower it"
        elif self._stored.max_parallel != max_parallel:
            self._stored.max_parallel = max_parallel
        if self.problem:
            logger.warning("%s; keeping max-parallel=%s", self.problem, self._stored.max_parallel)
        return Settings(max_parallel=int(self._stored.max_parallel))

    def unit_status(self) -> ops.StatusBase | None:
        """Blocked while the config cannot be used (the message says what to change)."""
        if self.problem:
            return ops.BlockedStatus(f"{self.problem} (config unchanged in effect)")
        return None


def _unit_count(charm: ops.CharmBase) -> int | None:
    """The application's planned unit count (goal state), None when Juju cannot say."""
    try:
        return charm.app.planned_units()
    except (ops.ModelError, RuntimeError) as error:
        logger.debug("planned units unknown: %s", error)
        return None
