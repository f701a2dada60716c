"""`rolling-status` with a roll in flight, on the simulator: one hook, no relation write.

The check is tests/benchmarks/rolling_status.py; its 50-unit run (the target of issue 19, about
25 s of CPU here on the peer backend, 45 s on etcd) is in the benchmark tier: `tox -e benchmark
-- rolling_status` (add `--backend etcd`). Here: the whole demo charm at a few units, the charm's
one lock alone at a dozen (peer) and at 8 (etcd), and a `rolling-status` that writes, which the
check must catch.
"""

from __future__ import annotations

import logging

import ops
import pytest

from demo.fakes import demo_spec
from jujusim.runner import CharmSpec
from tests.benchmarks import rolling_status
from tests.benchmarks.rolling_status import OneLockCharm, check, one_lock_spec


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def test_rolling_status_of_the_demo_charm_is_one_hook_without_relation_writes():
    outcome = check(demo_spec(), units=5, queued=2)
    assert outcome["problems"] == []
    leader = outcome["answers"][1]["results"]
    assert leader["holders"] == outcome["holder"] and leader["paused"] == "false"


def test_rolling_status_of_the_one_lock_on_12_units_lists_the_queue_in_grant_order():
    outcome = check(one_lock_spec(), units=12, queued=5)
    assert outcome["problems"] == []
    order = outcome["order"]
    assert order != sorted(order, key=lambda unit: int(unit.split("/")[1]))  # not by number
    for answer in outcome["answers"]:
        assert answer["results"]["queue"] == ",".join(order)
        assert answer["hooks"] == 1 and answer["changed_bags"] == []


def test_rolling_status_on_the_etcd_backend_reads_etcd_and_writes_nothing():
    """On etcd the holder and the queue come from the lock's keys (a read), not the peer data."""
    outcome = check(one_lock_spec(), units=8, queued=3, backend="etcd")
    assert outcome["problems"] == []
    assert outcome["roll_hooks"] == 4 + 1  # four restart actions, one granted hook: no peer write


class WritingCharm(OneLockCharm):
    """A `rolling-status` that also writes to its unit databag: the check must fail."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        framework.observe(self.on.rolling_status_action, self._on_rolling_status)

    def _on_rolling_status(self, event: ops.ActionEvent) -> None:
        relation = self.model.get_relation(rolling_status.PEER)
        assert relation is not None
        relation.data[self.unit]["asked"] = "yes"


def test_the_check_catches_a_rolling_status_that_writes_relation_data():
    base = one_lock_spec()
    spec = CharmSpec(WritingCharm, base.meta, base.actions, base.config)
    outcome = check(spec, units=5, queued=1)
    problems = "\n".join(outcome["problems"])
    assert "relation data written: ['unit bag of" in problems
    assert "hooks queued by the action" in problems  # the write wakes every other unit
