"""Leadership-based lock coordinator for ops charms: one unit at a time, first come first served.

Any unit may **request** a named lock; only the **leader grants**. A unit holds a lock when the
leader's grant equals its current request, and it **releases** every lock it holds at the end of
the first dispatch in which it sees the grant. `Serial` grants each lock to one unit at a time, in
request order; subclasses can plug in other policies per lock.

This is an ops-native re-implementation of the locking model of charm-helpers'
``charmhelpers.coordinator`` (``BaseCoordinator``, ``Serial``): the same public names, attached to
the charm as an ``ops.Object``, with requests and grants stored in a peer relation.

Using it
--------

Declare a peer relation in ``metadata.yaml`` and create the coordinator once in ``__init__``::

    from charms.coordinated_ops.v0.coordinator import Serial

    class MyCharm(ops.CharmBase):
        _stored = ops.StoredState()

        def __init__(self, framework):
            super().__init__(framework)
            self._stored.set_default(needs_restart=False)
            self.serial = Serial(self)  # first peer relation, databag key "coordinator"
            framework.observe(self.on.config_changed, self._on_config_changed)
            for event in (
                self.on.cluster_relation_changed,  # grants arrive here
                self.on.cluster_relation_departed,  # and here, once a removed unit has left
                self.on.leader_elected,
                self.serial.wake_up_event,         # the leader's own grants arrive here
            ):
                framework.observe(event, self._maybe_restart)

        def _on_config_changed(self, event):
            self._stored.needs_restart = True      # the need must be durable
            self._maybe_restart(event)

        def _maybe_restart(self, event):
            if self.serial.granted("restart"):
                restart_my_service()               # must be safe to run at any time
                self._stored.needs_restart = False
            elif self._stored.needs_restart:       # request only when needed
                self.serial.acquire("restart")

Put the coordinated work in one function that is safe to run at any time and call it from every
handler where a grant can become visible: the peer relation-changed (grants arrive there),
relation-departed, leader-elected, ``wake_up_event`` and the handler where the need arises. A
grant is released at the end of the first dispatch that sees it: a dispatch that ignores a
visible grant gives it up, and the unit must request again.

While a unit is being removed, grants wait: the leader releases the grant of a departed unit (its
machine may be gone for good), yet a unit removed gracefully may still run a hook after the
leader saw it leave. So ``granted()`` stays False while Juju's planned unit count is below the
units this unit sees, and forever on a unit that saw its own departure; such a grant is not
released, and it becomes visible in the relation-departed that completes the removal.

Request only when needed. An **unconditional** ``acquire()`` in relation-changed loops forever:
the request triggers a grant, the grant a relation-changed and a release, the release a revocation
and another relation-changed, which requests again. ``require`` packages the guarded pattern::

    self._restart = self.serial.require("restart", lambda: self._stored.needs_restart)(
        self._do_restart
    )
    # self._restart() runs _do_restart when granted, or requests the lock if needed.

An idle unit reads nothing: at the end of every dispatch that loaded, the coordinator remembers
(stored state) whether any request or grant was in flight, and while nothing was (``quiet``) a
dispatch that did not load skips loading at its end. Another unit's request reaches it as a
relation-changed, which loads. A charm's status handler can check ``quiet`` before calling a
method that loads.

``acquire()`` never blocks. Even on a leader with a free lock it returns ``False`` in the dispatch
that requests it: the leader records the grant, and acts on it in its next dispatch, once the grant
is committed (a failed hook would discard the grant while the work had already run). The
coordinator triggers that dispatch itself: it spawns a detached ``juju-exec`` that dispatches
``wake_up_event`` right after the hook ends (Juju >= 3.6 also sends the leader a relation-changed
for its own write).

Custom policies
---------------

A policy is a method ``grant_<lock>`` (non-identifier characters of the lock name replaced by
``_``) on a subclass. It gets the candidate ``unit``, the set ``granted`` of current holders and
the ``queue`` of waiting units in request order (which contains ``unit``). At most N concurrent
holders of ``restart``, keeping FIFO order::

    class UpToTwo(Serial):
        def grant_restart(self, lock, unit, granted, queue):
            free = 2 - len(granted)
            return free > 0 and unit in queue[:free]

Other locks of the subclass keep Serial's one-at-a-time default.

Testing your charm with this library
------------------------------------

In Scenario (``ops.testing``) one ``ctx.run`` is one dispatch; feed each output State into the
next run.

- Set ``planned_units`` in your State. Scenario's default is 1, and once the peer relation has a
  remote unit the coordinator reads "fewer planned units than units I see" as a removal under
  way: ``granted()`` stays False on every unit, so nothing ever runs. Use
  ``State(planned_units=1 + len(peer.peers_data), ...)``.
- The leader's own grant: the run in which it calls ``acquire()`` records the grant and returns
  False; fire the wake-up on the output State with public names, as juju-exec would::

      state = ctx.run(ctx.on.custom(Serial.on.wake_up), state)

  (``coordinator.on.wake_up`` emits ``wake_up_event`` in the same dispatch. Scenario wakes the
  first coordinator it finds among the charm's attributes: with two coordinators, drive the
  other one by the relation route.) A peer ``relation_changed`` with a ``remote_unit`` works
  too.
- Another unit's turn: give its request (its unit bag) to the leader's State and run
  ``relation_changed``; give the resulting app bag to the unit's State and run its
  ``relation_changed``: ``granted()`` is True there.
- No ``juju-exec`` on a test machine: the wake-up is logged once and skipped.
- Several units, interleavings and faults: ``jujusim.check_charm`` with
  ``jujusim.grants.coordinator(lock, relation)`` (the repository's README has a 20-line test).

Juju 3.6 and 4
--------------

On Juju 3.6 a removed unit leaves the peer relation: the others run relation-departed, and the
leader drops its requests and revokes its grants. On Juju 4 (juju/juju#23326) a removed unit stays
in ``relation.units`` and nobody runs relation-departed. So the leader, while another unit has a
request or a grant (never when idle), reads the ``goal-state`` hook tool and drops the requests of
a listed unit goal-state no longer shows; its grants are then revoked like any stale grant. The
pause above counts only units goal-state still shows (a ``dying`` one is leaving; a removed one
that stays listed is not), so grants resume once the removal is done; the leader frees a removed
holder in its next hook (at the latest the next update-status, or a new leader's leader-elected).

Storage
-------

Requests live in each unit's peer databag under the key ``relation_key`` (``{lock: ts}``), grants
in the peer application databag under the same key (``{unit: {lock: ts}}``), as JSON with sorted
keys. ``ts`` is ``%Y-%m-%d %H:%M:%S.%fZ`` (UTC, requester's clock) and serves as an identity
token: a grant is valid while it equals the current request string, so clock skew can reorder
waiters but never break exclusion. Before the peer relation exists (e.g. in ``install``) the
unit's requests, and a leader's grants to itself, are kept in stored state and published once the
relation is there.

Bad relation data, one rule: a value another unit wrote that does not parse, is out of range or is
too big is logged, listed in ``bad_data`` (for the charm's status; the coordinator sets none) and
treated as empty (a bad entry of a map is dropped, the rest still counts); it never raises in a
hook. A databag value must be JSON of at most 64 KiB nested at most 8 deep (checked before
decoding; no NaN or Infinity); messages quote at most 60 characters of a bad value.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
import typing
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, ParamSpec, TypeGuard, TypeVar

import ops

# The unique Charmhub library identifier, never change it
LIBID = "890f67dc656944c9a1d80b98125a8079"

# Increment this major API version when introducing breaking changes
LIBAPI = 0

# Increment this PATCH version before using `charmcraft publish-lib` or reset
# to 0 if you are raising the major API version
LIBPATCH = 4

logger = logging.getLogger(__name__)

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%fZ"

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Logged once per process (one process is one dispatch) when juju-exec cannot be found.
_missing_juju_exec_logged = False


class CoordinatorWakeUpEvent(ops.EventBase):
    """Dispatched by the coordinator on the leader right after it granted itself a lock."""


class CoordinatorEvents(ops.ObjectEvents):
    """The coordinator's own events: ``coordinator.on.wake_up`` is the tests' way in.

    Emitting ``wake_up`` emits the coordinator's ``wake_up_event`` (the charm event juju-exec
    dispatches) in the same dispatch, so Scenario can fire it with public names:
    ``ctx.run(ctx.on.custom(Serial.on.wake_up), state)``.
    """

    wake_up = ops.EventSource(CoordinatorWakeUpEvent)


class _CallableHandle(ops.Handle):
    """The coordinator's ops `Handle`, also callable as the coordinator's `handle()` method.

    ops.Object keeps its `Handle` in the attribute `handle`; the coordinator API also has a
    `handle()` method. This handle is both: ops uses its path, callers call it.
    """

    def __init__(self, handle: ops.Handle, handle_requests: Callable[[], None]):
        super().__init__(handle.parent, handle.kind, handle.key)
        self._handle_requests = handle_requests

    def __call__(self) -> None:
        """Let the leader revoke stale grants and grant waiting requests (`handle()`)."""
        self._handle_requests()


def _identifier(name: str) -> str:
    """Return `name` with every non-identifier character replaced by `_`."""
    return re.sub(r"\W", "_", name)


def _parse_timestamp(ts: str) -> datetime | None:
    try:
        return datetime.strptime(ts, TIMESTAMP_FORMAT)
    except (TypeError, ValueError):
        return None


# Bounds on a databag value another unit wrote (see "Bad relation data" in the module docstring).
_MAX_JSON_CHARS = 64 * 1024
_MAX_JSON_DEPTH = 8
# A JSON string (an unterminated one runs to the end, so the scan stays linear) or a bracket.
_JSON_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters: bad data is never echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _is_json_object(value: object) -> TypeGuard[dict[str, Any]]:
    """Whether a decoded JSON value is an object (a dict: JSON object keys are strings)."""
    return isinstance(value, dict)


def _load_json(raw: str) -> Any:
    """``json.loads`` for relation data: ValueError when too big or too deep, checked first.

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


# Seconds goal-state may take: a hung tool must not hang the hook (it counts as unreadable).
_GOAL_STATE_TIMEOUT = 30.0


def _removed_units(names: list[str]) -> set[str]:
    """Those of ``names`` that goal-state no longer lists: removed units (empty if unreadable)."""
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


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True)


class BaseCoordinator(ops.Object):
    """Grants named locks to units of the application; subclasses choose the grant policy.

    Args:
        charm: the charm this coordinator belongs to.
        relation_key: the databag key (and the handle key of this object).
        peer_relation_name: the peer relation to use; default: the first peer relation of the
            charm's metadata, in sorted order.
    """

    _stored = ops.StoredState()
    on = CoordinatorEvents()  # pyright: ignore[reportAssignmentType]

    def __init__(
        self,
        charm: ops.CharmBase,
        relation_key: str = "coordinator",
        peer_relation_name: str | None = None,
    ):
        super().__init__(charm, relation_key)
        peers = sorted(charm.meta.peers)
        if not peers:
            raise ValueError(f"{type(self).__name__} needs a peer relation in the charm metadata")
        if peer_relation_name is None:
            peer_relation_name = peers[0]
        elif peer_relation_name not in peers:
            raise ValueError(f"{peer_relation_name!r} is not a peer relation of this charm")
        self.charm = charm
        self.key = relation_key
        self.relname = peer_relation_name
        self.relid: int | None = None
        self.requests: dict[str, dict[str, str]] | None = None
        self.grants: dict[str, dict[str, str]] | None = None
        self.bad_data: list[str] = []
        # quiet: the last dispatch that loaded saw no request, grant or bad data (see `quiet`).
        self._stored.set_default(requests="", grants="", departing=False, quiet=False)
        self._reset()

        # The event juju-exec dispatches on the leader after a self-grant; it must be an event of
        # the charm for ops to dispatch it. Coordinators sharing a key share the event.
        self.wake_up_event_name = f"{_identifier(relation_key)}_wake_up"
        if not hasattr(type(charm.on), self.wake_up_event_name):
            charm.on.define_event(self.wake_up_event_name, CoordinatorWakeUpEvent)
        self.wake_up_event: ops.BoundEvent = getattr(charm.on, self.wake_up_event_name)

        relation_events = charm.on[self.relname]
        self.framework.observe(relation_events.relation_changed, self._on_load_trigger)
        self.framework.observe(relation_events.relation_departed, self._on_relation_departed)
        self.framework.observe(charm.on.leader_elected, self._on_load_trigger)
        self.framework.observe(self.wake_up_event, self._on_load_trigger)
        self.framework.observe(self.on.wake_up, self._on_wake_up_for_tests)
        self.framework.observe(self.framework.on.pre_commit, self._on_pre_commit)
        self.framework.observe(self.framework.on.commit, self._on_commit)

    def _on_wake_up_for_tests(self, event: CoordinatorWakeUpEvent) -> None:
        """``on.wake_up`` (fired by tests) runs what the juju-exec wake-up runs."""
        self.wake_up_event.emit()

    # ops.Object declares `handle` a plain Handle attribute and assigns it in its __init__: this
    # property takes that assignment and wraps the Handle so that `handle()` works too.
    @property
    def handle(self) -> _CallableHandle:
        """This object's ops handle; calling it runs `handle()` (see `_handle_requests`)."""
        return self._callable_handle  # pyright: ignore[reportReturnType]  # None only in __init__

    @handle.setter
    def handle(  # pyright: ignore[reportIncompatibleVariableOverride]
        self, value: ops.Handle | None
    ) -> None:
        self._callable_handle = (
            _CallableHandle(value, self._handle_requests) if value is not None else None
        )

    # ---- per-dispatch state -------------------------------------------------------------------

    def _reset(self) -> None:
        """Forget everything loaded in this dispatch (called at construction and on commit)."""
        self.relid = None
        self.requests = None
        self.grants = None
        self.bad_data = []
        self._loaded = False
        self._leader = False
        self._local = False  # True: no peer relation yet, state lives in self._stored
        self._relation: ops.Relation | None = None
        self._departing: str | None = None
        self._paused = False  # a unit is leaving: grants are not acted on (see `_unit_leaving`)
        self._committed_grants: dict[str, str] = {}  # this unit's grants as of dispatch start
        self._visible: dict[str, str] = {}  # own granted locks the charm could see: lock -> ts
        self._self_granted: set[str] = set()  # locks the leader granted itself in this dispatch

    @property
    def _me(self) -> str:
        return self.model.unit.name

    def _own_requests(self) -> dict[str, str]:
        assert self.requests is not None
        return self.requests.setdefault(self._me, {})

    # ---- loading ------------------------------------------------------------------------------

    def initialize(self) -> None:
        """Load requests and grants for this dispatch (once), then let the leader handle them."""
        if self._loaded:
            return
        self._loaded = True
        self._leader = self.model.unit.is_leader()
        # In relation-departed ops still lists the departing unit; Juju names it in the
        # environment, so loading excludes it whichever observer runs first.
        departing = os.environ.get("JUJU_DEPARTING_UNIT") or None
        if departing and departing != self._me:
            self._departing = departing
        self.requests, self.grants = self._load()
        self._update_visibility()
        self._handle_requests()

    def _update_visibility(self) -> None:
        """Mark the own locks the charm sees as granted in this dispatch (released at its end)."""
        granted = [
            lock
            for lock, ts in self._own_requests().items()
            if self._committed_grants.get(lock) == ts
        ]
        # Only a grant can be paused: goal-state is asked only when this unit holds one.
        self._paused = bool(granted) and self._unit_leaving()
        self._visible = {}
        for lock, ts in sorted(self._own_requests().items()):
            if self._committed_grants.get(lock) != ts:
                self.msg(f"Waiting on {lock}")
            elif self._paused:
                self.msg(f"Waiting on {lock} (granted, but a unit is leaving the application)")
            else:
                self._visible[lock] = ts
                self.msg(f"Granted {lock}")

    def _unit_leaving(self) -> bool:
        """Whether this unit, or another one, is being removed: grants wait until it is gone.

        The leader must release the grant of a departed unit (its machine may be gone for good),
        but a unit removed gracefully may still run a hook after the leader saw it depart (e.g. a
        queued wake-up). So no unit acts on a grant while Juju's planned unit count is below the
        units it sees (a removal is under way), nor after it saw its own departure.
        """
        if self._stored.departing:
            return True
        if self._relation is None:
            return False
        try:
            planned = self.model.app.planned_units()
        except (ops.ModelError, RuntimeError) as e:  # goal-state unavailable: do not block
            logger.debug("planned units unknown: %s", e)
            return False
        others = [
            u.name for u in self._relation.units if u.name not in (self._departing, self._me)
        ]
        if planned < 1 + len(others):
            # On Juju 4 a removed unit stays listed for good: only a dying one is leaving.
            return planned < 1 + len(others) - len(_removed_units(others))
        return False

    def _load(self) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        raw_units: dict[str, str | None] = {}
        raw_app: str | None = None
        try:
            relation = self._peer_relation()
        except ops.ModelError as e:
            logger.debug("peer relation %s not listable yet: %s", self.relname, e)
            relation = None
        if relation is not None:
            try:
                for unit in sorted(relation.units, key=lambda u: u.name):
                    if unit.name not in (self._departing, self._me):
                        raw_units[unit.name] = relation.data[unit].get(self.key)
                raw_units[self._me] = relation.data[self.model.unit].get(self.key)
                raw_app = relation.data[self.model.app].get(self.key)
            except ops.ModelError as e:  # e.g. install: the relation is listed, its data is not
                logger.debug("peer relation %s not accessible yet: %s", self.relname, e)
                relation = None
        if relation is None:
            return self._load_local()

        self._relation = relation
        self.relid = relation.id
        requests = {
            unit: self._parse_requests(raw, f"unit {unit}") for unit, raw in raw_units.items()
        }
        grants = self._parse_grants(raw_app, "application databag")
        others = [unit for unit in requests if unit != self._me]
        if self._leader and (any(requests[u] for u in others) or set(grants) - {self._me}):
            # Juju 4: a removed unit stays listed (see "Juju 3.6 and 4"); never read when idle.
            for unit in _removed_units(others):
                del requests[unit]
        local = self._parse_requests(self._stored.requests, "local state")
        for lock, ts in local.items():  # publish requests made before the relation existed
            requests[self._me].setdefault(lock, ts)
        self._stored.requests = ""
        self._stored.grants = ""  # the leader re-derives grants from the app databag
        self._committed_grants = dict(grants.get(self._me, {}))
        return requests, grants

    def _load_local(self) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        self._local = True
        requests = {self._me: self._parse_requests(self._stored.requests, "local state")}
        grants: dict[str, dict[str, str]] = {}
        if self._leader:
            grants = self._parse_grants(self._stored.grants, "local state")
            grants = {self._me: grants[self._me]} if self._me in grants else {}
        self._committed_grants = dict(grants.get(self._me, {}))
        return requests, grants

    def _peer_relation(self) -> ops.Relation | None:
        relations = self.model.relations.get(self.relname, [])
        return min(relations, key=lambda r: r.id) if relations else None

    def _bad(self, source: str, problem: str) -> None:
        logger.warning(
            "coordinator %r: ignoring malformed data from %s: %s", self.key, source, problem
        )
        self.bad_data.append(f"{source}: {problem}")

    def _parse_json_object(self, raw: str | None, source: str) -> dict[str, Any]:
        if not raw:
            return {}
        try:
            data = _load_json(raw)
        except ValueError as e:
            self._bad(source, f"not usable JSON ({_short(str(e))})")
            return {}
        if not _is_json_object(data):
            self._bad(source, f"not a JSON object: {_short(raw)}")
            return {}
        return data

    def _parse_locks(self, data: Any, source: str) -> dict[str, str]:
        """Validate one `{lock: timestamp}` map; drop entries that are not valid."""
        if not _is_json_object(data):
            self._bad(source, "not a JSON object")
            return {}
        locks: dict[str, str] = {}
        for lock, ts in data.items():
            if isinstance(ts, str) and _parse_timestamp(ts) is not None:
                locks[lock] = ts
            else:
                self._bad(source, f"bad timestamp for lock {_short(lock)}: {_short(ts)}")
        return locks

    def _parse_requests(self, raw: str | None, source: str) -> dict[str, str]:
        data = self._parse_json_object(raw, source)
        return self._parse_locks(data, source) if data else {}

    def _parse_grants(self, raw: str | None, source: str) -> dict[str, dict[str, str]]:
        grants: dict[str, dict[str, str]] = {}
        for unit, locks in self._parse_json_object(raw, source).items():
            parsed = self._parse_locks(locks, f"{source}, grants of {_short(unit)}")
            if parsed:
                grants[unit] = parsed
        return grants

    # ---- public API ---------------------------------------------------------------------------

    @property
    def quiet(self) -> bool:
        """Whether nothing is in flight, from stored state (no relation read).

        True when the last dispatch that read the relation saw no request, no grant and no
        malformed data, and no request waits in stored state. Every change of another unit
        reaches this unit as a relation-changed, which loads (and remembers) again, so an idle
        unit answers from memory. False means "maybe": call `initialize()` to know.
        """
        return bool(self._stored.quiet) and not self._stored.requests

    def acquire(self, lock: str) -> bool:
        """Request `lock` if not requested yet; return True only if it is held now.

        Non-blocking: the lock may be granted now or in a future hook. On the leader a free lock
        is granted in this dispatch but held from the next one on. Guard every call with a
        condition ("do I need it?"): an unconditional acquire in relation-changed loops forever.
        """
        self.initialize()
        own = self._own_requests()
        if lock not in own:
            own[lock] = self._fresh_timestamp(lock)
            self.msg(f"Requested {lock}")
        if self.granted(lock):
            self.msg(f"Acquired {lock}")
            return True
        if self._leader:
            self.grant(lock, self._me)
        return False

    def _fresh_timestamp(self, lock: str) -> str:
        """Make a new request token for `lock`, never equal to a grant this unit may still have."""
        assert self.grants is not None
        stale = {self._committed_grants.get(lock), self.grants.get(self._me, {}).get(lock)}
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        while now.strftime(TIMESTAMP_FORMAT) in stale:
            now += timedelta(microseconds=1)
        return now.strftime(TIMESTAMP_FORMAT)

    def granted(self, lock: str) -> bool:
        """Return True iff this unit's request for `lock` equals its grant as of dispatch start."""
        self.initialize()
        ts = self._own_requests().get(lock)
        return not self._paused and ts is not None and self._committed_grants.get(lock) == ts

    def requested(self, lock: str) -> bool:
        """Return True iff this unit has an outstanding request for `lock`."""
        self.initialize()
        return lock in self._own_requests()

    def request_timestamp(self, lock: str) -> datetime | None:
        """Return this unit's request time for `lock` as a naive UTC datetime, or None."""
        self.initialize()
        ts = self._own_requests().get(lock)
        return _parse_timestamp(ts) if ts is not None else None

    def _handle_requests(self) -> None:
        """On the leader: revoke grants that no longer match a request, then grant in order.

        Public as `handle()` (ops.Object's `handle` attribute, made callable).
        """
        self.initialize()
        if not self._leader:
            return
        assert self.requests is not None and self.grants is not None
        self.msg("Leader handling coordinator requests")
        for unit in sorted(self.grants):
            locks = self.grants[unit]
            for lock in sorted(locks):
                ts = locks[lock]
                if self.requests.get(unit, {}).get(lock) != ts:
                    del locks[lock]
                    when = _parse_timestamp(ts)
                    assert when is not None  # validated on load
                    self.released(unit, lock, when)
            if not locks:
                del self.grants[unit]
        for lock in sorted({lock for locks in self.requests.values() for lock in locks}):
            for unit in self._in_request_order(lock, self.requests):
                self.grant(lock, unit)

    @staticmethod
    def _in_request_order(lock: str, requests: dict[str, dict[str, str]]) -> list[str]:
        waiting = [(locks[lock], unit) for unit, locks in requests.items() if lock in locks]
        return [unit for _, unit in sorted(waiting)]

    def grant(self, lock: str, unit: str) -> bool:
        """On the leader: grant `lock` to `unit` if it holds it already or the policy allows it."""
        self.initialize()
        if not self._leader:
            return False
        assert self.requests is not None and self.grants is not None
        holders = {u for u, locks in self.grants.items() if lock in locks}
        if unit in holders:
            return True
        waiting = {u: locks for u, locks in self.requests.items() if u not in holders}
        queue = self._in_request_order(lock, waiting)
        if unit not in queue:
            return False
        if not self._policy(lock)(lock, unit, holders, queue):
            return False
        self.grants.setdefault(unit, {})[lock] = self.requests[unit][lock]
        if unit == self._me:
            self._self_granted.add(lock)
        self.msg(f"Leader grants {lock} to {unit}")
        return True

    def _policy(self, lock: str) -> Callable[[str, str, set[str], list[str]], bool]:
        for name in (f"grant_{lock}", f"grant_{_identifier(lock)}"):
            policy = getattr(self, name, None)
            if callable(policy):
                return typing.cast("Callable[[str, str, set[str], list[str]], bool]", policy)
        return self.default_grant

    def default_grant(self, lock: str, unit: str, granted: set[str], queue: list[str]) -> bool:
        """Decide locks without a `grant_<lock>` method; subclasses must define it."""
        raise NotImplementedError(
            f"{type(self).__name__} has no grant policy for lock {lock!r}: define "
            f"grant_{_identifier(lock)}(lock, unit, granted, queue) or default_grant()"
        )

    def released(self, unit: str, lock: str, timestamp: datetime) -> None:
        """Handle the leader revoking `unit`'s grant of `lock` (requested at `timestamp`)."""
        held = datetime.now(timezone.utc).replace(tzinfo=None) - timestamp
        self.msg(f"Leader released {lock} from {unit}, held {held}")

    def require(
        self, lock: str, guard_func: Callable[..., Any], *guard_args: Any, **guard_kw: Any
    ) -> Callable[[Callable[_P, _R]], Callable[_P, _R | None]]:
        """Decorate a function to run when `lock` is granted, requesting it when the guard says so.

        The wrapped function runs if `lock` is granted, or if `guard_func(*guard_args,
        **guard_kw)` is true and `acquire(lock)` returns True; otherwise it returns None.
        """

        def decorator(f: Callable[_P, _R]) -> Callable[_P, _R | None]:
            @functools.wraps(f)
            def wrapper(*args: _P.args, **kw: _P.kwargs) -> _R | None:
                if self.granted(lock):
                    self.msg(f"Granted {lock}")
                    return f(*args, **kw)
                if guard_func(*guard_args, **guard_kw) and self.acquire(lock):
                    return f(*args, **kw)
                return None

            return wrapper

        return decorator

    def msg(self, msg: str) -> None:
        """Log `msg` at INFO (ops forwards it to juju-log). Override to customise."""
        logger.info("coordinator.%s %s", type(self).__name__, msg)

    # ---- observers ----------------------------------------------------------------------------

    def _on_load_trigger(self, _: ops.EventBase) -> None:
        self.initialize()

    def _on_relation_departed(self, event: ops.RelationDepartedEvent) -> None:
        departing = event.departing_unit or event.unit
        # ops types the departed unit as always set; the checks stay for a dispatch without one.
        unknown = departing is None  # pyright: ignore[reportUnnecessaryComparison]
        if not unknown and departing.name == self._me:
            self._stored.departing = True  # this unit is being removed: never act on a grant
        if unknown or departing.name == self._me:
            self.initialize()
            self._update_visibility()
            return
        self._departing = departing.name
        if not self._loaded:
            self.initialize()  # loads without the departing unit
            return
        if self._relation is not None and event.relation.id == self._relation.id:
            assert self.requests is not None
            self.requests.pop(departing.name, None)
            self._update_visibility()
            self._handle_requests()

    def _on_pre_commit(self, _: ops.EventBase) -> None:
        # Every dispatch loads while work is in flight (a grant must be used or released, a
        # leader whose wake-up was lost must act on its own grant, requests kept in stored
        # state before the peer relation existed must be published). A unit that saw nothing
        # in flight reads nothing: another unit's request reaches it as a relation-changed.
        if not self._loaded and self.quiet and not self._stored.grants:
            return
        self.initialize()
        own = self._own_requests()
        released = False
        for lock, ts in sorted(self._visible.items()):
            if own.get(lock) == ts:
                del own[lock]
                released = True
                self.msg(f"Released local {lock} lock")
        self._visible.clear()
        if released:
            self._handle_requests()
        self._save()
        assert self.grants is not None
        mine = self.grants.get(self._me, {})
        if self._leader and any(
            lock in own and mine.get(lock) == own[lock] for lock in self._self_granted
        ):
            self._dispatch_wakeup()

    def _on_commit(self, _: ops.EventBase) -> None:
        self._reset()

    # ---- saving and waking up -----------------------------------------------------------------

    def _save(self) -> None:
        assert self.requests is not None and self.grants is not None
        own = self._own_requests()
        grants = {unit: locks for unit, locks in self.grants.items() if locks}
        if self._local:
            self._stored.requests = _dump(own) if own else ""
            self._stored.grants = _dump(grants) if self._leader and grants else ""
            return
        assert self._relation is not None
        self._write(self._relation.data[self.model.unit], own)
        if self._leader:
            self._write(self._relation.data[self.model.app], grants)
        quiet = not (any(self.requests.values()) or grants or self.bad_data)
        if self._stored.quiet != quiet:
            self._stored.quiet = quiet

    def _write(self, databag: ops.RelationDataContent, data: dict[str, Any]) -> None:
        new = _dump(data)
        old = databag.get(self.key)
        if old == new or (old is None and not data):
            return
        databag[self.key] = new

    def _dispatch_wakeup(self) -> None:
        """Spawn a detached juju-exec that dispatches `wake_up_event` here after this hook."""
        global _missing_juju_exec_logged
        juju_exec = shutil.which("juju-exec")
        if juju_exec is None and os.path.exists("/usr/bin/juju-exec"):
            juju_exec = "/usr/bin/juju-exec"
        if juju_exec is None:
            if not _missing_juju_exec_logged:
                _missing_juju_exec_logged = True
                logger.warning(
                    "juju-exec not found: the leader acts on its grant in its next hook"
                )
            return
        dispatch = f"{self.framework.charm_dir}/dispatch"
        command = f"JUJU_DISPATCH_PATH=hooks/{self.wake_up_event_name} {dispatch}"
        env = {k: v for k, v in os.environ.items() if k != "JUJU_CONTEXT_ID"}
        try:
            subprocess.Popen(
                [juju_exec, "-u", self._me, command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        except OSError as e:
            logger.warning("could not spawn the coordinator wake-up (%s); next hook acts", e)


class Serial(BaseCoordinator):
    """Grants each lock to one unit at a time, first come first served."""

    def default_grant(self, lock: str, unit: str, granted: set[str], queue: list[str]) -> bool:
        """Grant only to the first waiter, and only while nobody holds the lock."""
        return not granted and queue[0] == unit


__all__ = [
    "TIMESTAMP_FORMAT",
    "BaseCoordinator",
    "CoordinatorWakeUpEvent",
    "Serial",
]
