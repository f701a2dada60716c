"""Check my charm: N units, an operation requested on every unit, seeded schedules, faults.

`check_charm` deploys N units of any charm, lets the deployment settle, requests the operation
on every unit (an action, or a callable of yours), runs the schedule to quiescence in an order
the seed picks, with one fault, and checks what a lock must guarantee:

- I1 exclusion: never more than `k` units inside the critical section at once;
- I2 grant before work and I3 no ghost holders, when you pass `holds_grant` (see grants.py);
- I4 liveness: every unit that was not removed ran its operation as often as it asked;
- I5 no uncaught exception in any hook, and no unit left in error.

The critical section is the method (or module function) of your charm that does the disruptive
work: `critical_section=(MyCharm, "_restart")` or `(my_module, "restart_service")`. While the
check runs it is wrapped: each call inside a hook is recorded as one critical section that
lasts as long as that hook plus `section_ticks` ticks (a restart takes longer than an ordinary
hook, so overlaps show). Faults (`FAULTS`):

- `none`;
- `leader-removed`: `juju remove-unit` of the leader while the first section runs;
- `holder-removed`: the machine of the first unit inside its section vanishes (abrupt removal);
- `hook-failure`: the first section raises; if the hook fails, the operator runs
  `juju resolved` (retry) a few ticks later.

    report = check_charm(spec, units=3, request="restart", critical_section=(MyCharm, "_restart"))
    assert report.ok, report   # str(report): each failing schedule, its problems and its script
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .grants import HoldsGrant
from .invariants import Recorder
from .queues import ActionRecord
from .records import DrainLimit, InjectedFault, Running
from .runner import CharmSpec
from .scheduler import SeededRandom, drain
from .script import format_script
from .simulator import Simulator

FAULTS = ("none", "leader-removed", "holder-removed", "hook-failure")
RESOLVE_AFTER = 4  # ticks before the "operator" runs `juju resolved` on a unit in error
MAX_STEPS = 50_000  # per schedule; more is reported as a livelock

Request = Callable[[Simulator, str], Any]


@dataclasses.dataclass
class Schedule:
    """One seeded schedule with one fault: what ran and what went wrong."""

    seed: int
    fault: str
    problems: list[str]
    operations: int  # critical sections that completed in a committed hook
    hooks: int  # hooks run after the request
    script: str  # the schedule as a replayable script (jujusim.format_script)

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems


@dataclasses.dataclass
class Report:
    """Every schedule `check_charm` ran; `str(report)` describes the failing ones."""

    schedules: list[Schedule]

    @property
    def ok(self) -> bool:
        """Every schedule passed."""
        return all(s.ok for s in self.schedules)

    @property
    def failures(self) -> list[Schedule]:
        """The schedules that found a problem."""
        return [s for s in self.schedules if not s.ok]

    def __str__(self) -> str:
        lines = [f"{len(self.schedules)} schedules, {len(self.failures)} failed"]
        for s in self.failures[:3]:
            lines.append(f"--- seed {s.seed}, fault {s.fault}:")
            lines += [f"  {p}" for p in s.problems[:10]]
        if self.failures:
            first = self.failures[0]
            script = first.script.splitlines()
            lines.append(f"--- script of seed {first.seed} ({len(script)} steps, last 40):")
            lines += script[-40:]
        return "\n".join(lines)


class _Schedule:
    """One schedule in flight: its simulator, recorder and fault (the wrapper reads it)."""

    def __init__(self, sim: Simulator, recorder: Recorder, operation: str, fault: str, ticks: int):
        self.sim = sim
        self.recorder = recorder
        self.operation = operation
        self.fault = fault
        self.ticks = ticks
        self.fault_done = fault == "none"
        self.injected: set[int] = set()  # runs whose section raised the injected fault

    def enter(self) -> None:
        """A critical section starts in the running hook: record it, strike the fault."""
        sim, run = self.sim, self.sim.current
        assert run is not None
        interval = self.recorder.enter(self.operation)
        sim.add_cost(self.ticks)
        if self.fault_done:
            return
        self.fault_done = True
        if self.fault == "hook-failure":
            interval.failed = True
            self.injected.add(run.seq)
            raise InjectedFault(f"injected failure inside the critical section on {run.unit}")
        if self.fault == "holder-removed":
            unit = run.unit
            sim.add_timer(sim.now + 1, f"machine of {unit} lost", lambda: _abrupt(sim, unit))
        if self.fault == "leader-removed":
            leader = sim.leader(_app(run.unit))
            if leader is not None:
                label = f"juju remove-unit {leader}"
                sim.add_timer(sim.now + 1, label, lambda: _graceful(sim, leader))

    # --- simulator listener: `juju resolved` after an injected failure ---------------------

    def on_start(self, sim: Simulator, run: Running) -> None:
        """Listener: nothing to do before a run."""

    def on_commit(self, sim: Simulator, run: Running, ok: bool) -> None:
        """Listener: a hook that failed on the injected fault is resolved (retried) later."""
        if not ok and run.seq in self.injected and sim.units[run.unit].error:
            unit = run.unit
            sim.add_timer(
                sim.now + RESOLVE_AFTER, f"juju resolved {unit}", lambda: sim.resolve(unit)
            )


def _app(unit: str) -> str:
    return unit.rsplit("/", 1)[0]


def _abrupt(sim: Simulator, unit: str) -> None:
    if not sim.units[unit].departing:
        sim.remove_unit(unit, graceful=False)


def _graceful(sim: Simulator, unit: str) -> None:
    if not sim.units[unit].departing:
        sim.remove_unit(unit, graceful=True)


@contextmanager
def _wrapped(owner: Any, name: str, current: list[_Schedule]) -> Iterator[None]:
    """Wrap `owner.name` so that a call inside a simulated hook enters the critical section."""
    original = getattr(owner, name)
    if not callable(original):
        raise TypeError(f"critical_section: {owner!r}.{name} is not callable")
    stored = inspect.getattr_static(owner, name)  # what to put back (a staticmethod stays one)

    @functools.wraps(original)
    def section(*args: Any, **kwargs: Any) -> Any:
        if current and current[0].sim.current is not None:
            current[0].enter()
        return original(*args, **kwargs)

    static = isinstance(stored, (staticmethod, classmethod))  # `original` is already bound
    setattr(owner, name, staticmethod(section) if static else section)
    try:
        yield
    finally:
        setattr(owner, name, stored)


def check_charm(
    spec: CharmSpec,
    *,
    request: str | Request,
    critical_section: tuple[Any, str],
    units: int = 3,
    holds_grant: HoldsGrant | None = None,
    seeds: Iterable[int] = range(10),
    faults: Sequence[str] = ("none",),
    k: int = 1,
    app: str | None = None,
    config: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
    setup: Callable[[Simulator], Any] | None = None,
    section_ticks: int = 2,
) -> Report:
    """Run every (seed, fault) schedule of `units` units of `spec`; return the `Report`.

    Args:
        spec: your charm (`CharmSpec.from_dir(MyCharm, CHARM_DIR)`).
        request: the action to run on every unit (with `params`), or `request(sim, unit)`, a
            callable that asks for the operation on `unit` any way it likes (e.g.
            `sim.config(...)` once, or `sim.fire_custom(unit, ...)`).
        critical_section: `(owner, attribute)` of the function that does the disruptive work.
        units: how many units to deploy.
        holds_grant: `(bags, unit) -> bool` for I2 and I3 (`jujusim.grants` has one per library).
        seeds: one schedule per seed and fault.
        faults: names from `FAULTS`.
        k: how many units may be inside at once.
        app: the application name (default: the charm's name).
        config: the deployment's config.
        params: the action's parameters, when `request` is an action name.
        setup: called after the deploy, before it settles (integrate other applications...).
        section_ticks: how many ticks longer than a hook a critical section takes.
    """
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown faults {unknown}: choose from {FAULTS}")
    owner, name = critical_section
    name_of_app = app or spec.name
    operation = request if isinstance(request, str) else name
    current: list[_Schedule] = []
    schedules = []
    with _wrapped(owner, name, current):
        for seed in seeds:
            for fault in faults:
                sim = Simulator(seed=seed)
                sim.deploy(name_of_app, spec, units=units, config=config)
                if setup is not None:
                    setup(sim)
                problems = _run(sim, SeededRandom())
                since = sim.hooks_run
                recorder = Recorder(sim, k=k, holds_grant=holds_grant)
                schedule = _Schedule(sim, recorder, operation, fault, section_ticks)
                sim.listeners.append(schedule)
                current[:] = [schedule]
                for unit in sim.members(name_of_app):
                    if isinstance(request, str):
                        sim.request(unit, operation, request, **(params or {}))
                    else:
                        record = request(sim, unit)
                        action = record if isinstance(record, ActionRecord) else None
                        recorder.request(unit, operation, action)
                problems += _run(sim, SeededRandom())
                current.clear()
                problems += recorder.violations + recorder.ghost_holders()
                problems += recorder.liveness_failures() + recorder.uncaught()
                problems += [f"{u} left in error" for u in sim.stuck_units()]
                problems = list(dict.fromkeys(problems))  # one line per distinct problem
                served = sum(1 for i in recorder.intervals if i.committed and not i.failed)
                script = format_script(sim.steps)
                hooks = sim.hooks_run - since
                schedules.append(Schedule(seed, fault, problems, served, hooks, script))
    return Report(schedules)


def _run(sim: Simulator, scheduler: SeededRandom) -> list[str]:
    """Drain; a livelock is a problem of the schedule, not an exception of the check."""
    try:
        drain(sim, scheduler, max_steps=MAX_STEPS)
    except DrainLimit as error:
        return [f"livelock: {error}"]
    return []
