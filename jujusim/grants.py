"""Ready-made "does this unit hold the grant?" checks, one per lock library of this project.

Each function returns a `HoldsGrant`: `(bags, unit) -> bool`, read from relation data only (the
wire format each library documents). `check_charm` and `Recorder` use it twice: on the entering
unit's own view (it must see its grant before it works: I2) and on the truth after quiescence (no
removed unit may still hold a grant: I3). Pass the name of *your* peer relation.

- `rolling_ops_v0(relation)`: `charms.rolling_ops.v0.rollingops`: the leader's app-bag key
  `<ops.model.Unit app/N>` says `granted`.
- `rollingops_peer(relation)`: `charmlibs.rollingops` on its peer backend: the app-bag key
  `rollingops-grant` is JSON naming the unit. On its etcd backend the lock is a key in etcd,
  which no relation shows: there is no relation-data check for it.
- `coordinator(lock, relation, key)`: `charms.coordinated_ops.v0.coordinator`: the app-bag grants
  map (`{unit: {lock: ts}}` under `key`) equals the unit's own current request for `lock`.
- `upgrade(relation)`: `charms.data_platform_libs.v0.upgrade`: the unit says `upgrading` and is
  on top of the app bag's `upgrade-stack`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .truth import Bags

HoldsGrant = Callable[[Bags, str], bool]


def _json(raw: str | None) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def rolling_ops_v0(relation: str = "restart") -> HoldsGrant:
    """`charms.rolling_ops.v0.rollingops` on peer relation `relation`."""

    def holds(bags: Bags, unit: str) -> bool:
        return bags.app(relation).get(f"<ops.model.Unit {unit}>") == "granted"

    return holds


def rollingops_peer(relation: str = "restart") -> HoldsGrant:
    """`charmlibs.rollingops` on its peer backend, peer relation `relation`."""

    def holds(bags: Bags, unit: str) -> bool:
        grant = _json(bags.app(relation).get("rollingops-grant"))
        return isinstance(grant, dict) and grant.get("unit") == unit

    return holds


def coordinator(
    lock: str = "restart", relation: str = "coordinator", key: str = "coordinator"
) -> HoldsGrant:
    """`charms.coordinated_ops.v0.coordinator` lock `lock` (databag key `key`) on `relation`."""

    def holds(bags: Bags, unit: str) -> bool:
        requests = _json(bags.unit(relation, unit).get(key))
        grants = _json(bags.app(relation).get(key))
        if not isinstance(requests, dict) or not isinstance(grants, dict):
            return False
        mine = grants.get(unit)
        request = requests.get(lock)
        return request is not None and isinstance(mine, dict) and mine.get(lock) == request

    return holds


def upgrade(relation: str = "upgrade") -> HoldsGrant:
    """`charms.data_platform_libs.v0.upgrade` on peer relation `relation`."""

    def holds(bags: Bags, unit: str) -> bool:
        stack = _json(bags.app(relation).get("upgrade-stack"))
        if not isinstance(stack, list) or not stack:
            return False
        number = unit.rsplit("/", 1)[1]
        on_top = str(stack[-1]) == number
        return on_top and bags.unit(relation, unit).get("state") == "upgrading"

    return holds
