"""The `upgrade` engine of the simulator (see engines.py): workload upgrades one unit at a time.

The operation is the upgrade of every unit, coordinated by charms.data_platform_libs.v0.upgrade
on the peer relation `upgrade`. Each schedule takes one of two operator paths (the simulator's RNG
decides, so a seed replays):

- `action`: `juju run coordinated-ops/leader upgrade version=1.1.0`;
- `refresh`: `juju run coordinated-ops/leader pre-upgrade-check`, then `juju refresh` (every unit
  runs upgrade-charm then config-changed, in random order, some units first running what they
  already had queued: the simulator's `delayed_upgrade`).

A unit "holds the grant" (I2, I3) when its own `state` is `upgrading` and it is the top (last
entry) of the app's `upgrade-stack`: the library's grant rule.

Faults of this engine (on top of soak.py's generic ones):
- `fail_check`: one unit's post-upgrade check fails at 1.1.0 (its service does not answer
  there, so it bites on the `action` path); the rollout halts. An operator stands by: once a
  unit reports `failed`, it runs `upgrade version=1.0.0` on the leader (the rollback), and the
  schedule must end with every unit idle. Once the rollback command has run, every member is
  owed one more upgrade than it was served so far (see `Operator._account_rollback`).
- `remove_leader`: the leader is removed (graceful or abrupt) at a random time mid-rollout.
The operator retries an action that failed because leadership moved (rule: leadership may move
mid-hook), as a person would.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from jujusim.invariants import Recorder
from jujusim.simulator import ActionRejected, Simulator
from jujusim.truth import Bags

from .fakes import DemoFakes

APP = "coordinated-ops"
PEER = "upgrade"
TARGET = "1.1.0"
PREVIOUS = "1.0.0"
# sim.extras keys: the operator driving the upgrade, and the (unit, version) pairs whose
# post-upgrade health check fails (a fault).
OPERATOR_KEY = "upgrade.operator"
BROKEN_KEY = "upgrade.broken"
UPGRADE_TICKS = 2  # stop, install, start and the health check cost 2 ticks on top of the hook


def _stack(raw: str | None) -> list[int]:
    try:
        value = json.loads(raw or "[]")
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def holds_grant(bags: Bags, unit: str) -> bool:
    """`unit` is `upgrading` and on top of the upgrade stack."""
    stack = _stack(bags.app(PEER).get("upgrade-stack"))
    number = int(unit.rsplit("/", 1)[1])
    return (
        bool(stack) and stack[-1] == number and bags.unit(PEER, unit).get("state") == "upgrading"
    )


class UpgradeFakes(DemoFakes):
    """The demo fakes, plus: an upgrade costs ticks, and chosen (unit, version) pairs fail."""

    def install(self, version: str) -> None:
        super().install(version)
        if self.sim.current is not None and self.sim.current.item.event != "install":
            self.sim.add_cost(UPGRADE_TICKS)

    def _bad(self) -> bool:
        run = self.sim.current
        broken = self.sim.extras.get(BROKEN_KEY, set())
        assert isinstance(broken, set)
        return run is not None and (run.unit, self._service().version) in broken

    def health(self) -> dict | None:
        return None if self._bad() else super().health()

    def served_version(self) -> str | None:
        return None if self._bad() else super().served_version()


class Operator:
    """The person at the keyboard: starts the upgrade, and rolls back after a failure.

    A simulator listener: after every commit it looks at what `juju status` and `juju show-task`
    would show and acts (no timers, so it never keeps a settled simulation busy).
    """

    MAX_RETRIES = 20

    def __init__(self, sim: Simulator, path: str):
        self.sim = sim
        self.path = path
        self.want: tuple[str, dict[str, Any]] | None = None  # the command to (re)issue
        self.attempts: list[Any] = []  # its ActionRecords, one per time it was issued
        self.retries = 0
        self.refreshed = False
        self.rolled_back = False
        self.accounted = False
        self.served_before: dict[str, int] = {}
        self.requested: set[str] = set()
        sim.listeners.append(self)

    @property
    def _recorder(self) -> Recorder:
        recorder = self.sim.recorder
        assert recorder is not None, "the upgrade engine reports to the invariants recorder"
        return recorder

    def request(self, unit: str) -> None:
        """soak.py asks for the operation on every unit; one operator command serves them all."""
        self._recorder.request(unit, "upgrade")
        self.requested.add(unit)
        if self.want is None and not self.attempts and not self.refreshed:
            if self.path == "action":
                self._issue("upgrade", {"version": TARGET})
            else:
                self._issue("pre-upgrade-check", {})

    def _issue(self, name: str, params: dict[str, Any]) -> None:
        self.want = (name, params)
        # No leader at this instant: ActionRejected; try again after the next commit.
        with contextlib.suppress(ActionRejected):
            self.attempts.append(self.sim.run_action(f"{APP}/leader", name, **params))

    def on_start(self, sim: Simulator, run: Any) -> None:
        if sim is self.sim and self.rolled_back and run.item.action in self.attempts:
            self.served_before = self._served()  # the action may upgrade this very unit

    def _served(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for i in self._recorder.intervals:
            if i.operation == "upgrade" and i.committed and not i.failed:
                counts[i.unit] = counts.get(i.unit, 0) + 1
        return counts

    def on_commit(self, sim: Simulator, run: Any, ok: bool) -> None:
        if sim is not self.sim:
            return
        if self.want is not None and not self._settle_pending():
            return
        if self.rolled_back and not self.accounted:
            self._account_rollback()
        errored = any(sim.units[u].error for u in sim.members(APP))
        if self.path == "refresh" and not self.refreshed and self.want is None and not errored:
            # A person resolves a unit in error before refreshing (Juju skips it; rule: refresh).
            self.refreshed = True
            delayed = tuple(u for u in sim.members(APP) if sim.rng.random() < 0.3)
            sim.refresh(APP, delayed=delayed)
        states = self._states()
        if "failed" in states.values() and not self.rolled_back and self.want is None:
            self.rolled_back = True
            self._issue("upgrade", {"version": PREVIOUS})

    def _account_rollback(self) -> None:
        """Once the rollback command succeeded: every member is owed one more upgrade.

        Counted from when the command started running (not when issued): what it started from
        is then known.
        A unit's asks become what it was served so far plus one (at least its asks), so a unit
        that completed the failed round is upgraded twice, and one the failed round never
        reached, once. Units added mid-rollout, never asked by soak.py, are asked here too.
        """
        self.accounted = True
        recorder = self._recorder
        for unit in self.sim.members(APP):
            served = self.served_before.get(unit, 0)
            asked = sum(1 for u, op, _ in recorder.requests if u == unit and op == "upgrade")
            for _ in range(max(0, served + 1 - asked)):
                recorder.request(unit, "upgrade")

    def _settle_pending(self) -> bool:
        """True once an attempt at the wanted command succeeded; reissues it when none can.

        As a person running `juju run <app>/leader ...` would: wait for the answer. An attempt
        queued on a unit that is being removed may still run (rule: unit removal), so it is given
        up only once that unit is gone; a failed attempt (rule: leadership may move mid-hook) is
        reissued on the leader.
        """
        if any(record.status == "completed" for record in self.attempts):
            self.want, self.attempts = None, []
            return True
        if any(
            record.status != "failed" and not self.sim.units[record.unit].removed
            for record in self.attempts
        ):
            return False  # still queued or running
        if self.retries >= self.MAX_RETRIES:
            return False
        assert self.want is not None
        self.retries += 1
        self._issue(*self.want)
        return False

    def _states(self) -> dict[str, str]:
        bags = Bags.from_truth(self.sim.relations, APP)
        return {u: bags.unit(PEER, u).get("state", "") for u in self.sim.members(APP)}


def request(sim: Simulator, unit: str) -> Any:
    """The engine's `request`: the first call picks the path and issues the command."""
    operator = sim.extras.get(OPERATOR_KEY)
    if not isinstance(operator, Operator):
        path = "refresh" if sim.rng.random() < 1 / 3 else "action"
        operator = sim.extras[OPERATOR_KEY] = Operator(sim, path)
    operator.request(unit)


def faults(sim: Simulator, units: list[str]) -> list[str]:
    """Arm this engine's faults with the simulator's RNG; return their descriptions."""
    rng = sim.rng
    armed = []
    if rng.random() < 0.5:
        unit = rng.choice(units)
        sim.extras[BROKEN_KEY] = {(unit, TARGET)}
        armed.append(f"fail_check {unit} at {TARGET}")
    if rng.random() < 0.4 and len(units) > 1:
        at = sim.now + rng.randint(0, 8 * len(units))
        graceful = rng.random() < 0.5

        def remove_leader(graceful: bool = graceful) -> None:
            leader = sim.leader(APP)
            if leader is not None:
                sim.remove_unit(leader, graceful)

        sim.add_timer(at, "remove_leader", remove_leader)
        armed.append(f"remove_leader graceful={graceful} at {at}")
    return armed
