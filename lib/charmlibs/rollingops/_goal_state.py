"""Which peers Juju has removed, from the `goal-state` hook tool (for Juju 4).

On Juju 4 (juju/juju#23326) a removed unit stays in its peers' `relation.units` and nobody runs
relation-departed for it. goal-state lists the application's units that still exist (`dying`
while their removal runs); a unit it no longer lists is gone and runs no more hooks. Callers read
it only while a grant is outstanding, never in an idle hook.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterable

logger = logging.getLogger(__name__)


def removed_units(names: Iterable[str]) -> set[str]:
    """Those of `names` that goal-state no longer lists; empty when goal-state cannot be read."""
    try:
        out = subprocess.run(
            ["goal-state", "--format=json"], capture_output=True, text=True, check=True
        ).stdout
        units = json.loads(out)["units"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as error:
        logger.debug("goal-state unreadable (%s): no removed unit detected", error)
        return set()
    if not isinstance(units, dict):
        return set()
    gone = {name for name in names if name not in units}
    if gone:
        logger.info("removed units still listed on the peer relation: %s", sorted(gone))
    return gone
