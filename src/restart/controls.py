"""Operator controls of the rollingops engine: config checked in one place, thin actions.

Config: `max-parallel` (default 1) is how many units may restart at once; `halt-after-failures`
(default 1, 0 = never) pauses the roll after that many failed restarts; `maintenance-window`
(empty = always; "02:00-04:00", daily UTC) is when grants may start. A value that cannot be
used blocks the unit with a message naming the fix, and changes nothing: the last good value
stays in force (kept in this unit's stored state; the default before any).

Actions (the library does the work, see charmlibs.rollingops `pause`, `resume`,
`rolling_status`): `rolling-status` on any unit, read-only; `pause` and `resume` on the leader.
The leader remembers why the lock is paused (`remembered_pause`) for the app status of hooks
that read no relation (docs/one-lock.md, "What the statuses say").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import ops
from charmlibs.rollingops import RollingOpsError, RollingOpsManager, parse_window

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The controls in force: the last good value of each option."""

    max_parallel: int = 1
    halt_after_failures: int | None = 1  # None: never halt
    maintenance_window: str | None = None  # None: always

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
        self._stored.set_default(max_parallel=1, halt=1, window="", paused="")
        self.problems: list[str] = []
        self.settings = self._read()
        observe = self.framework.observe
        observe(charm.on.rolling_status_action, self._on_rolling_status)
        observe(charm.on.pause_action, self._on_pause)
        observe(charm.on.resume_action, self._on_resume)

    def _read(self) -> Settings:
        """Check each option; keep each good value in stored state; note each problem."""
        config = self.charm.config
        checks = (
            ("max_parallel", self._max_parallel_problem(config.get("max-parallel", 1))),
            ("halt", self._halt_problem(config.get("halt-after-failures", 1))),
            ("window", self._window_problem(config.get("maintenance-window", ""))),
        )
        for _, problem in checks:
            if problem is not None:
                self.problems.append(problem)
                logger.warning("%s; the last good value stays in force", problem)
        return Settings(
            int(self._stored.max_parallel),
            int(self._stored.halt) or None,
            str(self._stored.window) or None,
        )

    def _max_parallel_problem(self, value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"max-parallel must be an integer, not {value!r}"
        if value < 1:
            return f"max-parallel={value}: set it to 1 or more"
        # Only k > 1 can exceed the unit count: the default costs no goal-state call per hook.
        units = _unit_count(self.charm) if value > 1 else None
        if units is not None and value > units:
            return f"max-parallel={value} is above the {units} units: lower it"
        if self._stored.max_parallel != value:
            self._stored.max_parallel = value
        return None

    def _halt_problem(self, value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"halt-after-failures={value!r}: set it to 0 (never) or more"
        if self._stored.halt != value:
            self._stored.halt = value
        return None

    def _window_problem(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"maintenance-window: {value!r} is not text"
        try:
            if value.strip():
                parse_window(value)
        except ValueError as error:
            return f"maintenance-window: {error}"
        if self._stored.window != value.strip():
            self._stored.window = value.strip()
        return None

    # --- actions ---------------------------------------------------------------------------

    def _on_rolling_status(self, event: ops.ActionEvent) -> None:
        status = self._manager().rolling_status()
        results = status.results()
        results["halt-after-failures"] = str(self.settings.halt)
        event.set_results(results)
        event.log(status.summary)

    def _on_pause(self, event: ops.ActionEvent) -> None:
        manager = self._manager()
        try:
            manager.pause()
        except RollingOpsError as error:
            event.fail(str(error))
            return
        self.remember_pause(manager.paused_reason)
        event.set_results({"message": "paused: no new grant; running operations finish"})

    def _on_resume(self, event: ops.ActionEvent) -> None:
        try:
            self._manager().resume()
        except RollingOpsError as error:
            event.fail(str(error))
            return
        self.remember_pause(None)
        event.set_results({"message": "resumed"})

    @property
    def remembered_pause(self) -> str | None:
        """Why the lock was paused when this unit last read it (stored state), or None.

        For the leader's status in a hook that reads no relation (an idle update-status): the
        lock changes pause only in the leader's own hooks (pause, resume, a halt in its
        reconcile, which reads the relation) or, after a leader change, before the new leader's
        leader-elected reconcile, which reads it again.
        """
        return str(self._stored.paused) or None

    def remember_pause(self, reason: str | None) -> None:
        """Keep `reason` (None: not paused) for `remembered_pause`."""
        if self._stored.paused != (reason or ""):
            self._stored.paused = reason or ""

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
