"""Rolls that lose something on the way still finish, with nothing lost or doubled.

- the unit holding the lock is removed mid-restart (each engine): the others still restart;
- the etcd relation is removed mid-roll (rollingops): it falls back to the peer relation;
- the leader is removed mid-roll (each engine): the new leader sees the roll through.
Each test starts from three units with the share mounted (units removed before are re-added).

On Juju 4 a removed unit stays in its peers' relation and they get no relation-departed
(juju/juju#23326, docs/juju-rules.md): the libraries then free what it held from goal-state, at
the leader's next hook (at the latest its next update-status, 5 min by default). So after a
removal each test also runs a second round on the survivors: a grant, a request or a stack entry
left to the removed unit would block it.
"""

from __future__ import annotations

import logging

import pytest

from tests.integration import helpers
from tests.integration import journal_checks as jc

logger = logging.getLogger(__name__)
LONG_DELAY = 30  # long enough to act while a unit holds the lock


def check_next_round(deployment, engine, survivors, removed):
    """Every survivor restarts again, one at a time: nothing is left to the removed unit."""
    offset = len(deployment.journal())
    deployment.restart_all(survivors, engine=engine, delay=1)
    check_round(deployment, offset, engine, survivors, removed)


def check_round(deployment, offset, engine, survivors, removed, *, check_tokens=True):
    intervals = deployment.wait_for_round(
        offset, operation="restart", engine=engine, units=survivors
    )
    logger.info("%s restarts:\n%s", engine, jc.timeline(intervals))
    jc.assert_one_at_a_time(
        intervals,
        units=set(survivors),
        may_be_missing=set(removed),
        skew=deployment.skew,
        check_tokens=check_tokens,
    )


@pytest.mark.parametrize("engine", helpers.ENGINES)
def test_holder_removed_mid_restart(three_units: helpers.Deployment, engine: str):
    deployment = three_units
    units = deployment.units()
    offset = len(deployment.journal())
    baseline = deployment.pids()
    deployment.restart_all(units, engine=engine, delay=LONG_DELAY)

    holder = deployment.find_holder(offset, baseline, timeout=helpers.ROUND_TIMEOUT)
    deployment.remove_unit(holder)
    survivors = [unit for unit in units if unit != holder]
    check_round(deployment, offset, engine, survivors, [holder])
    check_next_round(deployment, engine, survivors, [holder])


def test_etcd_relation_removed_mid_roll(three_units: helpers.Deployment):
    deployment = three_units
    assert deployment.related(f"{helpers.APP}:etcd", helpers.ETCD)
    units = deployment.units()
    offset = len(deployment.journal())
    deployment.restart_all(units, engine="rollingops", delay=LONG_DELAY)

    helpers.wait_until(
        lambda: deployment.journal()[offset:],
        timeout=helpers.ROUND_TIMEOUT,
        what="a first restart",
    )
    deployment.juju.remove_relation(f"{helpers.APP}:etcd", f"{helpers.ETCD}:etcd-client")
    # etcd tokens (revisions) and peer tokens (a counter) are not comparable across the switch.
    check_round(deployment, offset, "rollingops", units, [], check_tokens=False)

    deployment.relate(f"{helpers.APP}:etcd", f"{helpers.ETCD}:etcd-client")
    deployment.settle()


@pytest.mark.parametrize("engine", helpers.ENGINES)
def test_leader_removed_mid_roll(three_units: helpers.Deployment, engine: str):
    deployment = three_units
    units = deployment.units()
    leader = deployment.leader()
    offset = len(deployment.journal())
    deployment.restart_all(units, engine=engine, delay=LONG_DELAY)

    helpers.wait_until(
        lambda: deployment.journal()[offset:],
        timeout=helpers.ROUND_TIMEOUT,
        what="a first restart",
    )
    deployment.remove_unit(leader)
    survivors = [unit for unit in units if unit != leader]
    check_round(deployment, offset, engine, survivors, [leader])
    assert deployment.leader() in survivors
    check_next_round(deployment, engine, survivors, [leader])
