"""The `coordinator` and `coordinator-up-to-2` engines of the simulator (see engines.py).

Both drive the demo charm's `restart engine=coordinator` (charms.coordinated_ops.v0.coordinator
on the peer relation `coordinator`):

- `coordinator`: the charm as shipped, a `Serial` coordinator (one unit at a time, FIFO);
- `coordinator-up-to-2`: the same charm with the N-holder policy of the library's docstring
  (N = 2) plugged into its engine, checked with k = 2 (never more than two units inside).

A unit "holds the grant" (I2, I3) when the leader's grant for it in the app databag equals its
current request in its own databag: string equality of the request timestamp, exactly the
library's `granted()` rule. Malformed JSON counts as no grant.
"""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

from charms.coordinated_ops.v0.coordinator import Serial

from jujusim.runner import CharmSpec
from jujusim.truth import Bags

from .fakes import ROOT

PEER = "coordinator"
KEY = "coordinator"
LOCK = "restart"
N_HOLDERS = 2


def _json(raw: str | None) -> Any:
    try:
        return json.loads(raw or "{}")
    except ValueError:
        return {}


def holds_grant(bags: Bags, unit: str) -> bool:
    """The app bag grants `unit` the `restart` lock with exactly its current request."""
    requests = _json(bags.unit(PEER, unit).get(KEY))
    grants = _json(bags.app(PEER).get(KEY))
    if not isinstance(requests, dict) or not isinstance(grants, dict):
        return False
    mine = grants.get(unit)
    request = requests.get(LOCK)
    return request is not None and isinstance(mine, dict) and mine.get(LOCK) == request


class UpToTwo(Serial):
    """The library docstring's N-holder policy for `restart`, N = 2."""

    def grant_restart(self, lock: str, unit: str, granted: set[str], queue: list[str]) -> bool:
        free = N_HOLDERS - len(granted)
        return free > 0 and unit in queue[:free]


def up_to_two_spec() -> CharmSpec:
    """The demo charm whose coordinator engine uses `UpToTwo` instead of `Serial`."""
    import charm as charm_module  # src/ is on sys.path (tests/conftest.py, tox)
    import restart.policy as policy_module
    from restart.coordinator import CoordinatorEngine

    class UpToTwoEngine(CoordinatorEngine):
        coordinator_class = UpToTwo

    class UpToTwoCharm(charm_module.CoordinatedOpsCharm):
        def __init__(self, framework: Any):
            # Restarts builds its engines by name; swap in the N-holder engine for this class.
            with mock.patch.object(policy_module, "CoordinatorEngine", UpToTwoEngine):
                super().__init__(framework)

    return CharmSpec.from_dir(UpToTwoCharm, ROOT)
