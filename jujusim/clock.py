"""The clock: which units may start, when the next thing happens, timers, background actors."""

from __future__ import annotations

from collections.abc import Callable

from .core import operator
from .records import Timer
from .runs import Runs
from .truth import unit_id


class Clock(Runs):
    """Logical time: the scheduling primitives a scheduler (scheduler.py) drives."""

    def add_timer(self, at: int, label: str, action: Callable[[], object]) -> None:
        """Run an operator operation or fault at logical time `at` (before starts at that tick)."""
        self.timers.append(Timer(max(at, self.now), self._next_seq(), label, action))

    def eligible(self) -> list[str]:
        """Units that may start an item now, in id order."""
        out = []
        for name, truth in self.units.items():
            if truth.removed or name in self.running:
                continue
            item = self.queues[name].peek(self.now)
            if item is None:
                continue
            if truth.error and (self.retry == "none" or not item.attempts):
                continue
            out.append(name)
        return out

    def next_time(self) -> int | None:
        """The next logical time at which something can happen (commit, timer, not-before)."""
        times = [r.end for r in self.running.values()]
        times += [t.at for t in self.timers]
        times += [t for a in self.actors if (t := a.next_time()) is not None]
        for name, truth in self.units.items():
            if truth.removed or name in self.running:
                continue
            if truth.error and self.retry == "none":
                continue
            later = [i.not_before for i in self.queues[name].items if i.not_before > self.now]
            times += later
        future = [t for t in times if t > self.now]
        return min(future) if future else None

    def busy(self) -> bool:
        """Whether anything can still happen without an operator (run, queue, timer)."""
        return bool(self.running or self.timers or self.eligible() or self.next_time() is not None)

    def quiescent(self) -> bool:
        """Nothing running, queued or scheduled on any unit (units in error count as queued)."""
        if self.running or self.timers:
            return False
        return all(not self.queues[u] for u, t in self.units.items() if not t.removed)

    def stuck_units(self) -> list[str]:
        """Units left in error (a failed hook not retried or resolved yet)."""
        return [u for u, t in self.units.items() if t.error and not t.removed]

    def fire_due_timers(self) -> None:
        """Run the timers due by now, in time then creation order."""
        due = sorted((t for t in self.timers if t.at <= self.now), key=lambda t: (t.at, t.seq))
        for timer in due:
            self.timers.remove(timer)
            self.log(f"timer {timer.label}")
            timer.action()

    def advance(self) -> bool:
        """Move the clock to the next time something happens; commit what ends by then.

        Timers due by then fire afterwards, as top-level operator calls (so they are recorded).
        """
        moved = self._advance_clock()
        self.fire_due_timers()
        for actor in list(self.actors):
            due = actor.next_time()
            if due is not None and due <= self.now:
                actor.step(self._whole())
        return moved

    @operator
    def _advance_clock(self) -> bool:
        target = self.next_time()
        if target is None:
            if self.running:
                target = self.now
            else:
                return False
        self.now = target
        ending = sorted(
            (r for r in self.running.values() if r.end <= self.now),
            key=lambda r: (r.start, unit_id(r.unit), r.unit),
        )
        for run in ending:
            del self.running[run.unit]
            self._commit(run)
        return True
