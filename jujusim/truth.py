"""Juju's truth, kept outside Scenario: what the controller and the unit agents know.

Scenario runs one unit for one event. Everything that outlives a hook or spans units lives here:
relation databags with change versions, who has joined whom, the leader, secrets, and each unit's
stored state, deferred events, status, queue and seen-versions (docs/juju-rules.md, "the truth").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ops import testing

APP = "app"  # writer key prefix for application-level bags: ("app", name)


def unit_id(unit: str) -> int:
    """'coordinated-ops/3' -> 3."""
    return int(unit.rsplit("/", 1)[1])


def app_of(unit: str) -> str:
    """'coordinated-ops/3' -> 'coordinated-ops'."""
    return unit.rsplit("/", 1)[0]


@dataclasses.dataclass
class Bag:
    """One relation databag and its version, bumped only when its content changes.

    Rule: unchanged content is no change.
    """

    data: dict[str, str] = dataclasses.field(default_factory=dict)
    version: int = 0

    def apply(self, changes: Mapping[str, str | None]) -> bool:
        """Apply key-level writes (None deletes); bump the version if the content changed."""
        before = dict(self.data)
        for key, value in changes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        if self.data != before:
            self.version += 1
            return True
        return False


@dataclasses.dataclass
class RelationTruth:
    """A relation: peer (one app) or cross-app (two apps, one endpoint each)."""

    id: int
    endpoints: dict[str, str]  # app -> its endpoint name
    interface: str
    app_bags: dict[str, Bag] = dataclasses.field(default_factory=dict)
    unit_bags: dict[str, Bag] = dataclasses.field(default_factory=dict)
    # unit -> the remote units it has seen join (its `relation-list`), in Juju's eyes.
    views: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    # unit -> units it has been told about (a joined is queued or done, no departed yet): routing.
    known: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    attached: set[str] = dataclasses.field(default_factory=set)  # ran (or runs) relation-created
    broken: set[str] = dataclasses.field(default_factory=set)  # ran relation-broken (cross only)

    @property
    def is_peer(self) -> bool:
        """A peer relation has one application (one endpoint)."""
        return len(self.endpoints) == 1

    def other_app(self, app: str) -> str:
        """The remote application of a cross-app relation; the app itself for a peer relation."""
        others = [a for a in self.endpoints if a != app]
        return others[0] if others else app


@dataclasses.dataclass
class Secret:
    """An application secret in the controller's registry (rule: secrets)."""

    id: str
    owner_app: str
    revisions: list[dict[str, str]]
    label: str | None = None
    tracked: dict[str, int] = dataclasses.field(default_factory=dict)  # unit -> revision (1-based)
    # relation id -> applications granted access through that relation (`secret-grant`)
    grants: dict[int, set[str]] = dataclasses.field(default_factory=dict)

    @property
    def latest(self) -> int:
        """The latest revision number (revisions count from 1)."""
        return len(self.revisions)


@dataclasses.dataclass
class UnitTruth:
    """One unit: its agent-side state and its per-unit Scenario Context."""

    name: str
    address: str
    ctx: Any  # testing.Context, built once per unit (speed) and reused across hooks
    charm: Any  # runner.CharmSpec in use (swapped at upgrade-charm during a refresh)
    stored_states: frozenset[testing.StoredState] = frozenset()
    deferred: list[testing.DeferredEvent] = dataclasses.field(default_factory=list)
    unit_status: Any = dataclasses.field(default_factory=testing.UnknownStatus)
    workload_version: str = ""
    error: str | None = None  # 'hook failed: "<event>"' while the unit is in error
    seen: dict[tuple[int, str], int] = dataclasses.field(default_factory=dict)
    departing: bool = False
    departing_seq: int = 0  # sequence number when its removal began (rule: departing unit's data)
    removed: bool = False
    hooks: int = 0

    @property
    def id(self) -> int:
        """The unit number (`app/3` -> 3)."""
        return unit_id(self.name)

    @property
    def app(self) -> str:
        """The unit's application name."""
        return app_of(self.name)

    @property
    def displayed_status(self) -> str:
        """What `juju status` shows: the error while in error, else the workload status."""
        if self.error:
            return f"error: {self.error}"
        return f"{self.unit_status.name}: {self.unit_status.message}"


@dataclasses.dataclass
class AppTruth:
    """One application."""

    name: str
    index: int  # for default addresses 10.<index>.0.<unit id + 1> (rule: Juju's own unit-bag keys)
    charm: Any  # runner.CharmSpec
    config: dict[str, Any]
    units: list[str] = dataclasses.field(default_factory=list)  # members, in id order
    leader: str | None = None
    next_id: int = 0
    app_status: Any = dataclasses.field(default_factory=testing.UnknownStatus)


class Bags:
    """A read-only view of relation data for lock predicates: the truth, or one unit's view.

    `holds_grant` predicates read through this so they work on the controller's committed truth
    and on a running hook's own view (its snapshot plus its uncommitted writes).
    """

    def __init__(self, app_bags: dict[str, dict[str, str]], unit_bags: dict[str, dict]):
        self._app = app_bags  # endpoint -> app bag
        self._units = unit_bags  # endpoint -> {unit: bag}

    def app(self, endpoint: str) -> Mapping[str, str]:
        """The application bag of the relation on `endpoint` (empty if there is none)."""
        return self._app.get(endpoint, {})

    def unit(self, endpoint: str, unit: str) -> Mapping[str, str]:
        """A unit's bag in the relation on `endpoint` (empty if unknown)."""
        return self._units.get(endpoint, {}).get(unit, {})

    def units(self, endpoint: str) -> list[str]:
        """Units with a bag in the relation on `endpoint`, in id order."""
        return sorted(self._units.get(endpoint, {}), key=unit_id)

    @classmethod
    def from_truth(cls, relations: Mapping[int, RelationTruth], app: str) -> Bags:
        """The committed truth of `app`'s relations."""
        app_bags: dict[str, dict[str, str]] = {}
        unit_bags: dict[str, dict] = {}
        for rel in relations.values():
            if app not in rel.endpoints:
                continue
            endpoint = rel.endpoints[app]
            app_bags[endpoint] = dict(rel.app_bags[app].data)
            unit_bags[endpoint] = {u: dict(b.data) for u, b in rel.unit_bags.items()}
        return cls(app_bags, unit_bags)

    @classmethod
    def from_state(cls, state: testing.State, unit: str) -> Bags:
        """One unit's view (live during a hook: its snapshot plus its own writes so far)."""
        app = app_of(unit)
        app_bags: dict[str, dict[str, str]] = {}
        unit_bags: dict[str, dict] = {}
        for rel in state.relations:
            app_bags[rel.endpoint] = dict(rel.local_app_data)
            bags = {unit: dict(rel.local_unit_data)}
            if isinstance(rel, testing.PeerRelation):
                bags.update({f"{app}/{i}": dict(d) for i, d in rel.peers_data.items()})
            unit_bags[rel.endpoint] = bags
        return cls(app_bags, unit_bags)
