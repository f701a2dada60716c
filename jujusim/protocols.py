"""The simulator's extension points, as Protocols: what an object must offer to plug in.

- `Actor`: a background process on logical time (a worker, an external service). The clock asks
  each actor when it next wants to act and calls `step(sim)` at that time.
- `Listener`: told when a run starts (before the charm runs) and when it commits or fails; how
  fakes give each run its environment and how checkers observe the schedule.
- `Scheduler`: picks what happens next (scheduler.py has round-robin and seeded random ones).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .records import Running
    from .simulator import Simulator


class Actor(Protocol):
    """A background process on logical time (e.g. a library's worker)."""

    def next_time(self) -> int | None:
        """The logical time it next wants to act, or None when idle."""
        ...

    def step(self, sim: Simulator) -> None:
        """Act now (called once `sim.now` has reached `next_time()`)."""
        ...


class Listener(Protocol):
    """Told of every run's start and end (fakes, checkers)."""

    def on_start(self, sim: Simulator, run: Running) -> None:
        """`run` is about to run the charm against the truth as of now."""
        ...

    def on_commit(self, sim: Simulator, run: Running, ok: bool) -> None:
        """`run` ended: its output was committed (ok) or discarded."""
        ...


class Scheduler(Protocol):
    """Decides what happens next."""

    def step(self, sim: Simulator) -> bool:
        """Make one thing happen (start a run or advance the clock); False when nothing can."""
        ...
