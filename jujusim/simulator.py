"""The multi-unit Juju simulator: N copies of a real charm class under Juju's event semantics.

Juju's truth (truth.py) lives here, outside Scenario. Each unit has a queue of items (queues.py); a
scheduler (scheduler.py) decides, step by step, which unit starts its next item and when the
logical clock advances. An item runs at once against the truth as of its start (runner.py) and its
output is committed `duration` ticks later (rule: logical time and commit), so hooks on different
units overlap. At commit the simulator applies the writes and routes the notifications Juju would
send (rule: routing after a commit).

Operator operations (deploy, add_unit, remove_unit, set_leader, run_action, refresh, config,
fail_hook, resolve, fire_custom, ...) only enqueue what Juju would enqueue; none runs charm code.
The rules it implements are written in docs/juju-rules.md; the code cites them by name.

`Simulator` is the top of a stack of classes, one concern each: core.py (the truth, membership),
views.py (a unit's State), commit.py (publishing writes, routing notifications), runs.py
(starting a run, faults), clock.py (scheduling primitives, timers, actors), operations.py
(operator operations); `fork` is here.

    sim = Simulator(seed=1)
    sim.deploy("toy", spec, units=3)
    drain(sim)
    sim.run_action("toy/1", "write", key="a", value="1")
    drain(sim)
"""

from __future__ import annotations

import copy
import random
from typing import Any

from .core import RETRY_POLICIES
from .operations import FAIL_POINTS, Operations
from .records import ActionRejected, DrainLimit, FailSpec, InjectedFault, Running, Timer, Writable
from .runner import SimulatorBug

__all__ = [
    "FAIL_POINTS",
    "RETRY_POLICIES",
    "ActionRejected",
    "DrainLimit",
    "FailSpec",
    "InjectedFault",
    "Running",
    "Simulator",
    "Timer",
    "Writable",
]


class Simulator(Operations):
    """Juju for N units of one or more applications, on logical time."""

    def fork(self, seed: int | None = None, **switches: Any) -> Simulator:
        """An independent copy of this simulator's truth (e.g. a settled deployment), reseeded.

        Contexts and charm specs are shared (they hold no truth); everything else is copied,
        except listeners and the recorder (attach new ones to the copy).
        `switches` override settings such as leader_sees_own_app_writes or retry.
        """
        if self.running:
            raise SimulatorBug("fork a settled simulator (nothing running)")
        memo: dict[int, Any] = {id(ctx): ctx for ctx in self._contexts.values()}
        for obj in [*self.apps.values(), *self.units.values()]:
            memo[id(obj.charm)] = obj.charm
        memo.update({id(u.ctx): u.ctx for u in self.units.values()})
        memo[id(self._contexts)] = self._contexts
        memo[id(self.duration)] = self.duration
        memo[id(self.listeners)], memo[id(self.recorder)] = [], None
        copy_ = copy.deepcopy(self, memo)
        copy_.seed = self.seed if seed is None else seed
        copy_.rng = random.Random(copy_.seed)  # noqa: S311
        copy_.trace, copy_.steps = [], [("fork", (), {"seed": copy_.seed})]
        for key, value in switches.items():
            if not hasattr(copy_, key):
                raise TypeError(f"unknown switch {key}")
            setattr(copy_, key, value)
        return copy_
