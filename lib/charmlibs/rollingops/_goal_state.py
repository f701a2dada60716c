"""Which peers Juju has removed, from the `goal-state` hook tool (for Juju 4).

On Juju 4 (juju/juju#23326) a removed unit stays in its peers' `relation.units` and nobody runs
relation-departed for it. goal-state lists the application's units that still exist (`dying`
while their removal runs); a unit it no longer lists is gone and runs no more hooks. Callers read
it only while a grant is outstanding, never in an idle hook.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterable

logger = logging.getLogger(__name__)


# Seconds goal-state may take: a hung tool must not hang the hook (it counts as unreadable).
_GOAL_STATE_TIMEOUT = 30.0


def removed_units(names: Iterable[str]) -> set[str]:
    """Those of `names` that goal-state no longer lists; empty when goal-state cannot be read."""
    try:
        out = subprocess.run(
            ["goal-state", "--format=json"],
            capture_output=True,
            text=True,
            check=True,
            timeout=_GOAL_STATE_TIMEOUT,
        ).stdout
        units = json.loads(out)["units"]
    except (
        OSError,
        subprocess.SubprocessError,
        ValueError,
        KeyError,
        TypeError,
        RecursionError,
    ) as error:
        logger.debug("goal-state unreadable (%s): no removed unit detected", error)
        return set()
    # Juju lists the calling unit for as long as it runs hooks: an answer without it (or with
    # no unit at all) is not goal-state, and would make every peer look removed.
    me = os.environ.get("JUJU_UNIT_NAME")
    if not isinstance(units, dict) or not units or (me and me not in units):
        logger.warning("goal-state does not list this unit (%s): answer ignored", me)
        return set()
    gone = {name for name in names if name not in units}
    if gone:
        logger.info("removed units still listed on the peer relation: %s", sorted(gone))
    return gone
