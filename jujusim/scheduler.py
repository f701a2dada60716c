"""Schedulers: who starts next, and when the clock moves (rule: schedulers).

A step either starts the next item of one eligible unit or advances the clock to the next commit,
timer or not-before time. The simulator records every step in `sim.steps` (script.py prints and
replays them).
"""

from __future__ import annotations

import collections

from .protocols import Scheduler
from .simulator import DrainLimit, Simulator


class RoundRobin:
    """Start every eligible unit in id order, then advance. Deterministic and readable."""

    def step(self, sim: Simulator) -> bool:
        """Start every eligible unit, or advance the clock when none is."""
        eligible = sim.eligible()
        for unit in eligible:
            sim.start(unit)
        if eligible:
            return True
        return sim.advance()


class SeededRandom:
    """Choose uniformly among {start u | u eligible} and {advance} with the simulator's RNG."""

    def step(self, sim: Simulator) -> bool:
        """Start one eligible unit or advance the clock, as the RNG picks."""
        eligible = sim.eligible()
        choices: list[str | None] = [*eligible]
        if sim.running or sim.next_time() is not None or not eligible:
            choices.append(None)
        choice = sim.rng.choice(choices)
        if choice is None:
            return sim.advance()
        sim.start(choice)
        return True


def drain(sim: Simulator, scheduler: Scheduler | None = None, max_steps: int = 200_000) -> int:
    """Run until nothing can happen without an operator; fail on livelock. Returns steps."""
    scheduler = scheduler or RoundRobin()
    steps = 0
    while sim.busy():
        if steps >= max_steps:
            recent = collections.Counter(line.split(" ", 1)[1] for line in sim.trace[-400:])
            top = ", ".join(f"{n}x {what}" for what, n in recent.most_common(6))
            raise DrainLimit(f"no quiescence after {max_steps} steps (seed {sim.seed}): {top}")
        if not scheduler.step(sim):
            break
        steps += 1
    return steps
