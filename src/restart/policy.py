"""`Restarts`: the restart concern as the charm sees it.

It builds the engines (one per coordination library), runs the `restart` action, reports the
engines' statuses, and owns the one rule the charm's disruptive operations share: while a restart
(in any engine) or an upgrade is in flight, nothing else may start. The upgrade asks it through
`busy()`; it asks the upgrade through the `upgrade_ongoing` callable it is given.
"""

from __future__ import annotations

from collections.abc import Callable

import ops

import restart
from restart.coordinator import CoordinatorEngine
from restart.rollingops import RollingOpsEngine
from restart.v0 import V0Engine


class Restarts(ops.Object):
    """The restart engines by name, the `restart` action, and the "is something busy?" rule."""

    def __init__(
        self,
        charm: ops.CharmBase,
        *,
        journal_dirs: restart.JournalDirs,
        upgrade_ongoing: Callable[[], str | None],
    ):
        super().__init__(charm, "restarts")
        engines = [
            RollingOpsEngine(charm, journal_dirs),
            V0Engine(charm, journal_dirs),
            CoordinatorEngine(charm, journal_dirs),
        ]
        self.engines: dict[str, restart.Engine] = {engine.name: engine for engine in engines}
        self._upgrade_ongoing = upgrade_ongoing
        self.framework.observe(charm.on.restart_action, self._on_restart_action)

    def busy_engines(self, ignore: str | None = None) -> list[str]:
        """The engines (all but `ignore`, which is not asked) with a restart in flight."""
        return [
            name for name, engine in self.engines.items() if name != ignore and engine.in_flight()
        ]

    def busy(self, ignore: str | None = None) -> str | None:
        """Actions only: why nothing else may start now (a restart in an engine but `ignore`).

        An engine with `busy_for_action()` answers with it (rollingops: it may ask etcd, where
        units on the etcd backend keep their work); the others with their cheap `in_flight()`,
        which the status uses. None when nothing is in flight.
        """
        for name, engine in self.engines.items():
            if name == ignore:
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

    def _refusal(self, engine: str) -> str | None:
        """Why `engine` may not restart now: another engine's restart or an upgrade is busy."""
        busy = self.busy(ignore=engine)
        if busy is not None:
            return busy
        upgrade = self._upgrade_ongoing()
        if upgrade is not None:
            return f"{upgrade}; wait for it to finish or roll it back"
        return None

    def unit_statuses(self) -> list[ops.StatusBase]:
        """Each engine's status for this unit, in engine order (the idle ones add none)."""
        statuses = [engine.unit_status() for engine in self.engines.values()]
        return [status for status in statuses if status is not None]

    def app_status(self) -> ops.StatusBase | None:
        """The leader's app status while a rolling restart is in flight."""
        busy = self.busy_engines()
        if busy:
            progress = getattr(self.engines[busy[0]], "progress", None)  # rollingops: k/N
            line = progress() if progress is not None else None
            return ops.MaintenanceStatus(line or f"rolling restart in progress ({busy[0]})")
        return None

    def _on_restart_action(self, event: ops.ActionEvent) -> None:
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
        refusal = self._refusal(engine.name)
        if refusal is not None:
            event.fail(refusal)
            return
        try:
            message = (
                _restart_sync(engine, params.delay)
                if params.sync
                else engine.request(params.delay)
            )
        except restart.EngineNotReady as error:
            event.fail(str(error))
            return
        event.set_results({"engine": engine.name, "delay": params.delay, "message": message})


def _restart_sync(engine: restart.Engine, delay: int) -> str:
    """`restart sync=true`: run the restart inside the action, if the engine has a sync mode."""
    restart_now = getattr(engine, "restart_now", None)
    if restart_now is None:
        raise restart.EngineNotReady(
            f"sync: engine {engine.name!r} has no sync mode; use rollingops"
        )
    return restart_now(delay)
