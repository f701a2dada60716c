"""`restart` on every unit, for each engine: every unit restarts exactly once, never two at once.

The judge is the operation journal on the NFS share (read on the server), where each unit appended
the interval of its restart; tests/integration/journal_checks.py checks the intervals and prints a
timeline when they are wrong. The engines come from actions.yaml, so new engines are tested too.

With the `rollingops` engine and charmed-etcd related, every restart must be served by the etcd
backend: the action result names the backend the request was queued on, and each journal entry
the backend that granted it. A restart that silently ran on the peer backend fails the test.
"""

from __future__ import annotations

import datetime
import logging

import pytest

from tests.integration import helpers
from tests.integration import journal_checks as jc

logger = logging.getLogger(__name__)
DELAY = 5  # seconds each unit keeps the lock after it is healthy: overlaps would be obvious


@pytest.mark.parametrize("engine", helpers.ENGINES)
def test_restart_runs_one_unit_at_a_time(three_units: helpers.Deployment, engine: str):
    deployment = three_units
    units = deployment.units()
    offset = len(deployment.journal())
    pids = deployment.pids()

    tasks = deployment.restart_all(units, engine=engine, delay=DELAY)
    assert all(task.results.get("engine") == engine for task in tasks), [t.results for t in tasks]

    intervals = deployment.wait_for_round(offset, operation="restart", engine=engine, units=units)
    logger.info("%s restarts:\n%s", engine, jc.timeline(intervals))
    jc.assert_one_at_a_time(intervals, units=set(units), skew=deployment.skew)
    assert all(
        interval.end - interval.start >= datetime.timedelta(seconds=DELAY)
        for interval in intervals
    ), "an interval is shorter than the requested delay"
    after = deployment.pids()
    for unit in units:
        assert after[unit] is not None and after[unit] != pids[unit], (unit, pids, after)
    if engine == "rollingops" and deployment.related(f"{helpers.APP}:etcd", helpers.ETCD):
        queued_on = {
            unit: task.results.get("message", "") for unit, task in zip(units, tasks, strict=True)
        }
        assert all("(etcd backend)" in message for message in queued_on.values()), queued_on
        served_by = deployment.backends(offset, operation="restart", engine=engine)
        assert served_by and set(served_by) == {"etcd"}, served_by
