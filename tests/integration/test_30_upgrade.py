"""`upgrade` to a new workload version and back: one unit at a time, all end on the target."""

from __future__ import annotations

import logging
import re

from tests.integration import helpers
from tests.integration import journal_checks as jc

logger = logging.getLogger(__name__)
NEW_VERSION = "1.1.0"  # in src/upgrade.py's WORKLOAD_RELEASES; 1.0.0 <-> 1.1.0 both ways


def upgrade_to(deployment: helpers.Deployment, version: str) -> None:
    units = deployment.units()
    offset = len(deployment.journal())
    task = deployment.juju.run(deployment.leader(), "upgrade", {"version": version})
    assert task.results.get("target-version") == version, task.results

    intervals = deployment.wait_for_round(offset, operation="upgrade", engine=None, units=units)
    logger.info("upgrade to %s:\n%s", version, jc.timeline(intervals))
    jc.assert_one_at_a_time(intervals, units=set(units), skew=deployment.skew, check_tokens=False)

    order = re.search(r"order ([\w/, -]+)", task.results.get("message", ""))
    if order:  # the action announces the stack order; the journal must follow it
        announced = [name.strip() for name in order.group(1).split(",")]
        ran = [i.unit for i in sorted(intervals, key=lambda i: i.start)]
        assert ran == [u for u in announced if u in ran], (announced, ran)

    helpers.wait_until(
        lambda: set(deployment.served_versions().values()) == {version},
        timeout=helpers.ROUND_TIMEOUT,
        what=f"every unit serving {version}",
    )
    status = deployment.juju.status()
    for unit in units:
        assert status.apps[helpers.APP].units[unit].workload_status.current == "active"


def test_upgrade_and_roll_back_one_unit_at_a_time(three_units: helpers.Deployment):
    before = set(three_units.served_versions().values())
    assert len(before) == 1, before
    (previous,) = before
    assert previous is not None, "the demo service does not answer /version"
    assert previous != NEW_VERSION
    upgrade_to(three_units, NEW_VERSION)
    upgrade_to(three_units, previous)
