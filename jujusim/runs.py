"""Starting a run: the agent's bookkeeping, the armed faults, the charm run against the truth."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from . import goalstate, jujuexec, runner
from .commit import Commits
from .core import operator
from .queues import Item
from .records import FailSpec, InjectedFault, Running, Writable
from .runner import RunResult, SimulatorBug
from .truth import Bag, RelationTruth, unit_id


class Runs(Commits):
    """Starts a unit's next item now; its output is committed `duration` ticks later."""

    @operator
    def start(self, unit: str) -> Running | None:
        """Start the unit's next item: run it now against the truth, commit it later."""
        truth = self.units[unit]
        if unit in self.running or truth.removed:
            raise SimulatorBug(f"{unit} cannot start: running or removed")
        queue = self.queues[unit]
        item = queue.peek(self.now)
        if item is None:
            raise SimulatorBug(f"{unit} has nothing to start at t={self.now}")
        queue.remove(item)
        runnable, remote_id = self._prepare(unit, item)
        if not runnable:
            return None
        state = self._build_state(unit, item)
        relation = None
        if item.relation is not None:
            relation = state.get_relation(item.relation)
        event = runner.build_event(truth.ctx, item, relation, remote_id)
        run = Running(self._next_seq(), unit, item, self.now, before=Writable.of(state))
        run.leader_at_start = state.leader
        run.fault = self._match_fault(unit, item)
        for listener in self.listeners:
            listener.on_start(self._whole(), run)
        self.current = run
        try:
            if run.fault is not None and run.fault.point == "entry":
                run.result = RunResult(state=None, error=f"InjectedFault: at entry on {unit}")
            else:
                with intercept_juju_exec(run), goalstate.intercept(self._goal_state(unit)):
                    run.result = runner.run(
                        truth.ctx, event, state, item.env or None, departing=item.departing
                    )
                if run.fault is not None and run.fault.point == "before_return":
                    run.result = RunResult(state=None, error="InjectedFault: before return")
        except SimulatorBug as bug:
            from .script import format_script

            script = format_script(self.steps)
            raise SimulatorBug(f"{bug}\n--- schedule (seed {self.seed}) ---\n{script}") from bug
        finally:
            self.current = None
        run.end = self.now + max(1, int(self.duration(unit, item))) + run.extra_ticks
        self.running[unit] = run
        self.runs[run.seq] = run
        truth.hooks += 1
        self.hooks_run += 1
        self.log(f"start {unit} {item.label()} (ends t={run.end})")
        return run

    def _goal_state(self, unit: str) -> dict[str, str]:
        """What `goal-state` shows `unit` of its application's units (rule: goal-state)."""
        app = self.units[unit].app
        units = {}
        for name, truth in sorted(self.units.items(), key=lambda kv: unit_id(kv[0])):
            if truth.app != app or truth.removed:
                continue
            status = truth.unit_status.name
            if truth.departing:
                status = "dying"
            elif truth.error:
                status = "error"
            elif status not in goalstate.GOAL_STATUSES:
                status = "active"
            units[name] = status
        return units

    def _match_fault(self, unit: str, item: Item) -> FailSpec | None:
        for spec in self.faults.get(unit, []):
            if spec.match is None or spec.match in item.label():
                spec.seen += 1
                if spec.seen == spec.nth:
                    self.faults[unit].remove(spec)
                    return spec
        return None

    def _prepare(self, unit: str, item: Item) -> tuple[bool, int | None]:
        """Agent-side bookkeeping before a run: (whether to run it, the remote unit id)."""
        truth = self.units[unit]
        if item.new_charm is not None and item.new_charm is not truth.charm:
            truth.charm = (
                item.new_charm
            )  # refresh: the new code handles this upgrade-charm (rule: refresh)
            truth.ctx = self.context(item.new_charm, unit)
            if self.substrate == "k8s":
                truth.stored_states, truth.deferred = frozenset(), []
        if item.relation is None:
            return True, None
        rel = self.relations.get(item.relation)
        gone = _gone(rel, unit, item)
        if gone:
            self.log(f"skip {unit} {item.label()}: {gone}")
            return False, None
        assert rel is not None  # (for the type checker: _gone said so)
        if item.event == "relation_created":
            rel.attached.add(unit)
        if item.event == "relation_joined" and item.remote:
            rel.views.setdefault(unit, set()).add(item.remote)
            owed = self.queues[unit].pending_changed(rel.id, item.remote)
            if owed is not None:
                owed.owed = True
        remote = item.remote
        if item.event == "relation_changed":
            key = (rel.id, item.writer or "")
            version = self._bag_of(rel, item).version
            if truth.seen.get(key, -1) >= version and not item.owed and not item.attempts:
                self.log(f"skip {unit} {item.label()}: version {version} already seen (coalesced)")
                return False, None
            item.seen_version = version  # becomes the unit's seen-version if the run commits
            if item.app_level:
                remote = self._app_event_remote(rel, unit, item)
                if remote is None:
                    self.dropped.append(f"t={self.now} {unit} {item.label()}")
                    self.log(f"dropped {unit} {item.label()} (Scenario gap: no remote unit)")
                    return False, None
        return True, (unit_id(remote) if remote else None)

    def _bag_of(self, rel: RelationTruth, item: Item) -> Bag:
        if item.app_level:
            return rel.app_bags[item.writer_app or ""]
        return rel.unit_bags.get(item.remote or "", Bag())

    def _app_event_remote(self, rel: RelationTruth, unit: str, item: Item) -> str | None:
        """Scenario needs a remote unit for an app-level change: the leader, else the lowest id.

        Rule: app-level change needs a remote unit.
        """
        view = sorted(rel.views.get(unit, ()), key=unit_id)
        leader = self.apps[item.writer_app or ""].leader
        if leader in view:
            return leader
        return view[0] if view else None

    def checkpoint(self, point: str) -> None:
        """Called by fakes at named points of a run; raises if a fault is armed there."""
        run = self.current
        if run is not None and run.fault is not None and run.fault.point == point:
            raise InjectedFault(f"injected failure at {point} on {run.unit}")

    def add_cost(self, ticks: int) -> None:
        """Called by fakes: the running item takes `ticks` longer (e.g. a restart, a delay)."""
        if self.current is not None and ticks > 0:
            self.current.extra_ticks += int(ticks)


@contextlib.contextmanager
def intercept_juju_exec(run: Running) -> Iterator[None]:
    """During a run, `subprocess.Popen([juju-exec, ...])` records a dispatch request instead."""
    with jujuexec.intercept(lambda target, event, env: run.juju_exec.append((target, event, env))):
        yield


def _gone(rel: RelationTruth | None, unit: str, item: Item) -> str | None:
    """Why Juju would not run relation hook `item` on `unit` any more, or None."""
    if rel is None or unit in rel.broken:  # broken here: Juju runs nothing more for it
        return "relation gone"
    if item.event == "relation_joined" and item.remote and item.remote not in rel.unit_bags:
        return f"{item.remote} left, and was forgotten, before this ran: nobody to join"
    return None
