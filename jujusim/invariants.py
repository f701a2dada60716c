"""The invariant recorder and checkers (rule: invariants), fed by the charm's operation journal.

The simulator patches the charm's journal so that every critical section calls `Recorder.enter`
(stamped at the start of the hook that makes it) and is closed at that hook's commit (rule: logical
time and commit: the widest interval). Checks:

- I1 exclusion: at most k units inside the critical sections of one lock domain at any logical
  time (a domain is one operation unless `domains` puts several under one lock, e.g. a charm's
  restart, remount and upgrade step);
- I2 grant before work: the entering unit's own view (its snapshot plus its writes so far) shows it
  holding the grant;
- I3 no ghost holders: after quiescence no grant names a removed unit;
- I4 liveness: after quiescence every requested operation ran exactly once (in a committed hook)
  unless its unit was removed;
- I5 no uncaught exception except injected ones;
- I6 fencing tokens: a committed critical section's token is greater than the token of every
  critical section (committed or not) of the same lock domain that ended before it started, for
  engines whose journal carries integer tokens (rollingops on etcd or peer, v0). The one
  exception is the same unit re-running under the same grant (a retried hook, an etcd
  retry-hold), whose token is then equal: a storage system fencing with "reject a token lower
  than the highest seen" accepts exactly these histories. With k > 1 holders, tokens follow the
  order of the grants, not of the sections: a unit granted first may enter after a unit granted
  later has finished. The journal does not see grants, so I6 then checks what it can: no token
  is used by two units, and each unit's tokens never go down.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .runner import Live
from .truth import Bags

if TYPE_CHECKING:
    from .simulator import Running, Simulator

HoldsGrant = Callable[[Bags, str], bool]


@dataclasses.dataclass
class Interval:
    """One critical section as the journal saw it."""

    unit: str
    operation: str
    start: int
    hook: int  # seq of the run that made it
    token: object = None
    end: int | None = None
    committed: bool | None = None  # whether the hook that made it committed
    granted: bool | None = None  # I2: did the unit's view show the grant at entry?
    failed: bool = False  # the operation raised (e.g. an injected fault) even if the hook went on

    def overlaps(self, other: Interval, other_end: int) -> bool:
        """Whether this closed interval and `other` (ending at `other_end`) share a tick."""
        assert self.end is not None
        return self.start < other_end and other.start < self.end


class Recorder:
    """Collects requests and critical sections; checks exclusion as each one closes."""

    def __init__(
        self,
        sim: Simulator,
        *,
        k: int = 1,
        holds_grant: HoldsGrant | None = None,
        domains: Mapping[str, str] | None = None,
    ):
        self.sim = sim
        self.k = k
        self.holds_grant = holds_grant
        self.domains = dict(domains or {})  # operation -> lock domain (default: itself)
        self.intervals: list[Interval] = []
        self.requests: list[tuple[str, str, int]] = []  # (unit, operation, time)
        self.request_actions: list[Any] = []  # the ActionRecord of each request, if any
        self.violations: list[str] = []
        self._open: dict[int, list[Interval]] = {}
        sim.listeners.append(self)
        sim.recorder = self

    # --- feeding --------------------------------------------------------------------------

    def request(self, unit: str, operation: str, action: Any = None) -> None:
        """Count a request (`action`: its ActionRecord, when it came through an action).

        A request whose action failed does not count: Juju discarded its writes or the charm
        refused it, and the operator saw the failure.
        """
        self.requests.append((unit, operation, self.sim.now))
        self.request_actions.append(action)

    def enter(self, operation: str, token: object = None) -> Interval:
        """Called from the patched journal inside a run."""
        run = self.sim.current
        if run is None:
            raise RuntimeError("critical section entered outside a simulated run")
        interval = Interval(run.unit, operation, run.start, run.seq, token)
        if self.holds_grant is not None:
            state = Live.state()
            interval.granted = state is not None and self.holds_grant(
                Bags.from_state(state, run.unit), run.unit
            )
            if not interval.granted:
                self.violations.append(
                    f"I2 t={run.start} {run.unit} entered {operation} in "
                    f"{run.item.label()} without holding the grant"
                )
        self.intervals.append(interval)
        self._open.setdefault(run.seq, []).append(interval)
        return interval

    # --- simulator listener -----------------------------------------------------------------

    def on_start(self, sim: Simulator, run: Running) -> None:
        """Listener: nothing to do before a run (entries come from the journal)."""
        pass

    def on_commit(self, sim: Simulator, run: Running, ok: bool) -> None:
        """Listener: close the intervals the run opened, committed or not."""
        for interval in self._open.pop(run.seq, []):
            interval.end = sim.now
            interval.committed = ok
            self._check_exclusion(interval)
            if ok:
                self._check_token_order(interval)

    def _check_exclusion(self, new: Interval) -> None:
        """I1: sweep the span of `new` for more than k distinct units inside at once."""
        assert new.end is not None
        provisional = {r.seq: r.end for r in self.sim.running.values()}
        spans = []
        for other in self.intervals:
            end = other.end if other.end is not None else provisional.get(other.hook)
            if end is None or self.domain(other.operation) != self.domain(new.operation):
                continue  # another lock domain
            if other.unit == new.unit and other is not new:
                continue
            if new.overlaps(other, end):
                spans.append((max(other.start, new.start), min(end, new.end), other))
        points = sorted({s for s, _, _ in spans})
        for t in points:
            inside = {o.unit for s, e, o in spans if s <= t < e}
            if len(inside) > self.k:
                who = ", ".join(
                    sorted({f"{o.unit} {o.operation}" for s, e, o in spans if s <= t < e})
                )
                self.violations.append(
                    f"I1 t={t} {len(inside)} units inside the critical section (k={self.k}): {who}"
                )
                return

    def domain(self, operation: str) -> str:
        """The lock domain of `operation`: the operations of one domain exclude each other."""
        return self.domains.get(operation, operation)

    def _check_token_order(self, new: Interval) -> None:
        """I6: `new`'s token exceeds the tokens of every critical section ended before it began."""
        violation = token_order_violation(self.intervals, new, self.domain, self.k)
        if violation is not None:
            self.violations.append(violation)

    # --- end-of-schedule checks -------------------------------------------------------------

    def liveness_failures(self) -> list[str]:
        """I4: each non-removed unit served exactly as many times as it asked."""
        failures = []
        asked: dict[tuple[str, str], int] = {}
        for (unit, operation, _), action in zip(self.requests, self.request_actions, strict=True):
            if action is not None and action.status == "failed":
                continue
            asked[(unit, operation)] = asked.get((unit, operation), 0) + 1
        served: dict[tuple[str, str], int] = {}
        for i in self.intervals:
            if i.committed and not i.failed:
                served[(i.unit, i.operation)] = served.get((i.unit, i.operation), 0) + 1
        for (unit, operation), n in sorted(asked.items()):
            truth = self.sim.units.get(unit)
            if truth is None or truth.departing or truth.removed:
                continue
            got = served.get((unit, operation), 0)
            if got != n:
                failures.append(f"I4 {unit} asked for {operation} {n}x, served {got}x")
        if not self.sim.quiescent():
            failures.append("I4 not quiescent: " + ", ".join(self._waiting()))
        return failures

    def _waiting(self) -> list[str]:
        return [
            f"{u} has {len(q)} queued" + (" (in error)" if self.sim.units[u].error else "")
            for u, q in self.sim.queues.items()
            if len(q) and not self.sim.units[u].removed
        ]

    def ghost_holders(self) -> list[str]:
        """I3: after quiescence, no removed unit still holds the grant in the truth."""
        if self.holds_grant is None:
            return []
        out = []
        for name, truth in self.sim.units.items():
            if not (truth.removed or truth.departing):
                continue
            bags = Bags.from_truth(self.sim.relations, truth.app)
            if self.holds_grant(bags, name):
                out.append(f"I3 removed unit {name} still holds the grant")
        return out

    def uncaught(self) -> list[str]:
        """I5: exceptions the charm raised that no fault injected."""
        return [f"I5 {e}" for e in self.sim.errors]


def _integer(token: object) -> bool:
    return isinstance(token, int) and not isinstance(token, bool)


def token_order_violation(
    intervals: list[Interval], new: Interval, domain: Callable[[str], str] = str, k: int = 1
) -> str | None:
    """I6 for `new` against `intervals` (see the module docstring); the message or None.

    `domain` maps an operation to its lock domain (default: each operation is its own); `k` is
    how many holders the lock admits at once.
    """
    if not _integer(new.token):
        return None
    if k > 1:
        return _k_token_violation(intervals, new, domain)
    for other in intervals:
        if other is new or other.end is None or other.end > new.start:
            continue  # still open, or not over when `new` began
        if domain(other.operation) != domain(new.operation) or not _integer(other.token):
            continue
        if other.unit == new.unit and other.token == new.token:
            continue  # the same grant run again by its holder
        assert isinstance(other.token, int) and isinstance(new.token, int)
        if new.token <= other.token:
            return (
                f"I6 t={new.start} {new.unit} entered {new.operation} with token {new.token}, "
                f"not above token {other.token} of {other.unit}'s {other.operation} "
                f"(ended t={other.end})"
            )
    return None


def _k_token_violation(
    intervals: list[Interval], new: Interval, domain: Callable[[str], str]
) -> str | None:
    """I6 with k > 1 holders: tokens unique across units, and never going down on one unit."""
    for other in intervals:
        if other is new or domain(other.operation) != domain(new.operation):
            continue
        if not _integer(other.token):
            continue
        if other.unit != new.unit and other.token == new.token:
            return (
                f"I6 t={new.start} {new.unit} entered {new.operation} with token {new.token}, "
                f"also the token of {other.unit}"
            )
        ended = other.end is not None and other.end <= new.start
        assert isinstance(other.token, int) and isinstance(new.token, int)
        if other.unit == new.unit and ended and new.token < other.token:
            return (
                f"I6 t={new.start} {new.unit} entered {new.operation} with token {new.token}, "
                f"below its own earlier token {other.token} (ended t={other.end})"
            )
    return None
