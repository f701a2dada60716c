# Copyright 2025 coordinated-ops contributors
# See LICENSE file for licensing details.

r"""In-place upgrades of a charm's workload, one unit at a time.

This library coordinates `juju refresh` (and any charm-driven workload upgrade) across the units of
an application through a peer relation. It is wire-compatible with
`charms.data_platform_libs.v0.upgrade` (pydantic 1): the same public names, peer data, actions and
status texts, so units running either library can be refreshed into each other.

How it works
------------
Every unit publishes its `state` in its unit bag of the peer relation (`idle`, `ready`,
`upgrading`, `completed`, `failed`, `recovery`). The leader keeps the application's
`upgrade-stack` (a JSON list of unit numbers; the LAST entry, the "top", upgrades next) and the
`dependencies` (the versions the application runs). A unit upgrades only when it is the top of the
stack, every unit is at least `ready` and no other unit is `upgrading`; when it is done it reports
`completed` and the leader pops it, which makes the next unit the top. A failed unit stops the
rollout until the operator rolls back.

Use it in a machine charm
-------------------------
`metadata.yaml`::

    peers:
      upgrade:
        interface: upgrade

`actions.yaml`: declare `pre-upgrade-check` (and `resume-upgrade` on Kubernetes).

`src/charm.py`::

    from charms.data_platform_libs.v0.upgrade import (
        BaseModel, ClusterNotReadyError, DataUpgrade, DependencyModel,
    )

    DEPENDENCIES = {
        "my_charm": {"dependencies": {}, "name": "my-charm", "upgrade_supported": ">=1",
                     "version": "2"},
    }

    class MyDependencies(BaseModel):
        my_charm: DependencyModel

    class MyUpgrade(DataUpgrade):
        def pre_upgrade_check(self) -> None:
            if not workload_is_healthy():
                raise ClusterNotReadyError("cluster unhealthy", cause="a unit is down")

        def build_upgrade_stack(self) -> list[int]:
            # The last entry upgrades first; keep the leader at index 0 (it upgrades last).
            others = sorted(int(u.name.split("/")[1]) for u in self.peer_relation.units)
            return [int(self.charm.unit.name.split("/")[1]), *others]

        def log_rollback_instructions(self) -> None:
            logger.error("Upgrade failed: run pre-upgrade-check, then juju refresh back.")

        def _on_upgrade_granted(self, event) -> None:
            upgrade_my_workload()
            if healthy():
                self.set_unit_completed()   # the library wakes itself: nothing else to call
            else:
                self.set_unit_failed("health check failed")

    # in MyCharm.__init__:
    self.upgrade = MyUpgrade(self, MyDependencies(**DEPENDENCIES))

Operator flow: `juju run app/leader pre-upgrade-check`, then `juju refresh app`. Each unit runs
`upgrade-charm` and reports `ready`; the top of the stack upgrades, then the next. After a failure:
`juju run app/leader pre-upgrade-check` (prepares the rollback) and `juju refresh` back.

A charm can also drive a rollout without a refresh (e.g. a workload version bump): on the leader
call `prepare_upgrade()`, then have every unit call `set_unit_ready()`.

Versions are Poetry-style constraints (`^1.2`, `~1.2.3`, `1.*`, `>=1,<2`, `^1 || ^2`), checked
with `verify_requirements(version, requirement)`.

On Kubernetes
-------------
Pass `substrate="k8s"` and override `_set_rolling_update_partition(partition)`. The flow is the
original library's: `pre-upgrade-check` writes every unit number, sorted; `juju refresh` restarts
the highest ordinal first, whose `upgrade-charm` checks versions and marks it `upgrading`; the
charm calls `set_unit_completed()` once the pod is healthy; the operator checks that unit and runs
`resume-upgrade`; from then on each finished unit lets the StatefulSet roll the next lower one.

Compatibility with the library this replaces (data-platform-libs v0, LIBPATCH 19)
-----------------------------------------------------------------------------------
The same:

- import path, public names, exceptions (`str()` format), events, `STATES`;
- peer data: unit `state`, app `upgrade-stack` and `dependencies`, byte for byte;
- actions, their failure messages and results; status texts;
- the methods a charm overrides and their signatures: `pre_upgrade_check()`,
  `log_rollback_instructions()`, `build_upgrade_stack()`, `_on_upgrade_granted(event)`,
  `_set_rolling_update_partition(partition)`, and, if a charm overrides them,
  `set_unit_failed()`, `set_unit_completed()`, `on_upgrade_changed(event)`: the library calls
  each with the original's arguments only (but see `on_upgrade_changed` below);
- Kubernetes: the whole flow above (stack, `upgrade-charm`, partition, `resume-upgrade` only when
  the stack holds every unit but the first upgraded), finalisation and grant conditions as on VMs;
- every action reads the relation afresh (nothing cached by an earlier handler).

Different on purpose:

- pydantic 2 (the original needs pydantic 1); `BaseModel` is pydantic 2's;
- never defers (deferred grants could reach two units at once); it reconciles from the relation
  data instead, also on relation-joined/departed, leader-elected, config-changed, update-status;
- VMs: a unit alone in its view, or a leader in recovery on top, reconciles instead of emitting
  the grant directly, so the grant still needs the top of the stack and a ready cluster;
- VMs: the library wakes itself after its own writes (Juju does not tell a unit about them), so a
  grant handler need not call `on_upgrade_changed`; calling it is harmless;
- VMs: when it wakes itself, `on_upgrade_changed` gets `event=None` (no relation event is at
  hand); an override must not use `event.relation` or `event.defer()` unguarded;
- VMs: a refresh without `pre-upgrade-check` waits (Blocked) and resumes once the stack exists;
- a rollback starts only when every unit is ready (a unit still `completed` is not popped);
- a departed unit is dropped from the stack (the original raised KeyError); on VMs a unit added
  mid-rollout joins the bottom of the stack;
- a removed unit is dropped on Juju 4 too, where no relation-departed comes (goal-state, below);
- absent or invalid `dependencies` skip the version check with a WARNING (was AttributeError);
- malformed peer data is logged and ignored, never raised;
- the leader calls `log_rollback_instructions()` once per new set of failed units;
- `set_unit_failed` also accepts a cause; failures the library detects show their cause in the
  Blocked status when the charm's `set_unit_failed()` left it empty;
- additive: `prepare_upgrade()`, `set_unit_ready()`, `in_progress()`, `quiet`, a model factory;
- config-changed and update-status read the relation only while the last reconcile saw a
  rollout (`quiet` is False): an idle unit reads nothing there.

Testing your charm with this library
------------------------------------
In Scenario (`ops.testing`) one `ctx.run` is one dispatch; feed each output State into the next.

- Set `planned_units` in your State. Scenario's default is 1, and once the peer relation has a
  remote unit the library reads "fewer planned units than units I see" as a removal under way:
  no unit starts its upgrade. Use `State(planned_units=1 + len(peer.peers_data), ...)`. On
  Kubernetes the highest ordinal (`planned_units - 1`) upgrades first, so it matters there too.
- Drive a grant: the `pre-upgrade-check` action on the leader writes `upgrade-stack` and
  `upgrade_charm()` makes a unit `ready`. A unit whose State shows it on top of the stack (the
  last entry of `upgrade-stack` in the app bag), itself and every peer `ready`, runs
  `_on_upgrade_granted` in its peer `relation_changed`.
- Several units, interleavings and faults: `jujusim.check_charm` with
  `jujusim.grants.upgrade(relation)` (the repository's README has a 20-line test).

Juju 3.6 and 4
--------------

On Juju 3.6 a removed unit leaves the peer relation: the others run relation-departed and stop
listing it, so the leader drops it from the stack and nobody waits for its state. On Juju 4
(juju/juju#23326) a removed unit stays listed and nobody runs relation-departed. So while an
upgrade is in flight (a stack, or a peer not idle; never when idle) each unit reads the
`goal-state` hook tool once per dispatch and leaves out of `app_units` a listed peer that
goal-state no longer shows: the leader drops it from the stack, and its frozen state neither
blocks nor counts. A `dying` unit is still counted, and the pause while a unit is being removed
(fewer planned units than listed) holds until it is gone; the next hook (at the latest the next
update-status) carries on.

pydantic on demand
------------------
Importing pydantic costs about half as much as importing ops, in every hook. This module does not
import it: `BaseModel` and `DependencyModel` are built on first access (a PEP 562 module
`__getattr__`), so `from charms.data_platform_libs.v0.upgrade import DependencyModel` works as
always and imports pydantic at that point. To keep pydantic out of the hooks that validate
nothing, a charm imports those two names only where it builds its model, and passes
`DataUpgrade` a function that returns the model instead of the model: it is called on the first
use of `dependency_model` (relation-created, leader-elected, version checks, the end of a rollout).

    def dependencies() -> MyDependencies:  # in a module that imports BaseModel, DependencyModel
        return MyDependencies(**DEPENDENCIES)

    self.upgrade = MyUpgrade(self, dependencies)

The library never defers, sleeps, shells out or touches the workload. It sets the unit status for
the states it owns (and the app status only through `log_rollback_instructions`, which is yours).

Bad relation data, one rule: a peer value another unit wrote (`state`, `upgrade-stack`,
`dependencies`) that does not parse, is out of range or is too big is logged, listed in
`data_errors` (for the charm's status) and ignored (read as absent); it never raises in a hook.
Bounds, checked before decoding: JSON of at most 16 KiB nested at most 8 deep (no NaN or Infinity),
unit numbers in 0..2**31-1; messages quote at most 60 characters of a bad value.

Identity
--------
This file is a fork, in behaviour, of the Charmhub library `charms.data_platform_libs.v0.upgrade`
(canonical/data-platform-libs, LIBAPI 0): it follows that library's LIBPATCH 19 (its public API,
peer data, actions and status texts; pydantic 2 instead of 1) and is otherwise our own code. Its
`LIBID` differs from the original's, so Charmhub treats it as another library: `charmcraft
fetch-lib` of the original does not overwrite this file (never list it under `charm-libs:`), and
Charmhub would refuse a `publish-lib` of it under the original's name. `LIBPATCH` is our own
counter from 1, one step per change of behaviour here; it is lower than the original's 19 and is
not comparable with it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, cast

from ops import (
    ActionEvent,
    ActiveStatus,
    BlockedStatus,
    CharmBase,
    CharmEvents,
    EventBase,
    EventSource,
    MaintenanceStatus,
    Object,
    Relation,
    RelationDepartedEvent,
    StoredState,
    Unit,
    WaitingStatus,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

# The unique Charmhub library identifier, never change it
LIBID = "5b8f3a0c2e7d4c19a6f1d2e3b4c5a697"

# Increment this major API version when introducing breaking changes
LIBAPI = 0

# Increment this PATCH version before using `charmcraft publish-lib` or reset
# to 0 if you are raising the major API version
LIBPATCH = 10

PYDEPS = ["pydantic>=2,<3", "poetry-core"]

__all__ = [
    "BaseModel",
    "ClusterNotReadyError",
    "DataUpgrade",
    "DependencyError",
    "DependencyModel",
    "KubernetesClientError",
    "UpgradeError",
    "UpgradeEvents",
    "UpgradeFinishedEvent",
    "UpgradeGrantedEvent",
    "VersionError",
    "verify_requirements",
]

logger = logging.getLogger(__name__)

WAITING_TEXT = "other units upgrading first..."

# Bounds on peer values another unit wrote (see "Bad relation data" in the module docstring).
_MAX_JSON_CHARS = 16 * 1024  # also bounds the work of parsing version constraints
_MAX_JSON_DEPTH = 8
_MAX_UNIT_NUMBER = (1 << 31) - 1
# A JSON string (an unterminated one runs to the end, so the scan stays linear) or a bracket.
_JSON_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _short(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to about `limit` characters: bad data is never echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _is_dict(value: object) -> TypeGuard[dict[Any, Any]]:
    """Whether `value` is a dict (of any keys and values)."""
    return isinstance(value, dict)


def _is_unit_number_list(value: object) -> TypeGuard[list[int]]:
    """Whether a decoded JSON value is a list of unit numbers (ints, not bools, in range)."""
    return isinstance(value, list) and all(
        type(n) is int and 0 <= n <= _MAX_UNIT_NUMBER for n in cast("list[object]", value)
    )


def _load_json(raw: str) -> Any:
    """`json.loads` for relation data: ValueError when too big or too deep, checked first.

    The decoder recurses once per nesting level, so depth is counted before it runs.
    """
    if len(raw) > _MAX_JSON_CHARS:
        raise ValueError(f"more than {_MAX_JSON_CHARS} characters")
    if raw.count("[") + raw.count("{") > _MAX_JSON_DEPTH:  # else it cannot be too deep
        depth = 0
        for match in _JSON_STRING_OR_BRACKET.finditer(raw):
            token = match.group()
            if token in ("[", "{"):
                depth += 1
                if depth > _MAX_JSON_DEPTH:
                    raise ValueError(f"nested deeper than {_MAX_JSON_DEPTH} levels")
            elif token in ("]", "}"):
                depth -= 1
    return json.loads(raw, parse_constant=_refuse_constant)


# --- versions ------------------------------------------------------------------------------------


# Seconds goal-state may take: a hung tool must not hang the hook (it counts as unreadable).
_GOAL_STATE_TIMEOUT = 30.0


def _removed_units(names: list[str]) -> set[str]:
    """Those of `names` that goal-state no longer lists: removed units (empty if unreadable)."""
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
    ) as e:
        logger.debug("goal-state unreadable (%s): no removed unit detected", e)
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


def verify_requirements(version: str, requirement: str) -> bool:
    """Return True iff the Poetry constraint `requirement` allows `version`.

    `verify_requirements("1.3.4", "^1.2.3")` is True, `verify_requirements("2.0.0", "^1.2.3")`
    False. Unparsable input raises `ValueError`.
    """
    # Imported here, not at the top: most hooks check no version, and poetry-core is slow to load.
    from poetry.core.constraints.version import Version, parse_constraint

    return parse_constraint(requirement).allows(Version.parse(version))


# --- the pydantic names, built on first access (see "pydantic on demand") ------------------------


def __getattr__(name: str) -> Any:
    """PEP 562: `BaseModel` and `DependencyModel` are built when first looked up."""
    if name in ("BaseModel", "DependencyModel"):
        _define_models()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_models() -> None:
    """Import pydantic and define `BaseModel` and `DependencyModel`, once."""
    global BaseModel, DependencyModel
    if "DependencyModel" in globals():
        return
    from pydantic import BaseModel, ConfigDict, field_validator, model_validator

    class DependencyModel(BaseModel):
        """One versioned component of an application.

        `version` is what this charm revision runs; `upgrade_supported` is the constraint the
        version being upgraded FROM must satisfy; `dependencies` maps related applications to the
        constraint their version must satisfy.
        """

        # The validator is built when first used, not at import: most hooks never validate one.
        model_config = ConfigDict(defer_build=True)

        dependencies: dict[str, str]
        name: str
        upgrade_supported: str
        version: str

        @field_validator("dependencies", "upgrade_supported")
        @classmethod
        def dependencies_validator(cls, value: Any) -> Any:
            """Every constraint must parse as a Poetry constraint."""
            from poetry.core.constraints.version import parse_constraint  # see verify_requirements

            constraints = value.values() if _is_dict(value) else [value]
            for constraint in constraints:
                try:
                    parse_constraint(constraint)
                except ValueError as e:
                    raise ValueError(f"invalid version constraint {constraint!r}: {e}") from None
                if not str(constraint).strip():
                    raise ValueError("empty version constraint")
            return value

        @model_validator(mode="after")
        def version_upgrade_supported_validator(self) -> DependencyModel:
            """`version` must satisfy `upgrade_supported`."""
            try:
                allowed = verify_requirements(self.version, self.upgrade_supported)
            except ValueError as e:
                raise ValueError(
                    f"invalid version {self.version!r} for {self.name}: {e}"
                ) from None
            if not allowed:
                raise ValueError(
                    f"upgrade_supported value {self.upgrade_supported} greater than version value "
                    f"{self.version} for {self.name}."
                )
            return self

        def can_upgrade(self, dependency: DependencyModel) -> bool:
            """True iff this (old) version satisfies `dependency.upgrade_supported` (new)."""
            return verify_requirements(self.version, dependency.upgrade_supported)

    DependencyModel.__qualname__ = "DependencyModel"  # as if defined at module level


# --- errors --------------------------------------------------------------------------------------


class UpgradeError(Exception):
    """Base class of the upgrade errors: a `message`, its `cause` and a `resolution`."""

    def __init__(self, message: str, cause: str | None, resolution: str | None):
        super().__init__(message)
        self.message = message
        self.cause = cause or ""
        self.resolution = resolution or ""

    def __repr__(self) -> str:
        return f"{type(self).__module__}.{type(self).__name__} - {self.__dict__!s}"

    def __str__(self) -> str:
        return repr(self)


class ClusterNotReadyError(UpgradeError):
    """The cluster is unhealthy or busy; raised by `pre_upgrade_check`."""

    def __init__(self, message: str, cause: str, resolution: str | None = None):
        super().__init__(message, cause=cause, resolution=resolution)


class KubernetesClientError(UpgradeError):
    """A Kubernetes API call failed."""

    def __init__(self, message: str, cause: str, resolution: str | None = None):
        super().__init__(message, cause=cause, resolution=resolution)


class VersionError(UpgradeError):
    """The deployed (old) version is not accepted by the new `upgrade_supported`."""

    def __init__(self, message: str, cause: str, resolution: str | None = None):
        super().__init__(message, cause=cause, resolution=resolution)


class DependencyError(UpgradeError):
    """A related application's version does not satisfy a dependency constraint."""

    def __init__(self, message: str, cause: str, resolution: str | None = None):
        super().__init__(message, cause=cause, resolution=resolution)


# --- events --------------------------------------------------------------------------------------


class UpgradeGrantedEvent(EventBase):
    """Emitted when this unit may upgrade now (it is the top of the stack)."""


class UpgradeFinishedEvent(EventBase):
    """Kubernetes: this unit finished its upgrade."""


class UpgradeEvents(CharmEvents):
    """The events of `DataUpgrade.on`."""

    upgrade_granted = EventSource(UpgradeGrantedEvent)
    upgrade_finished = EventSource(UpgradeFinishedEvent)


# --- the coordinator -----------------------------------------------------------------------------


def _unit_number(unit: Unit) -> int:
    return int(unit.name.split("/")[-1])


class DataUpgrade(Object, ABC):
    """Coordinates an in-place upgrade of every unit, one unit at a time (see module docstring)."""

    STATES = ["recovery", "failed", "idle", "ready", "upgrading", "completed"]

    on = UpgradeEvents()  # pyright: ignore[reportAssignmentType]
    _stored = StoredState()

    def __init__(
        self,
        charm: CharmBase,
        dependency_model: BaseModel | Callable[[], BaseModel],
        relation_name: str = "upgrade",
        substrate: Literal["vm", "k8s"] = "vm",
    ):
        super().__init__(charm, relation_name)
        self.charm = charm
        self._dependency_model = dependency_model
        self.relation_name = relation_name
        self.substrate = substrate
        # quiet: the last reconcile saw no rollout at all (see `quiet`); False = maybe one.
        self._stored.set_default(
            refresh_pending=False, rollback_reported=[], departing=False, quiet=False
        )
        self._upgrade_stack: list[int] | None = None
        self._departing: Unit | None = None
        self._removed: set[str] | None = None  # goal-state's answer, read once per dispatch
        self._reconciling = False
        self._again = False
        self._granted = False
        self._writes = 0
        self.data_errors: list[str] = []  # malformed peer data seen in this hook (for status)

        rel = charm.on[relation_name]
        self.framework.observe(rel.relation_created, self._on_upgrade_created)
        self.framework.observe(rel.relation_joined, self.on_upgrade_changed)
        self.framework.observe(rel.relation_changed, self.on_upgrade_changed)
        self.framework.observe(rel.relation_departed, self._on_upgrade_departed)
        self.framework.observe(charm.on.upgrade_charm, self._on_upgrade_charm)
        self.framework.observe(charm.on.config_changed, self._on_periodic)
        self.framework.observe(charm.on.update_status, self._on_periodic)
        self.framework.observe(charm.on.leader_elected, self._on_leader_elected)
        self.framework.observe(self.on.upgrade_granted, self._guard_upgrade_granted)
        self.framework.observe(self.on.upgrade_finished, self._on_upgrade_finished)
        for action, handler in (
            ("pre-upgrade-check", self._on_pre_upgrade_check_action),
            ("resume-upgrade", self._on_resume_upgrade_action),
        ):
            if action in charm.meta.actions:  # a dict lookup; on.events() reflects on every type
                self.framework.observe(charm.on[action].action, handler)
            else:
                logger.error("action %r is not declared in actions.yaml; not observed", action)

    # --- properties --------------------------------------------------------------------------

    @property
    def dependency_model(self) -> BaseModel:
        """The charm's dependency model; a function given instead is called on first use."""
        if callable(self._dependency_model):
            self._dependency_model = self._dependency_model()
        return self._dependency_model

    @dependency_model.setter
    def dependency_model(self, model: BaseModel) -> None:
        self._dependency_model = model

    @property
    def peer_relation(self) -> Relation | None:
        """The peer relation, or None before it exists."""
        return self.model.get_relation(self.relation_name)

    @property
    def app_units(self) -> set[Unit]:
        """Return this unit and its peers (minus a peer departing in this hook or removed)."""
        if not self.peer_relation:
            return set()
        units = {self.charm.unit, *self.peer_relation.units}
        if self._departing is not None:
            units.discard(self._departing)
        return {unit for unit in units if unit.name not in self._removed_peers(units)}

    def _removed_peers(self, units: set[Unit]) -> set[str]:
        """Peers Juju has removed but still lists (Juju 4, see "Juju 3.6 and 4").

        goal-state is read once per dispatch, and only while an upgrade is in flight (a stack,
        or a peer not idle): an idle hook reads nothing more.
        """
        if self._removed is not None:
            return self._removed
        others = [unit for unit in units if unit != self.charm.unit]
        if not (self.upgrade_stack or any(self._state_of(u) not in ("", "idle") for u in others)):
            return set()
        self._removed = _removed_units([unit.name for unit in others])
        return self._removed

    def _state_of(self, unit: Unit) -> str:
        relation = self.peer_relation
        if relation is None:
            return ""
        return relation.data[unit].get("state", "")

    @property
    def state(self) -> str | None:
        """Return this unit's `state`, or None."""
        if self.peer_relation is None:
            return None
        return self._state_of(self.charm.unit) or None

    @property
    def stored_dependencies(self) -> BaseModel | None:
        """The app's stored `dependencies` as the charm's model; None if absent or invalid."""
        relation = self.peer_relation
        if relation is None:
            return None
        raw = relation.data[self.charm.app].get("dependencies")
        if not raw:
            return None
        try:
            return type(self.dependency_model).model_validate(_load_json(raw))
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            first_line = str(e).partition("\n")[0]
            self._data_error(f"invalid dependencies data: {_short(first_line)}")
            return None

    @property
    def upgrade_stack(self) -> list[int] | None:
        """The app's `upgrade-stack` (a fresh copy), or None when absent, empty or invalid."""
        if self._upgrade_stack is None:
            relation = self.peer_relation
            raw = relation.data[self.charm.app].get("upgrade-stack", "") if relation else ""
            stack: list[int] = []
            if raw:
                try:
                    parsed = _load_json(raw)
                    if not _is_unit_number_list(parsed):
                        raise ValueError("not a list of unit numbers")
                    stack = parsed
                except ValueError as e:
                    self._data_error(f"invalid upgrade-stack data {_short(raw, 40)}: {e}")
            self._upgrade_stack = stack
        return list(self._upgrade_stack) or None

    @upgrade_stack.setter
    def upgrade_stack(self, stack: list[int]) -> None:
        relation = self.peer_relation
        if relation is None:
            return
        value = json.dumps(list(stack))
        if relation.data[self.charm.app].get("upgrade-stack") != value:
            relation.data[self.charm.app]["upgrade-stack"] = value
            self._writes += 1
            self._stored.quiet = False
        self._upgrade_stack = list(stack)

    @property
    def other_unit_states(self) -> list[str]:
        """The `state` of every peer (missing = "")."""
        return [self._state_of(u) for u in self.app_units if u != self.charm.unit]

    @property
    def unit_states(self) -> list[str]:
        """The `state` of every unit in `app_units` (missing = "")."""
        return [self._state_of(u) for u in self.app_units]

    @property
    def cluster_state(self) -> str | None:
        """The furthest-behind state; None when unknown or a state is missing or invalid."""
        states = self.unit_states
        if not states:
            return None
        for value in states:
            if value not in self.STATES:
                if value:
                    self._data_error(f"invalid unit state {_short(value)} in peer data")
                return None
        return min(states, key=self.STATES.index)

    @property
    def quiet(self) -> bool:
        """Whether no rollout is in flight, from stored state (no relation read).

        True when the last reconcile saw no stack, every unit idle and no malformed data, and
        no refresh is pending. Every write of another unit reaches this unit as a
        relation-changed, which reconciles and remembers again; this unit's own writes make it
        False. False means "maybe".
        """
        return bool(self._stored.quiet) and not self._stored.refresh_pending

    def _remember(self) -> None:
        """Store whether the relation, as read now, shows no rollout (see `quiet`)."""
        states = self.unit_states
        quiet = (
            not self.upgrade_stack
            and bool(states)
            and all(s in ("idle", "") for s in states)
            and not self.data_errors
        )
        if self._stored.quiet != quiet:
            self._stored.quiet = quiet

    @property
    def idle(self) -> bool:
        """True iff every unit is `idle`."""
        states = self.unit_states
        return bool(states) and all(s == "idle" for s in states)

    # --- override points ---------------------------------------------------------------------

    @abstractmethod
    def pre_upgrade_check(self) -> None:
        """Check the cluster can upgrade; raise `ClusterNotReadyError` if not."""

    @abstractmethod
    def log_rollback_instructions(self) -> None:
        """Tell the operator how to roll back (log and statuses). Must be idempotent."""

    def build_upgrade_stack(self) -> list[int]:
        """Return the unit numbers in upgrade order, LAST upgrades first (VM: override)."""
        if self.substrate == "k8s":
            return []
        raise NotImplementedError

    def _on_upgrade_granted(self, event: UpgradeGrantedEvent) -> None:
        """Upgrade this unit, then call `set_unit_completed()` or `set_unit_failed()`."""
        if self.substrate == "k8s":
            return
        raise NotImplementedError

    def _set_rolling_update_partition(self, partition: int) -> None:
        """Kubernetes: set the StatefulSet's rolling-update partition (override on k8s)."""
        if self.substrate == "k8s":
            raise NotImplementedError

    # --- writes ------------------------------------------------------------------------------

    def _data_error(self, reason: str) -> None:
        if reason not in self.data_errors:
            logger.error("upgrade relation: %s; ignoring it", reason)
            self.data_errors.append(reason)

    def _set_state(self, value: str) -> None:
        relation = self.peer_relation
        if relation is None:
            return
        if relation.data[self.charm.unit].get("state") != value:
            relation.data[self.charm.unit]["state"] = value
            self._writes += 1
            self._stored.quiet = False

    def _store_dependencies(self) -> None:
        relation = self.peer_relation
        if relation is None or not self.charm.unit.is_leader():
            return
        value = json.dumps(self.dependency_model.model_dump())
        if relation.data[self.charm.app].get("dependencies") != value:
            relation.data[self.charm.app]["dependencies"] = value
            self._writes += 1

    # --- public API --------------------------------------------------------------------------

    def set_unit_failed(self, cause: str | None = None) -> None:
        """Mark this unit's upgrade as failed: Blocked with `cause`; rollback instructions."""
        self._upgrade_stack = None
        if self.peer_relation is None:
            return
        self.charm.unit.status = BlockedStatus(cause or "")
        self._set_state("failed")
        self.log_rollback_instructions()
        if self.charm.unit.is_leader():
            reported = set(self._stored.rollback_reported) | {self.charm.unit.name}
            self._stored.rollback_reported = sorted(reported)

    def _fail(self, error: UpgradeError) -> None:
        """Fail this unit for `error` through `set_unit_failed()`, called without arguments.

        Charms override `set_unit_failed` with the original's signature (no argument), so the
        library never passes one; the cause is shown if the status is still the bare Blocked.
        """
        logger.error("%s (%s)", error.message, error.cause)
        self.set_unit_failed()
        if self.charm.unit.status == BlockedStatus(""):
            self.charm.unit.status = BlockedStatus(error.cause)

    def set_unit_completed(self) -> None:
        """Mark this unit's upgrade as completed (healthy on the new version)."""
        self._upgrade_stack = None
        if self.peer_relation is None:
            return
        self.charm.unit.status = MaintenanceStatus("upgrade completed")
        self._set_state("completed")
        if self.substrate == "k8s":
            self.on.upgrade_finished.emit()
        elif self.charm.unit.is_leader():
            # Juju does not tell the leader about its own writes: pop itself now.
            self.on_upgrade_changed(None)

    def set_unit_ready(self) -> None:
        """Report this unit ready to be upgraded (VM) and re-evaluate."""
        if self.peer_relation is None:
            return
        if not self.upgrade_stack:
            logger.warning("no upgrade-stack yet; this unit will be ready once it is written")
            self._stored.refresh_pending = True
            return
        if self.charm.unit.is_leader():
            try:
                self._upgrade_supported_check()
            except VersionError as e:
                self._fail(e)
                return
        if self.state == "recovery" and not self._others_ready():
            # A rollback starts only once every other unit is ready: a unit still `completed`
            # from the failed rollout must not be popped as already done. (The unit in recovery
            # is the leader that prepared it, or was until leadership moved.)
            logger.info("rollback prepared; waiting for the other units to be ready")
            self._stored.refresh_pending = True
            return
        self._set_state("ready")
        self.charm.unit.status = WaitingStatus(WAITING_TEXT)
        self._stored.refresh_pending = False
        self.on_upgrade_changed(None)

    def prepare_upgrade(self) -> list[int]:
        """Leader: check the cluster and write the upgrade stack (or prepare a rollback).

        Returns the stack. Raises `UpgradeError` (its `message` is the action failure text).
        On Kubernetes the stack is every unit number, sorted (the StatefulSet's order).
        """
        self._upgrade_stack = None  # read the relation, not what an earlier handler cached
        relation = self.peer_relation
        if relation is None:
            raise UpgradeError("Could not find upgrade relation.", cause=None, resolution=None)
        if not self.charm.unit.is_leader():
            raise UpgradeError(
                "Action must be ran on the Juju leader.", cause=None, resolution=None
            )
        if self.cluster_state == "failed":
            self._repair_upgrade_stack()
            self._set_state("recovery")
            self.charm.unit.status = BlockedStatus("ready to rollback application")
            return self.upgrade_stack or []
        if not self.idle:
            raise UpgradeError(
                "Cannot run pre-upgrade checks, cluster already upgrading.",
                cause=None,
                resolution=None,
            )
        try:
            self.pre_upgrade_check()
            if self.substrate == "k8s":
                stack = sorted(_unit_number(u) for u in self.app_units)
            else:
                stack = self.build_upgrade_stack()
        except ClusterNotReadyError:
            raise
        except Exception as e:
            logger.exception("pre-upgrade check failed")
            raise UpgradeError("Unknown error found.", cause=str(e), resolution=None) from e
        self.upgrade_stack = stack
        if self._stored.refresh_pending:
            self.set_unit_ready()
        return list(stack)

    def in_progress(self) -> bool:
        """Return True while a rollout is prepared, running or halted (not every unit idle)."""
        if self.peer_relation is None:
            return False
        return bool(self.upgrade_stack) or any(s not in ("idle", "") for s in self.unit_states)

    # --- handlers ----------------------------------------------------------------------------

    def _on_upgrade_created(self, event: EventBase) -> None:
        self._set_state("ready" if self.upgrade_stack else "idle")
        stored = self.stored_dependencies
        if self.charm.unit.is_leader() and stored is None:
            self._store_dependencies()
        elif stored is not None and stored.model_dump() != self.dependency_model.model_dump():
            self._stored.refresh_pending = True

    def _on_upgrade_departed(self, event: RelationDepartedEvent) -> None:
        self._departing = event.departing_unit
        try:
            if event.departing_unit == self.charm.unit:
                self._stored.departing = True  # never upgrade again: this unit is leaving
                return
            self._upgrade_stack = None
            self.on_upgrade_changed(event)
        finally:
            self._departing = None

    def _on_leader_elected(self, event: EventBase) -> None:
        if self.peer_relation is None:
            return
        if self.stored_dependencies is None and self.idle:
            self._store_dependencies()
        self.on_upgrade_changed(event)

    def _on_periodic(self, event: EventBase) -> None:
        if self.quiet:
            return  # no rollout as of the last reconcile: a new one arrives as relation-changed
        if self.peer_relation is None:
            return
        if self.upgrade_stack or self.state not in ("idle", None) or self._stored.refresh_pending:
            self.on_upgrade_changed(event)
        else:
            self._remember()

    def _on_upgrade_charm(self, event: EventBase) -> None:
        self._upgrade_stack = None
        if self.substrate == "k8s":
            self._k8s_upgrade_charm()
            return
        if self.peer_relation is None or not self.upgrade_stack:
            logger.error("Cluster upgrade failed, ensure pre-upgrade checks are ran first.")
            self._stored.refresh_pending = True
            self.charm.unit.status = BlockedStatus(
                "run pre-upgrade-check on the leader to continue the upgrade"
            )
            return
        if self.charm.unit.is_leader():
            try:
                self._upgrade_supported_check()
            except VersionError as e:
                self._fail(e)
                return
        if self.state == "recovery":
            self.set_unit_ready()  # waits for the others first (see set_unit_ready)
            return
        self.charm.unit.status = WaitingStatus(WAITING_TEXT)
        self._set_state("ready")
        self._stored.refresh_pending = False
        if len(self.app_units) == 1:
            # Alone in its view (a single-unit app, or a unit that has not met its peers yet):
            # nobody else will wake it, so reconcile now. The grant still needs the stack's top.
            self.on_upgrade_changed(event)

    def _guard_upgrade_granted(self, event: UpgradeGrantedEvent) -> None:
        if self.state not in ("ready", "upgrading") or self.cluster_state in (
            "failed",
            "recovery",
        ):
            logger.warning("stale upgrade_granted dropped (state %s)", self.state)
            return
        self._on_upgrade_granted(event)

    def _on_upgrade_finished(self, event: EventBase) -> None:
        """Kubernetes: this unit finished; let the StatefulSet roll the next lower ordinal.

        The leader reconciles (it pops this unit). The highest unit stops there: the operator
        checks it and runs `resume-upgrade`. Unit 0 is the last one.
        """
        if self.substrate != "k8s" or self.peer_relation is None:
            return
        if self.charm.unit.is_leader():
            self.on_upgrade_changed(event)
        number = _unit_number(self.charm.unit)
        if self._is_highest_unit():
            logger.info(
                "%s unit upgraded. Evaluate and run `resume-upgrade` action to continue upgrade",
                self.charm.unit.name,
            )
            return
        if number == 0:
            logger.info("%s unit upgraded. Upgrade is complete", self.charm.unit.name)
            return
        try:
            self._set_rolling_update_partition(partition=number - 1)
        except KubernetesClientError as e:
            logger.exception("Cannot set rolling update partition")
            self._fail(e)

    # --- actions -----------------------------------------------------------------------------

    def _on_pre_upgrade_check_action(self, event: ActionEvent) -> None:
        try:
            stack = self.prepare_upgrade()
        except UpgradeError as e:
            event.fail(e.message)
            return
        if self.state == "recovery":
            message = "Rollback stack prepared; refresh back to the previous revision."
        else:
            message = "Pre-upgrade check successful. Proceed with the upgrade."
        event.set_results({"message": message, "upgrade-stack": json.dumps(stack)})

    def _on_resume_upgrade_action(self, event: ActionEvent) -> None:
        self._upgrade_stack = None  # read the relation, not what an earlier handler cached
        if self.peer_relation is None:
            event.fail("Could not find upgrade relation.")
            return
        if not self.charm.unit.is_leader():
            event.fail("Action must be ran on the Juju leader.")
            return
        stack = self.upgrade_stack
        if not stack:
            event.fail("Nothing to resume, upgrade stack unset.")
            return
        if len(stack) != len(self.app_units) - 1:  # exactly once, after the first unit
            event.fail("Upgrade can be resumed only once after juju refresh is called.")
            return
        try:
            self._set_rolling_update_partition(partition=stack[-1])
        except KubernetesClientError:
            event.fail("Cannot set rolling update partition.")
            return
        event.set_results({"message": f"Upgrade will resume on unit {stack[-1]}"})

    # --- checks and repair -------------------------------------------------------------------

    def _upgrade_supported_check(self) -> None:
        """Raise `VersionError` if a stored (old) version is not accepted by the new model."""
        stored = self.stored_dependencies
        if stored is None:
            logger.warning("no valid stored dependencies; version compatibility check skipped")
            return
        _define_models()  # for DependencyModel below
        for key, new in self.dependency_model:
            old = getattr(stored, key, None)
            if not isinstance(old, DependencyModel) or not isinstance(new, DependencyModel):
                continue
            if not old.can_upgrade(new):
                raise VersionError(
                    message=f"Versions incompatible, {key} {old.version} can not be upgraded to "
                    f"{new.version}",
                    cause=f"Upgrades only supported for specific versions, {key} versions "
                    f"satisfying requirement {new.upgrade_supported}",
                )

    def _repair_upgrade_stack(self) -> None:
        """Rollback: put every member missing from the stack just below the (failed) top."""
        stack = self.upgrade_stack or []
        members = sorted(_unit_number(u) for u in self.app_units)
        missing = [n for n in members if n not in stack]
        if not missing:
            return
        if not stack:
            self.upgrade_stack = missing
            return
        self.upgrade_stack = [*stack[:-1], *missing, stack[-1]]

    def _others_ready(self) -> bool:
        return all(s == "ready" for s in self.other_unit_states)

    # --- the reconcile -----------------------------------------------------------------------

    def on_upgrade_changed(self, event: EventBase | None = None) -> None:
        """Re-evaluate the rollout (idempotent; a nested call only asks for one more pass).

        `event` may be None: the library calls this itself after its own writes
        (`set_unit_ready`, the leader's `set_unit_completed`), where no event of the upgrade
        relation is at hand. A charm override must accept None and not use `event.relation`
        or `event.defer()` unguarded (the library never defers anyway).
        """
        if self._reconciling:
            self._again = True
            return
        self._reconciling = True
        self._granted = False
        try:
            for _ in range(len(self.app_units) + 2):
                self._again = False
                before = self._writes
                self._upgrade_stack = None  # re-read the relation on every pass
                self._pass()
                if self._writes == before and not self._again:
                    break
            self._remember()
        finally:
            self._reconciling = False

    def _pass(self) -> None:
        """One pass of the reconcile.

        Kubernetes keeps the original's flow: no refresh-pending step (a refresh there needs
        the stack first), no recovery skip, no insertion of newcomers into the stack.
        """
        if self.peer_relation is None:
            return
        vm = self.substrate == "vm"
        leader = self.charm.unit.is_leader()
        cluster = self.cluster_state
        if vm and self._ready_if_pending(leader, cluster):
            return
        if cluster == "failed":
            logger.debug("Cluster failed to upgrade, exiting...")
            self._report_failed_units(leader)
            return
        if vm and cluster == "recovery":
            logger.debug("Cluster in recovery, skip...")
            return
        if leader and not self._stored.departing:
            # A leader that is being removed sees its peers leave one by one as it departs;
            # repairing from that shrinking view would drop live units from the stack. The next
            # leader repairs on leader-elected.
            self._leader_repair(add_newcomers=vm)
        stack = self.upgrade_stack
        if not stack:
            self._finalise(leader)
            return
        others = self.other_unit_states
        if "upgrading" in others and self.state in ("idle", "ready"):
            self.charm.unit.status = WaitingStatus(WAITING_TEXT)
        if (
            not self._granted  # at most one grant per reconcile
            and not self._removal_in_progress()
            and stack[-1] == _unit_number(self.charm.unit)
            and self.state in ("ready", "upgrading")
            and self.cluster_state == "ready"
            and "upgrading" not in others
        ):
            self._grant()

    def _removal_in_progress(self) -> bool:
        """A unit is being removed (fewer planned units than this unit sees), or it is this one.

        Until every unit has run its departed hooks, a leaving unit may still run hooks while
        the leader already dropped it from the stack; nobody starts an upgrade meanwhile. The
        departed hooks that end the removal reconcile again.
        """
        if self._stored.departing:
            return True
        try:
            planned = self.model.app.planned_units()
        except Exception:  # planned_units is leader-independent but may be unavailable
            return False
        return planned < len(self.app_units)

    def _ready_if_pending(self, leader: bool, cluster: str | None) -> bool:
        """Step 1: a refresh (or rollout round) arrived before the stack: report ready now."""
        if not (self._stored.refresh_pending and self.upgrade_stack):
            return False
        # While failed or in recovery, only the pending rollback of the unit in recovery (the
        # leader that prepared it, or was) may proceed, and only once every other unit is ready.
        rollback_go = self.state == "recovery" and self._others_ready()
        if cluster in ("failed", "recovery") and not rollback_go:
            return False
        self.set_unit_ready()
        return True

    def _finalise(self, leader: bool) -> None:
        """Step 5: the stack is empty; a completed unit goes back to idle."""
        if self.state == "completed" and self.cluster_state in ("idle", "completed"):
            self._set_state("idle")
            self.charm.unit.status = ActiveStatus()
            if leader:
                self._store_dependencies()
                self._stored.rollback_reported = []

    def _grant(self) -> None:
        """Step 7: this unit is the top and nobody else upgrades: upgrade now."""
        self._set_state("upgrading")
        self.charm.unit.status = MaintenanceStatus("upgrading...")
        self._granted = True
        try:
            self.on.upgrade_granted.emit()
        except DependencyError as e:
            self._fail(e)

    def _report_failed_units(self, leader: bool) -> None:
        if not leader:
            return
        failed = sorted(u.name for u in self.app_units if self._state_of(u) == "failed")
        if failed != list(self._stored.rollback_reported):
            self.log_rollback_instructions()
            self._stored.rollback_reported = failed

    def _leader_repair(self, add_newcomers: bool) -> None:
        stack = self.upgrade_stack or []
        members = {_unit_number(u): u for u in self.app_units}
        changed = False
        while stack and (
            stack[-1] not in members or self._state_of(members[stack[-1]]) == "completed"
        ):
            top = stack.pop()
            changed = True
            if top not in members:
                logger.warning("unit %s left during upgrade; removed from upgrade-stack", top)
        states = {n: self._state_of(u) for n, u in members.items()}
        if add_newcomers and (
            stack or any(s in ("upgrading", "completed") for s in states.values())
        ):
            for number in sorted(members):
                if states[number] == "ready" and number not in stack:
                    stack.insert(0, number)
                    changed = True
        if changed:
            self.upgrade_stack = stack

    # --- Kubernetes: the original's flow -------------------------------------------------------

    def _is_highest_unit(self) -> bool:
        """Kubernetes: this unit has the highest StatefulSet ordinal (it upgrades first)."""
        return _unit_number(self.charm.unit) == self.model.app.planned_units() - 1

    def _k8s_upgrade_charm(self) -> None:
        """The pod restarted on the new charm: this unit is upgrading now (no reconcile)."""
        if self.peer_relation is None:
            return
        if not self.upgrade_stack:
            logger.error("Cluster upgrade failed, ensure pre-upgrade checks are ran first.")
            return
        if self._is_highest_unit():  # the first unit to run the new charm checks versions
            try:
                self._upgrade_supported_check()
            except VersionError as e:
                self._fail(e)
                return
        self.charm.unit.status = MaintenanceStatus("upgrading unit")
        self._set_state("upgrading")
