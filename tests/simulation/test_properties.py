"""Properties every lock engine must hold, on the real demo charm in the simulator (CI-sized).

No Juju controller can run here: the simulator stands in for it (jujusim/tests/test_simulator.py
shows it delivers Juju's semantics) and runs N copies of the real `CoordinatedOpsCharm`; only the
demo service and the journal are replaced (demo/fakes.py). For every engine in the registry:

- seeded random schedules with the fault mix, under both settings of
  leader_sees_own_app_writes and with hook retry on and off: no exclusion violation (I1), no
  critical section without the grant (I2), no ghost holder (I3), every request served (I4), no
  uncaught error (I5);
- a hypothesis state machine whose rules are the scheduler's choices and the faults; a failure
  shrinks to a minimal schedule, printed as a script of `state.<rule>(...)` steps.

`python -m tests.simulation.soak` runs the long version (thousands of schedules).
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from demo.engines import ENGINES, Engine
from demo.fakes import DemoFakes
from jujusim.invariants import Recorder
from jujusim.scheduler import SeededRandom
from jujusim.script import format_script
from jujusim.simulator import Simulator

from .soak import Progress, finish, main, run_schedule, settle

UNITS = 3
SEEDS_PER_COMBO = 2
ENGINE_PARAMS = sorted(ENGINES)
_BASES: dict[tuple[str, bool, int, str], tuple[Simulator, DemoFakes]] = {}


def settled(
    engine: Engine, switch: bool, units: int = UNITS, juju: str = "3.6"
) -> tuple[Simulator, DemoFakes]:
    """A settled deployment per (engine, switch, units, Juju version), built once per session."""
    key = (engine.name, switch, units, juju)
    if key not in _BASES:
        fakes = engine.fakes(Simulator())
        with fakes.installed():
            sim = settle(engine, units, fakes, leader_sees_own_app_writes=switch, juju=juju)
            _BASES[key] = sim, fakes
    return _BASES[key]


@pytest.mark.parametrize("engine_name", ENGINE_PARAMS)
@pytest.mark.parametrize("switch", [True, False], ids=["sees-own-on", "sees-own-off"])
@pytest.mark.parametrize("retry", ["none", "backoff"])
def test_seeded_schedules_with_faults_hold_every_invariant(engine_name, switch, retry):
    engine = ENGINES[engine_name]
    base, fakes = settled(engine, switch)
    with fakes.installed():
        for seed in range(SEEDS_PER_COMBO):
            result = run_schedule(base, fakes, engine, seed, retry, faults=True)
            sim = result["sim"]
            problems = result["violations"] + result["liveness"] + result["uncaught"]
            assert not problems, (
                f"seed {seed} faults {result['faults']}: {problems}\n{format_script(sim.steps)}"
            )
            assert result["figures"]["operations"] >= 1


# Schedules the long soak once failed; each replays here so the fix stays in place.
SOAK_REGRESSIONS = [
    # The operator's command was queued on a leader being removed: the operator must wait for
    # that unit to be gone before re-running it, and take whichever attempt succeeds.
    ("upgrade", 128, "none", True),
    ("upgrade", 754, "none", False),
    # A departing leader repaired the upgrade stack from its shrinking view (upgrade LIBPATCH 5).
    ("upgrade", 332, "none", True),
    ("upgrade", 685, "backoff", True),
    # The upgrade step raised inside its critical section: the one lock's halt-after-failures
    # paused the roll, and only the operator's `resume` (the engine's unstick) continues it.
    ("upgrade", 121, "none", True),
    # The simulator ran etcd/0's relation-joined for a unit removed (and forgotten) before it
    # ran, then failed to build the next hook's view (KeyError): Juju joins nobody there.
    ("rollingops-etcd", 998, "none", False),
]
# The same with (units, Juju version) other than (UNITS, 3.6): soak --units N --juju V.
SOAK_REGRESSIONS_AT = [
    # The leader's pause action failed after putting etcd's pause key: the action's databag
    # writes were discarded, the key stayed, and the waiter on etcd waited for good (the
    # rollingops pause mark, LIBPATCH 7). soak --engine rollingops-etcd-k2 --units 5 --juju 4.
    ("rollingops-etcd-k2", 37, "backoff", True, 5, "4"),
    # A worker killed right after its grant; its granted hook, queued behind others, started a
    # tick before the dead worker's lease ran out, passed the fence check, and the slot expired
    # under the running restart: a third unit entered beside two (k=2). The hook now keeps the
    # slot's lease alive while the operation runs (`EtcdLock.keep_slot`, LIBPATCH 10).
    ("rollingops-etcd-k2", 705, "none", True, 5, "4"),
]


@pytest.mark.parametrize(("engine_name", "seed", "retry", "switch"), SOAK_REGRESSIONS)
def test_schedules_the_soak_once_failed_now_hold_every_invariant(engine_name, seed, retry, switch):
    engine = ENGINES[engine_name]
    base, fakes = settled(engine, switch)
    with fakes.installed():
        result = run_schedule(base, fakes, engine, seed, retry, faults=True)
    problems = result["violations"] + result["liveness"] + result["uncaught"]
    assert not problems, f"seed {seed}: {problems}\n{format_script(result['sim'].steps)}"


@pytest.mark.parametrize(
    ("engine_name", "seed", "retry", "switch", "units", "juju"), SOAK_REGRESSIONS_AT
)
def test_schedules_the_soak_once_failed_at_other_sizes_now_hold_every_invariant(
    engine_name, seed, retry, switch, units, juju
):
    engine = ENGINES[engine_name]
    base, fakes = settled(engine, switch, units, juju)
    with fakes.installed():
        result = run_schedule(base, fakes, engine, seed, retry, faults=True)
    assert result["faults"], "the schedule must replay with the faults it failed with"
    problems = result["violations"] + result["liveness"] + result["uncaught"]
    assert not problems, f"seed {seed}: {problems}\n{format_script(result['sim'].steps)}"


def _soak_json(capsys, *argv: str) -> dict:
    main(["--engine", "v0", "--units", "3", "--seeds", "4", "--json", *argv])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_soak_over_two_processes_runs_the_same_schedules_as_one(capsys):
    one, two = _soak_json(capsys, "--jobs", "1"), _soak_json(capsys, "--jobs", "2")
    assert (one["jobs"], two["jobs"]) == (1, 2)
    same = ["schedules", "combinations", "hooks_total_p50", "hooks_per_unit_max", "violations"]
    assert {k: one[k] for k in same} == {k: two[k] for k in same}
    assert one["schedules"] == 4


def test_soak_progress_is_a_stderr_line_per_tenth_with_the_failures_so_far(capsys):
    progress = Progress(20)
    for index in range(20):
        progress.done(failed=index == 4)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10
    assert "2/20 schedules, 0 failing" in lines[0] and "20/20 schedules, 1 failing" in lines[-1]
    Progress(9).done(failed=False)  # fewer than 10 schedules: silent
    assert capsys.readouterr().err == ""


class LockMachine(RuleBasedStateMachine):
    """Hypothesis drives the v0 engine's schedule; exclusion must hold after every step."""

    engine = ENGINES["v0"]

    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        base, self.fakes = settled(self.engine, True)
        self._stack.enter_context(self.fakes.installed())
        self.sim = base.fork(0)
        self.fakes.attach(self.sim)
        self.recorder = Recorder(
            self.sim,
            k=self.engine.k,
            holds_grant=self.engine.holds_grant,
            domains=self.engine.domains,
        )
        self.removed = False

    @initialize(switch=st.booleans(), retry=st.sampled_from(["none", "backoff"]))
    def request_everywhere(self, switch: bool, retry: str) -> None:
        self.sim.leader_sees_own_app_writes = switch
        self.sim.retry = retry
        for unit in self.sim.members(self.engine.app):
            self.engine.request(self.sim, unit)

    def _unit(self, index: int) -> str | None:
        members = self.sim.members(self.engine.app)
        return members[index % len(members)] if members else None

    @rule(index=st.integers(0, UNITS - 1))
    def start(self, index: int) -> None:
        unit = self._unit(index)
        if unit in self.sim.eligible():
            self.sim.start(unit)

    @rule()
    def advance(self) -> None:
        self.sim.advance()

    @rule(
        index=st.integers(0, UNITS - 1),
        point=st.sampled_from(["entry", "in_critical_section", "before_return"]),
    )
    def fail_next_hook(self, index: int, point: str) -> None:
        unit = self._unit(index)
        if unit:
            self.sim.fail_hook(unit, point=point)

    @rule(index=st.integers(0, UNITS - 1))
    def move_leadership(self, index: int) -> None:
        unit = self._unit(index)
        if unit:
            self.sim.set_leader(unit)

    @rule(index=st.integers(0, UNITS - 1), graceful=st.booleans())
    def remove_unit(self, index: int, graceful: bool) -> None:
        unit = self._unit(index)
        if unit and not self.removed:
            self.removed = True
            self.sim.remove_unit(unit, graceful)

    @invariant()
    def exclusion_and_grant_hold(self) -> None:
        assert not self.recorder.violations, self.recorder.violations

    def teardown(self) -> None:
        try:
            finish(self.sim, SeededRandom(), self.recorder, self.engine.app, self.engine.unstick)
            problems = (
                self.recorder.violations
                + self.recorder.ghost_holders()
                + self.recorder.liveness_failures()
                + self.recorder.uncaught()
            )
            assert not problems, f"{problems}\n{format_script(self.sim.steps)}"
        finally:
            self._stack.close()


LockMachine.TestCase.settings = settings(
    max_examples=12,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_v0_lock_machine = LockMachine.TestCase
