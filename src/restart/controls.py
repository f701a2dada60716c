"""Operator controls of the rollingops engine: config checked in one place, thin actions.

Config: `max-parallel` (default 1) is how many units may restart at once; `halt-after-failures`
(default 1, 0 = never) pauses the roll after that many failed restarts. A value that cannot be
used blocks the unit with a message naming the fix, and changes nothing: the last good value
stays in force (kept in this unit's stored state; the default before any).

Actions (the library does the work, see charmlibs.rollingops `pause`, `resume`,
`rolling_status`): `rolling-status` on any unit, read-only; `pause` and `resume` on the leader.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import ops
from charmlibs.rollingops import RollingOpsError, RollingOpsManager

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The controls in force: the last good value of each option."""

    max_parallel: int = 1
    halt_after_failures: int | None = 1  # None: never halt

    @property
    def halt(self) -> int:
        """halt-after-failures as configured (0 for never)."""
        return self.halt_after_failures or 0


class Controls(ops.Object):
    """Reads and checks the controls' config at every dispatch; runs the control actions."""

    _stored = ops.StoredState()

    def __init__(self, charm: ops.CharmBase, manager: Callable[[], RollingOpsManager]):
        super().__init__(charm, "rollingops-controls")
        self.charm = charm
        self._manager = manager
        self._stored.set_default(max_parallel=1, halt=1)
        self.problems: list[str] = []
        self.settings = self._read()
        observe = self.framework.observe
        observe(charm.on.rolling_status_action, self._on_rolling_status)
        observe(charm.on.pause_action, self._on_pause)
        observe(charm.on.resume_action, self._on_resume)

    def _read(self) -> Settings:
        config = self.charm.config
        max_parallel = config.get("max-parallel", 1)
        units = _unit_count(self.charm)
        problem = None
        if isinstance(max_parallel, bool) or not isinstance(max_parallel, int):
            problem = f"max-parallel must be an integer, not {max_parallel!r}"
        elif max_parallel < 1:
            problem = f"max-parallel={max_parallel}: set it to 1 or more"
        elif units is not None and max_parallel > units:
            problem = f"max-parallel={max_parallel} is above the {units} units: lower it"
        elif self._stored.max_parallel != max_parallel:
            self._stored.max_parallel = max_parallel
        if problem:
            self.problems.append(problem)
        halt = config.get("halt-after-failures", 1)
        if isinstance(halt, bool) or not isinstance(halt, int) or halt < 0:
            self.problems.append(f"halt-after-failures={halt!r}: set it to 0 (never) or more")
        elif self._stored.halt != halt:
            self._stored.halt = halt
        for problem in self.problems:
            logger.warning("%s; the last good value stays in force", problem)
        return Settings(int(self._stored.max_parallel), int(self._stored.halt) or None)

    # --- actions ---------------------------------------------------------------------------

    def _on_rolling_status(self, event: ops.ActionEvent) -> None:
        status = self._manager().rolling_status()
        results = status.results()
        results["halt-after-failures"] = str(self.settings.halt)
        event.set_results(results)
        event.log(status.summary)

    def _on_pause(self, event: ops.ActionEvent) -> None:
        try:
            self._manager().pause()
        except RollingOpsError as error:
            event.fail(str(error))
            return
        event.set_results({"message": "paused: no new grant; running operations finish"})

    def _on_resume(self, event: ops.ActionEvent) -> None:
        try:
            self._manager().resume()
        except RollingOpsError as error:
            event.fail(str(error))
            return
        event.set_results({"message": "resumed"})

    def unit_status(self) -> ops.StatusBase | None:
        """Blocked while the config cannot be used (the message says what to change)."""
        if self.problems:
            return ops.BlockedStatus(f"{self.problems[0]} (config unchanged in effect)")
        return None


def _unit_count(charm: ops.CharmBase) -> int | None:
    """The application's planned unit count (goal state), None when Juju cannot say."""
    try:
        return charm.app.planned_units()
    except (ops.ModelError, RuntimeError) as error:
        logger.debug("planned units unknown: %s", error)
        return None
