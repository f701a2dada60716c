"""`Restarts`: the restart concern as the charm sees it.

It builds the engines (one per coordination library), runs the `restart` action, reports the
engines' statuses, and owns the rules the charm's disruptive operations share.

One lock for every disruptive operation. The rollingops engine's lock (`self.lock`) is the
charm's lock: a restart with engine rollingops, the NFS remount after an endpoint change and each
unit's upgrade step all queue on it, so they never run on two units at once and wait for each
other instead of failing. What that means for each engine of the `restart` action:

- `rollingops` (etcd or peer backend, the same lock either way): a restart queues behind
  whatever the lock already serves: other restarts, a remount, an upgrade step (an upgrade
  rollout in flight does not refuse it). It is refused only while a v0 or coordinator restart
  is in flight: those hold other locks.
- `v0` and `coordinator` keep their own locks and their semantics. Exclusion with the one lock
  is kept at the action, as before: such a restart is refused while the other of the two, the
  one lock (any operation: a restart, a remount, an upgrade step) or an upgrade rollout is in
  flight; and the `upgrade` action and `pre-upgrade-check` are refused while a v0 or coordinator
  restart is in flight (`busy_outside_lock`). Not covered: a remount is started by the NFS
  provider, not an operator, so nothing refuses it; one that arrives during a v0 or coordinator
  roll may overlap a restart of another unit: choose rollingops when remounts must wait too.
  (docs/one-lock.md)
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
        self.lock = RollingOpsEngine(charm, journal_dirs)
        """The one lock (charmlibs.rollingops): other concerns `register` and `queue` on it."""
        engines = [
            self.lock,
            V0Engine(charm, journal_dirs),
            CoordinatorEngine(charm, journal_dirs),
        ]
        self.engines: dict[str, restart.Engine] = {engine.name: engine for engine in engines}
        self._upgrade_ongoing = upgrade_ongoing
        self.framework.observe(charm.on.restart_action, self._on_restart_action)

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

    def busy_outside_lock(self) -> str | None:
        """Actions only: why an operation on the one lock may not start, else None.

        Only a v0 or coordinator restart in flight stops it: those hold other locks.
        """
        return self.busy(ignore=self.lock.name)

    def _refusal(self, engine: str) -> str | None:
        """Why `engine` may not restart now (see the module docstring), or None."""
        busy = self.busy(ignore=engine)
        if busy is not None:
            return busy
        if engine == self.lock.name:
            return None  # an upgrade step queues on this lock too: the restart waits its turn
        upgrade = self._upgrade_ongoing()
        if upgrade is not None:
            return f"{upgrade}; wait for it to finish or roll it back"
        return None

    def unit_statuses(self) -> list[ops.StatusBase]:
        """Each engine's status for this unit, in engine order (the idle ones add none)."""
        statuses = [engine.unit_status() for engine in self.engines.values()]
        return [status for status in statuses if status is not None]

    def app_status(self) -> ops.StatusBase | None:
        """The leader's app status: the one lock paused (what waits, if anything), or progress.

        Quiet engines are not asked: an idle leader reads no relation for its status (the one
        lock's pause it remembers). A paused lock comes first: a remount or an upgrade step may
        wait on it with no restart in flight.
        """
        paused = self.lock.paused_status()
        if paused is not None:
            return paused
        busy = [
            name
            for name, engine in self.engines.items()
            if not engine.quiet() and engine.in_flight()
        ]
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
