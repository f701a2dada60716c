"""One lock for every disruptive operation: restart, remount and upgrade step (docs/one-lock.md).

The invariants with lock domains on hand-made histories, then one whole schedule of the soak
engine `one-lock` (every unit restarts, takes part in the upgrade and remounts the moved share)
with the real charm in the simulator.
"""

from __future__ import annotations

import itertools
import logging

import pytest

from demo.engines import ENGINES, ONE_LOCK
from jujusim.invariants import Interval, token_order_violation
from jujusim.simulator import Simulator

from . import soak


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)  # the upgrade library logs every unit that left: expected
    yield
    logging.disable(logging.NOTSET)


def section(unit: str, op: str, start: int, end: int, token: int) -> Interval:
    return Interval(unit, op, start, hook=start, token=token, end=end, committed=True)


def test_tokens_must_increase_across_the_operations_of_one_lock():
    restart = section("app/0", "restart", 0, 2, 5)
    upgrade = section("app/1", "upgrade", 3, 5, 4)  # after the restart, with a lower token
    history = [restart, upgrade]
    assert token_order_violation(history, upgrade) is None  # each operation its own domain
    violation = token_order_violation(history, upgrade, lambda op: ONE_LOCK.get(op, op))
    assert violation is not None and "app/0's restart" in violation


def test_restart_upgrade_and_remount_queue_behind_each_other():
    units = 3
    engine = ENGINES["one-lock"]
    fakes = engine.fakes(Simulator())
    with fakes.installed():
        base = soak.settle(engine, units, fakes, leader_sees_own_app_writes=True)
        result = soak.run_schedule(base, fakes, engine, seed=1, retry="none", faults=False)
    assert (result["violations"], result["liveness"], result["uncaught"]) == ([], [], [])
    recorder = result["sim"].recorder
    sections = sorted(recorder.intervals, key=lambda i: i.start)
    by_operation = {op: sum(1 for i in sections if i.operation == op) for op in ONE_LOCK}
    assert by_operation == {"restart": units, "remount": units, "upgrade": units}
    # One lock: never two sections at once, and one token sequence across the three operations.
    for before, after in itertools.pairwise(sections):
        assert before.end is not None and before.end <= after.start, (before, after)
        assert isinstance(before.token, int) and isinstance(after.token, int)
        assert before.token < after.token


@pytest.mark.parametrize(
    ("seed", "juju", "own", "fault"),
    [
        # The grant's hook remounts, then fails as leadership moves (writes discarded).
        (264, "3.6", True, "set_leader coordinated-ops/2 at 45"),
        # The grant's hook remounts, then fails before returning; `juju resolved` retries it.
        (163, "4", False, "fail_hook coordinated-ops/1 relation_changed nth=2 before_return"),
    ],
)
def test_a_remount_in_a_hook_that_failed_is_served_on_the_retry(seed, juju, own, fault):
    engine = ENGINES["one-lock"]
    fakes = engine.fakes(Simulator())
    with fakes.installed():
        base = soak.settle(engine, 3, fakes, leader_sees_own_app_writes=own, juju=juju)
        result = soak.run_schedule(base, fakes, engine, seed=seed, retry="none", faults=True)
    assert fault in result["faults"], "the soak's faults changed: this seed no longer replays"
    assert (result["violations"], result["liveness"], result["uncaught"]) == ([], [], [])
