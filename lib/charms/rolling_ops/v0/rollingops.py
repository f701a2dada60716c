"""Rolling operations over a peer relation: one unit at a time runs a disruptive callback.

This is the coordinated-ops implementation of ``charms.rolling_ops.v0.rollingops``. It keeps the
public API and the relation data of the Charmhub library of the same name, so a charm can switch by
replacing this one file, and units running either library keep coordinating during a refresh. It
fixes that library's known defects: no ``IndexError`` before the relation exists, no early release
when the callback defers, no stranded leader grant, departed holders are cleaned up, requests are
served first-come-first-served, several requests from one unit are queued instead of overwriting
each other, the leader's own grant is committed before its callback runs, callbacks need not be
named methods, and two managers on one charm do not collide.

Wiring it into a charm
======================

Declare a peer relation in ``metadata.yaml`` (the relation name is the manager's identity)::

    peers:
      restart:
        interface: rolling_op

Create the manager in ``__init__`` and request the lock from any handler::

    from charms.rolling_ops.v0.rollingops import Lock, LockNoRelationError, RollingOpsManager

    class MyCharm(ops.CharmBase):
        def __init__(self, framework: ops.Framework):
            super().__init__(framework)
            self.restart_manager = RollingOpsManager(
                self, relation="restart", callback=self._restart
            )
            framework.observe(self.on.restart_action, self._on_restart_action)

        def _on_restart_action(self, event: ops.ActionEvent):
            self.on["restart"].acquire_lock.emit()
            # or run another method of the charm for this one request:
            # self.on["restart"].acquire_lock.emit(callback_override="_rolling_upgrade")

        def _restart(self, event):  # called with the RunWithLock event, while holding the lock
            workload.restart()

The callback runs on exactly one unit at a time. If it cannot finish now it may call
``event.defer()``: the unit keeps the lock and the callback runs again at the next dispatch (only
while the same grant is still held). If it raises, the hook fails, Juju discards the hook's writes
and retries it; the grant was committed by an earlier hook, so the retry runs the callback again.
``acquire_lock`` emitted before the peer relation exists (e.g. in ``install``) is deferred, not
lost.
Several requests from one unit are queued and served in order, each under its own grant; repeating
the request that is already last in line adds nothing.

Deriving status
===============

The library writes the statuses of the library it replaces ("Awaiting restart operation",
"Executing restart operation", "Beginning rolling restart") and never replaces a status it did not
set. A charm that computes its status in one collect-status handler can derive the same from the
relation data::

    def _on_collect_status(self, event: ops.CollectStatusEvent):
        try:
            lock = Lock(self.restart_manager)
        except LockNoRelationError:
            return
        if lock.is_held():
            event.add_status(ops.MaintenanceStatus("Executing restart operation"))
        elif lock.is_pending():
            event.add_status(ops.WaitingStatus("Awaiting restart operation"))

``any(lock.is_pending() or lock.is_held() for lock in Locks(self.restart_manager))`` tells whether
some unit of the application is waiting for or holding the lock; ``lock.in_flight()`` also counts
a finished holder the leader has not cleared yet and requests queued behind the current one.
``self.restart_manager.quiet`` answers without reading the relation (every ``Lock`` read is a
hook tool call): True when the last hook that read it saw nothing in flight and no malformed
data, so a collect-status handler can return at once (``if manager.quiet: return``).

The leader's own turn
=====================

The leader grants the lock (app databag) and is also a unit that may want it. It never runs its
own callback in the dispatch that granted it: a failed hook would discard the grant while the
workload had already been disrupted, and a new leader would not see the grant. Instead the grant is
committed first and the callback runs in a later dispatch, woken by whichever comes first: the
peer relation-changed Juju (3.6 and later) delivers to the leader for its own app-databag write;
a detached ``juju-exec`` that dispatches ``<relation>_process_locks`` as soon as the granting hook
has released the machine lock; or the next update-status. Among simultaneous requests the leader
lets the others go first, but yields at most once, so it cannot starve.

Juju 3.6 and 4
==============

On Juju 3.6 a removed unit leaves the peer relation: the others run relation-departed and stop
listing it, and the leader forgets its grant and request. On Juju 4 (juju/juju#23326) a removed
unit stays listed and nobody runs relation-departed. So while another unit holds or asks for the
lock, and only then (an idle hook reads nothing more), the leader reads the ``goal-state`` hook
tool and treats a listed unit that goal-state no longer shows as departed: its grant is freed and
its request never granted. A holder that is ``dying`` is still waited for: it may be inside its
callback. Once it is gone, the leader's next hook frees its grant (at the latest the next
update-status, or the leader-elected of a new leader).

Relation data (identical to the library this replaces, plus hint keys it ignores)
==================================================================================

- unit bag: ``state`` = ``acquire`` | ``release``; ``callback_override`` = method name of the
  current request; ours also ``rolling-ops-queue`` (JSON list of further requests) and
  ``rolling-ops-requested-at`` (ISO-8601 UTC, tie-break only).
- app bag (leader): ``"<ops.model.Unit app/N>"`` = ``granted`` | ``idle``; ours also
  ``rolling-ops-order`` (JSON list, FIFO of pending units), ``rolling-ops-token`` (grant counter),
  ``rolling-ops-holder`` (JSON ``{"unit": ..., "token": ...}``), ``rolling-ops-yielded``.

Compatibility with the library this replaces
============================================

The same:

- import path, public names, event names (``<relation>_acquire_lock`` etc.), constructor
  ``RollingOpsManager(charm, relation, callback)`` and observer names (``_on_acquire_lock`` ...);
- ``Lock``/``Locks`` methods and ``LockState`` values; the relation keys and values above;
- statuses: "Awaiting <name> operation" when a request is made or seen pending on
  relation-changed, "Executing <name> operation" around the callback, "Beginning rolling <name>"
  on the leader's app status;
- one holder at a time; a charm-emitted ``run_with_lock`` runs the callback as before.

Different on purpose (each fixes a defect of that library):

- no relation yet: ``acquire_lock`` is deferred and ``Lock()`` raises ``LockNoRelationError``
  (was ``IndexError``);
- a deferring callback keeps the lock (it was released early);
- internal steps are direct calls, not nested ``emit()``s (ops dropped them as duplicates);
- departed units' keys are cleared and a new leader re-processes everything;
- a removed holder is freed on Juju 4 too, where no relation-departed comes (goal-state, above);
- grants are first-come-first-served, the leader yields at most once (was set order);
- requests from one unit queue (``rolling-ops-queue``) instead of overwriting the last one;
- the leader's own grant is committed before its callback runs (a failed hook lost it);
- callbacks may be any callable; overrides are resolved by name when they run;
- the handle key is the relation name, so two managers on one charm do not collide;
- after the callback the unit shows Waiting ("Awaiting ...") rather than Active while it has
  another request queued (the original had one request slot, so never one queued);
- the unit (app) status goes back to Active only over the library's own "Executing"
  ("Beginning rolling") status, never over a status the charm set meanwhile;
- update-status reads the relation only while the last reconcile saw something in flight
  (``quiet``, ours): an idle unit makes no hook tool call there.

Bad relation data, one rule: a value another unit wrote that does not parse, is out of range or
is too big is logged, listed by ``RollingOpsManager.malformed_data()`` (for the charm's status; the
library's own status texts stay those of the library it replaces) and read as absent; it never
raises in a hook. Bounds, checked before decoding: a JSON value of at most 64 KiB nested at most 16
deep (no NaN or Infinity), a token of at most 18 ASCII digits, a time of at most 64 characters.

Testing your charm with this library
====================================

In Scenario (``ops.testing``) one ``ctx.run`` is one dispatch, and the lock takes several: feed
each output State into the next run.

- The leader never runs its own callback in the dispatch that grants it. After the run that
  emits ``acquire_lock`` on the leader, run ``update_status()`` (or the peer
  ``relation_changed`` with a ``remote_unit``) on its output: that run calls the callback. The
  ``<relation>_process_locks`` wake-up does the same on a real unit.
- Another unit's turn: its ``acquire_lock`` writes ``state: acquire`` in its unit bag; give that
  bag to the leader's State as the remote unit's data and run ``relation_changed`` there (the
  grant appears in the app bag); then give that app bag to the unit's State and run its
  ``relation_changed``: the callback runs.
- This library does not read Juju's planned unit count, so Scenario's default
  ``planned_units=1`` does not hold its grants (it does hold those of charmlibs.rollingops,
  the coordinator and the upgrade library).
- No ``juju-exec`` on a test machine: the wake-up is logged once and skipped.
- Several units, interleavings and faults: ``jujusim.check_charm`` with
  ``jujusim.grants.rolling_ops_v0(relation)`` (the repository's README has a 20-line test).

Identity
========

This file is a fork, in behaviour, of the Charmhub library ``charms.rolling_ops.v0.rollingops``
(canonical/charm-rolling-ops, LIBAPI 0): it keeps the public API and relation data of that
library's last published patch, LIBPATCH 9, and is otherwise our own code. Its ``LIBID`` differs
from the original's, so Charmhub treats it as another library: ``charmcraft fetch-lib`` of the
original does not overwrite this file (never list it under ``charm-libs:``), and Charmhub would
refuse a ``publish-lib`` of it under the original's name. ``LIBPATCH`` is our own counter: it
started at 10 so that it sorts after the original's 9, and it grows by one with every change of
behaviour here; it says nothing about the original's later patches.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any, TypeGuard, cast

import ops
from ops.framework import EventSource

# The unique Charmhub library identifier, never change it
LIBID = "36513726dd8140f0924176befdc2362f"

# Increment this major API version when introducing breaking changes
LIBAPI = 0

# Increment this PATCH version before using `charmcraft publish-lib` or reset
# to 0 if you are raising the major API version
LIBPATCH = 17

logger = logging.getLogger(__name__)

# Unit databag keys.
_STATE = "state"
_OVERRIDE = "callback_override"
_QUEUE = "rolling-ops-queue"
_REQUESTED_AT = "rolling-ops-requested-at"
# Application databag keys (besides one "<ops.model.Unit NAME>" key per unit).
_ORDER = "rolling-ops-order"
_TOKEN = "rolling-ops-token"  # noqa: S105 - a counter, not a credential
_HOLDER = "rolling-ops-holder"
_YIELDED = "rolling-ops-yielded"

_GRANTED = "granted"
_IDLE = "idle"
_ACQUIRE = "acquire"
_RELEASE = "release"

_JUJU_EXEC_FALLBACK = "/usr/bin/juju-exec"

_APP_KEY_RE = re.compile(r"^<ops\.model\.Unit ([^<>]+)>$")

# Bounds on values another unit wrote (see "Bad relation data" in the module docstring).
_MAX_JSON_CHARS = 64 * 1024
_MAX_JSON_DEPTH = 16
_MAX_TOKEN_DIGITS = 18  # so that token + 1 stays a small int
_MAX_TIME_CHARS = 64
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


def _is_str_list(value: object) -> TypeGuard[list[str]]:
    """Whether a decoded JSON value is a list of strings."""
    return isinstance(value, list) and all(
        isinstance(item, str) for item in cast("list[object]", value)
    )


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


def _parse_token(raw: str) -> int | None:
    """A grant token: at most 18 ASCII digits (checked before ``int()``), else None."""
    if len(raw) <= _MAX_TOKEN_DIGITS and raw.isascii() and raw.isdigit():
        return int(raw)
    return None


class LockNoRelationError(Exception):
    """The peer relation does not exist yet (for example during ``install``)."""


class LockState(Enum):
    """Effective state of one unit's lock (see ``Lock``)."""

    ACQUIRE = "acquire"
    RELEASE = "release"
    GRANTED = "granted"
    IDLE = "idle"


_IN_FLIGHT = (LockState.ACQUIRE, LockState.GRANTED)


def _app_key(unit_name: str) -> str:
    """Application-databag key for a unit, in the wire format of the original library."""
    return f"<ops.model.Unit {unit_name}>"


def _unit_number(unit_name: str) -> int:
    """The number of ``app/N``; names without one sort last."""
    number = unit_name.rpartition("/")[2]
    return int(number) if number.isdecimal() else 1 << 31


def _effective_state(unit_value: str | None, app_value: str | None) -> LockState:
    """Combine a unit's ``state`` and its app key (``None`` = absent = idle) into one state."""
    if app_value == _GRANTED and unit_value == _RELEASE:
        return LockState.RELEASE
    if app_value != _GRANTED and unit_value == _ACQUIRE:
        return LockState.ACQUIRE
    return LockState.GRANTED if app_value == _GRANTED else LockState.IDLE


@dataclass(frozen=True)
class _Holder:
    """The grant our leader issued last: which unit, under which token."""

    unit: str
    token: int


class _PeerData:
    """Validated reads and minimal writes of the peer relation's databags.

    The only place that parses relation data. Each malformed value is logged once per instance,
    recorded in ``problems`` and read as absent. Nothing is cached, so reads always reflect the
    writes made earlier in the same hook.
    """

    def __init__(self, relation: ops.Relation, model: ops.Model):
        self.relation = relation
        self.app = model.app
        self.me = model.unit
        self._units = {unit.name: unit for unit in relation.units}
        self._units[self.me.name] = self.me
        self.problems: list[str] = []

    # -- raw access --

    def readable(self) -> bool:
        """Whether the databags can be read yet (they cannot during ``install``)."""
        try:
            dict(self.relation.data[self.me])
        except ops.ModelError as e:
            logger.debug("peer relation %s not readable yet: %s", self.relation.name, e)
            return False
        return True

    def _get(self, entity: ops.Unit | ops.Application | None, key: str) -> str | None:
        if entity is None:
            return None
        try:
            return self.relation.data[entity].get(key)
        except (KeyError, ops.ModelError):
            return None

    def _unit_get(self, unit_name: str, key: str) -> str | None:
        return self._get(self._units.get(unit_name), key)

    def _bad(self, where: str, key: str, value: str, expected: str) -> None:
        problem = f"{where} {key}={_short(value)} ignored: expected {expected}"
        if problem not in self.problems:
            self.problems.append(problem)
            logger.warning("rolling ops (%s): %s", self.relation.name, problem)

    def _json(self, where: str, key: str, value: str | None, expected: str) -> Any:
        if not value:
            return None
        try:
            return _load_json(value)
        except ValueError:
            self._bad(where, key, value, expected)
            return None

    @staticmethod
    def write(bag: ops.RelationDataContent, key: str, value: str | None) -> None:
        """Set ``key`` (``None`` or ``""`` deletes it), writing only when the value changes."""
        if not value:
            if key in bag:
                del bag[key]
        elif bag.get(key) != value:
            bag[key] = value

    # -- membership --

    def member_names(self, departing: str | None = None) -> list[str]:
        """Units on the relation plus this unit, in unit-number order, minus ``departing``."""
        names = (name for name in self._units if name != departing)
        return sorted(names, key=_unit_number)

    def app_key_units(self) -> list[str]:
        """Unit names that have a key in the application databag."""
        try:
            keys = list(self.relation.data[self.app])
        except ops.ModelError:
            return []
        return [m.group(1) for m in map(_APP_KEY_RE.match, keys) if m]

    # -- the lock state (original wire format) --

    def unit_state(self, unit_name: str) -> str | None:
        value = self._unit_get(unit_name, _STATE)
        if value in (None, "", _ACQUIRE, _RELEASE):
            return value or None
        self._bad(unit_name, _STATE, value, "'acquire' or 'release'")
        return None

    def app_value(self, unit_name: str) -> str | None:
        key = _app_key(unit_name)
        value = self._get(self.app, key)
        if value in (None, "", _GRANTED, _IDLE):
            return value or None
        self._bad("app", key, value, "'granted' or 'idle'")
        return None

    def state(self, unit_name: str) -> LockState:
        return _effective_state(self.unit_state(unit_name), self.app_value(unit_name))

    def callback_override(self, unit_name: str) -> str:
        return self._unit_get(unit_name, _OVERRIDE) or ""

    # -- hint keys (ours) --

    def queue(self, unit_name: str) -> list[str]:
        raw = self._unit_get(unit_name, _QUEUE)
        value = self._json(unit_name, _QUEUE, raw, "a JSON list of strings")
        if value is None:
            return []
        if _is_str_list(value):
            return value
        self._bad(unit_name, _QUEUE, raw or "", "a JSON list of strings")
        return []

    def requested_at(self, unit_name: str) -> datetime | None:
        raw = self._unit_get(unit_name, _REQUESTED_AT)
        if not raw:
            return None
        try:
            if len(raw) > _MAX_TIME_CHARS:
                raise ValueError("too long")
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            self._bad(unit_name, _REQUESTED_AT, raw, "an ISO-8601 time")
            return None
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)

    def order(self) -> list[str]:
        raw = self._get(self.app, _ORDER)
        value = self._json("app", _ORDER, raw, "a JSON list of unit names")
        if value is None:
            return []
        if _is_str_list(value):
            return list(dict.fromkeys(value))
        self._bad("app", _ORDER, raw or "", "a JSON list of unit names")
        return []

    def holder(self) -> _Holder | None:
        raw = self._get(self.app, _HOLDER)
        value = self._json("app", _HOLDER, raw, 'JSON {"unit": str, "token": int}')
        if value is None:
            return None
        if (
            _is_json_object(value)
            and isinstance(value.get("unit"), str)
            and type(value.get("token")) is int
            and 0 <= value["token"] < 10**_MAX_TOKEN_DIGITS
        ):
            return _Holder(value["unit"], value["token"])
        self._bad("app", _HOLDER, raw or "", 'JSON {"unit": str, "token": int}')
        return None

    def token(self) -> int:
        """Last grant number issued (never lower than the recorded holder's)."""
        raw = self._get(self.app, _TOKEN)
        token = 0
        if raw:
            parsed = _parse_token(raw)
            if parsed is None:
                self._bad("app", _TOKEN, raw, "a decimal number of at most 18 digits")
            else:
                token = parsed
        holder = self.holder()
        return max(token, holder.token if holder else 0)

    def trusted_token(self, unit_name: str) -> int | None:
        """The token of ``unit_name``'s grant, if our leader issued the grant it holds now."""
        holder = self.holder()
        if holder and holder.unit == unit_name and self.app_value(unit_name) == _GRANTED:
            return holder.token
        return None

    def yielded(self) -> str | None:
        return self._get(self.app, _YIELDED) or None

    def all_problems(self) -> list[str]:
        """Read every key of every bag and return what was malformed."""
        for name in self.member_names():
            self.state(name)
            self.queue(name)
            self.requested_at(name)
        self.order()
        self.token()
        return list(self.problems)


def _peer_relation(manager: RollingOpsManager) -> ops.Relation:
    """The manager's peer relation; LockNoRelationError while it does not exist."""
    relation = manager.model.get_relation(manager.name)
    if relation is None:
        raise LockNoRelationError(f"peer relation {manager.name!r} does not exist yet")
    return relation


class Lock:
    """One unit's view of the lock: its ``state`` and the leader's app key for it.

    ``Lock(manager)`` is the local unit's lock; ``Lock(manager, unit)`` another unit's.
    Raises ``LockNoRelationError`` while the peer relation does not exist.
    """

    def __init__(self, manager: RollingOpsManager, unit: ops.Unit | None = None):
        self.relation = _peer_relation(manager)
        self.unit = unit or manager.model.unit
        self.app = manager.model.app
        self._model = manager.model
        self._manager = manager

    def _data(self) -> _PeerData:
        return _PeerData(self.relation, self._model)

    @property
    def _state(self) -> LockState:
        return self._data().state(self.unit.name)

    @_state.setter
    def _state(self, state: LockState) -> None:
        # A write: the relation must be read again. The flag is the manager's stored state,
        # which Lock, its companion in this module, clears (no public setter on purpose).
        self._manager._stored.quiet = False  # pyright: ignore[reportPrivateUsage]
        if state in (LockState.ACQUIRE, LockState.RELEASE):
            if self.unit != self._model.unit:
                raise RuntimeError(f"only {self.unit.name} can {state.value} its own lock")
            self.relation.data[self.unit][_STATE] = state.value
        else:
            if not self._model.unit.is_leader():
                raise RuntimeError(f"only the leader can set a lock to {state.value}")
            self.relation.data[self.app][_app_key(self.unit.name)] = state.value

    def acquire(self) -> None:
        """Request the lock (local unit only). Charms should emit ``acquire_lock`` instead."""
        self._state = LockState.ACQUIRE

    def release(self) -> None:
        """Say the callback has finished (local unit only)."""
        self._state = LockState.RELEASE

    def grant(self) -> None:
        """Grant the lock to this lock's unit (leader only)."""
        self._state = LockState.GRANTED

    def clear(self) -> None:
        """Take the lock back from this lock's unit (leader only)."""
        self._state = LockState.IDLE

    def is_held(self) -> bool:
        """The unit holds the lock (granted, callback not finished)."""
        return self._state is LockState.GRANTED

    def release_requested(self) -> bool:
        """The unit has finished and waits for the leader to clear its grant."""
        return self._state is LockState.RELEASE

    def is_pending(self) -> bool:
        """The unit has requested the lock and not been granted it yet."""
        return self._state is LockState.ACQUIRE

    def in_flight(self) -> bool:
        """Pending, held, finished but not cleared, or with requests queued behind (ours)."""
        data = self._data()
        return data.state(self.unit.name) is not LockState.IDLE or bool(data.queue(self.unit.name))


class Locks:
    """All units' locks: every unit on the peer relation plus this unit, in unit-number order."""

    def __init__(self, manager: RollingOpsManager):
        self.manager = manager
        self.relation = _peer_relation(manager)

    def __iter__(self) -> Iterator[Lock]:
        units = {unit.name: unit for unit in self.relation.units}
        units[self.manager.model.unit.name] = self.manager.model.unit
        for name in sorted(units, key=_unit_number):
            yield Lock(self.manager, units[name])


class RunWithLock(ops.EventBase):
    """This unit holds the lock and should run its callback now.

    ``grant_token`` is set when the library emits the event: the token of the grant it was emitted
    for (``""`` when a leader running the original library issued it). ``None`` means charm code
    emitted it.
    """

    def __init__(self, handle: ops.Handle, grant_token: str | None = None):
        super().__init__(handle)
        self.grant_token = grant_token

    def snapshot(self) -> dict[str, Any]:
        """Save the grant token (nothing when charm code emitted the event)."""
        return {} if self.grant_token is None else {"grant_token": self.grant_token}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Restore the grant token."""
        super().restore(snapshot)
        token = snapshot.get("grant_token")
        self.grant_token = token if isinstance(token, str) else None


class AcquireLock(ops.EventBase):
    """Request the lock; ``callback_override`` names a charm method to run for this request."""

    def __init__(self, handle: ops.Handle, callback_override: str | None = None):
        super().__init__(handle)
        self.callback_override = callback_override or ""

    def snapshot(self) -> dict[str, Any]:
        """Save the override (``""`` for the constructor callback)."""
        return {"callback_override": self.callback_override}

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Restore the override."""
        super().restore(snapshot)
        self.callback_override = snapshot.get("callback_override") or ""


class ProcessLocks(ops.EventBase):
    """Re-evaluate the locks now (safe on any unit, at any time)."""


def _define_event(charm: ops.CharmBase, kind: str, event_type: type[ops.EventBase]) -> None:
    """Define ``charm.on.<kind>`` once per charm class (another instance may have done it)."""
    existing = getattr(type(charm.on), kind, None)
    if isinstance(existing, EventSource) and existing.event_type is event_type:
        return
    charm.on.define_event(kind, event_type)


# Seconds goal-state may take: a hung tool must not hang the hook (it counts as unreadable).
_GOAL_STATE_TIMEOUT = 30.0


def _gone_from_goal_state(names: list[str]) -> set[str]:
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
        logger.debug("goal-state unreadable (%s); no removed unit detected", e)
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


def _juju_exec() -> str | None:
    """Path of ``juju-exec`` on this machine, if any."""
    found = shutil.which("juju-exec")
    if found:
        return found
    return _JUJU_EXEC_FALLBACK if os.path.exists(_JUJU_EXEC_FALLBACK) else None


class RollingOpsManager(ops.Object):
    """Runs ``callback`` on one unit at a time, coordinated over the peer relation ``relation``.

    Defines ``<relation>_acquire_lock``, ``<relation>_run_with_lock`` and
    ``<relation>_process_locks`` on ``charm.on`` (``-`` in the name becomes ``_``); charms reach
    them as ``charm.on[relation].acquire_lock``.
    """

    _juju_exec_missing_logged = False
    _stored = ops.StoredState()

    def __init__(self, charm: ops.CharmBase, relation: str, callback: Callable[..., Any]):
        super().__init__(charm, relation)
        # quiet: the last reconcile saw nothing in flight (see `quiet`); False = maybe work.
        self._stored.set_default(quiet=False)
        self.name = relation
        self.charm = charm
        self._callback = callback
        self._granted_myself = False  # per-dispatch memory, reset on the framework commit
        # The unit whose relation-departed this dispatch handles. ops still lists it in
        # relation.units for the whole dispatch, so every leader pass must leave it out.
        self._departing: str | None = None
        prefix = relation.replace("-", "_")
        _define_event(charm, f"{prefix}_run_with_lock", RunWithLock)
        _define_event(charm, f"{prefix}_acquire_lock", AcquireLock)
        _define_event(charm, f"{prefix}_process_locks", ProcessLocks)
        self._process_locks_event_name = f"{prefix}_process_locks"

        events = charm.on[relation]
        observe = self.framework.observe
        observe(events.relation_changed, self._on_relation_changed)
        observe(events.relation_departed, self._on_relation_departed)
        observe(charm.on.leader_elected, self._on_leader_elected)
        observe(charm.on.update_status, self._on_update_status)
        observe(events.acquire_lock, self._on_acquire_lock)
        observe(events.run_with_lock, self._on_run_with_lock)
        observe(events.process_locks, self._on_process_locks)
        observe(self.framework.on.commit, self._on_commit)

    # -- public helpers --

    @property
    def quiet(self) -> bool:
        """Whether nothing is in flight, from stored state (no relation read).

        True when, as this unit last read the relation, no unit was waiting for, holding or
        releasing the lock, none had requests queued, and no data was malformed. It is what
        this unit remembered at the end of the last hook that read the relation. Every change
        another unit makes reaches this unit as a relation-changed, which reads and remembers
        again, so an idle unit answers from memory. False means "maybe": read to know.
        """
        return bool(self._stored.quiet)

    def malformed_data(self) -> list[str]:
        """Descriptions of malformed values in the relation data (ignored by the library)."""
        relation = self.model.get_relation(self.name)
        if relation is None:
            return []
        return _PeerData(relation, self.model).all_problems()

    # -- event handlers --

    def _on_acquire_lock(self, event: AcquireLock) -> None:
        """Record a request: directly if this unit is idle, else behind it in the queue."""
        relation = self.model.get_relation(self.name)
        data = _PeerData(relation, self.model) if relation else None
        if data is None or not data.readable():
            logger.debug("%s: no peer relation yet; deferring the lock request", self.name)
            event.defer()
            return
        override = getattr(event, "callback_override", "")
        override = override if isinstance(override, str) else ""  # charms' tests pass mocks
        self._promote_next_request(data)
        if self._is_idle(data):
            self._record_request(data, override)
        elif self._repeats_last_request(data, override):
            logger.debug("%s: request %r is already waiting", self.name, override)
        else:
            queue = [*data.queue(self.model.unit.name), override]
            data.write(data.relation.data[self.model.unit], _QUEUE, json.dumps(queue))
            self.model.unit.status = ops.WaitingStatus(f"Awaiting {self.name} operation")
        if self.model.unit.is_leader():
            self._lead(data)
        self._remember(data)

    def _on_run_with_lock(self, event: RunWithLock) -> None:
        """Run the callback while holding the lock, then release it (unless it deferred)."""
        relation = self.model.get_relation(self.name)
        if relation is None:
            logger.warning("%s: run_with_lock without a peer relation; ignored", self.name)
            return
        data = _PeerData(relation, self.model)
        me = self.model.unit.name
        held = data.state(me) is LockState.GRANTED
        token = getattr(event, "grant_token", None)
        if isinstance(token, str):  # emitted by this library
            recorded = data.trusted_token(me)
            if not held or (recorded is not None and str(recorded) != token):
                logger.info("%s: dropping run for a grant no longer held", self.name)
                return
        elif not held:
            logger.warning("%s: callback run without holding the lock", self.name)

        callback = self._resolve_callback(data.callback_override(me))
        if callback is None:
            if held:
                self._release(data)
            return
        executing = ops.MaintenanceStatus(f"Executing {self.name} operation")
        self.model.unit.status = executing
        callback(event)
        if event.deferred is True:
            logger.debug("%s: callback deferred; keeping the lock", self.name)
            return
        if self.model.unit.status == executing:
            self.model.unit.status = (
                ops.WaitingStatus(f"Awaiting {self.name} operation")
                if data.queue(me)
                else ops.ActiveStatus()
            )
        if held:
            self._release(data)
        self._remember(data)

    def _on_relation_changed(self, event: ops.RelationChangedEvent) -> None:
        # As the library this replaces: a unit that sees its own request pending says so.
        self._show_pending()
        self._reconcile()

    def _on_relation_departed(self, event: ops.RelationDepartedEvent) -> None:
        departing = event.departing_unit
        self._departing = departing.name if departing else None
        self._reconcile()

    def _on_leader_elected(self, event: ops.LeaderElectedEvent) -> None:
        self._reconcile()

    def _on_update_status(self, event: ops.UpdateStatusEvent) -> None:
        # Work of other units announces itself with a relation-changed; update-status is only
        # the fallback for this unit's own work (a lost wake-up after the leader granted
        # itself), so a unit that saw nothing in flight reads nothing here.
        if self._stored.quiet:
            return
        self._reconcile()

    def _on_process_locks(self, event: ProcessLocks) -> None:
        self._reconcile()

    def _on_commit(self, event: ops.CommitEvent) -> None:
        self._granted_myself = False
        self._departing = None

    def _show_pending(self) -> None:
        """Set "Awaiting <name> operation" if this unit's request waits for its grant."""
        relation = self.model.get_relation(self.name)
        if relation is None:
            return
        data = _PeerData(relation, self.model)
        if data.readable() and data.state(self.model.unit.name) is LockState.ACQUIRE:
            self.model.unit.status = ops.WaitingStatus(f"Awaiting {self.name} operation")

    # -- the reconcile routine --

    def _reconcile(self) -> None:
        """Bring this unit's side of the protocol up to date with the relation data.

        Idempotent; re-reads everything, so coalesced or repeated triggers are harmless.
        """
        relation = self.model.get_relation(self.name)
        if relation is None:
            return
        data = _PeerData(relation, self.model)
        if not data.readable():
            return
        if self._departing == self.model.unit.name:
            logger.debug("%s: this unit is leaving; nothing to coordinate", self.name)
            return
        self._promote_next_request(data)
        if self.model.unit.is_leader():
            self._lead(data)
        self._run_if_granted(data)
        self._remember(data)

    def _remember(self, data: _PeerData) -> None:
        """Store whether nothing is in flight, as ``data`` shows it now (see ``quiet``)."""
        members = data.member_names(self._departing)
        busy = data.order() or any(
            data.state(name) is not LockState.IDLE or data.queue(name) for name in members
        )
        departed = [name for name in data.app_key_units() if name not in members]
        # A departed unit's grant the leader has not cleared yet is work too.
        stale = any(data.app_value(name) == _GRANTED for name in departed)
        quiet = not (busy or stale or data.all_problems())
        if self._stored.quiet != quiet:
            self._stored.quiet = quiet

    # -- unit side --

    def _is_idle(self, data: _PeerData) -> bool:
        """No current request, and the leader has cleared our last grant (two-phase rule)."""
        me = self.model.unit.name
        state = data.unit_state(me)
        return state is None or (state == _RELEASE and data.app_value(me) != _GRANTED)

    def _repeats_last_request(self, data: _PeerData, override: str) -> bool:
        me = self.model.unit.name
        queue = data.queue(me)
        if queue:
            return queue[-1] == override
        pending = data.state(me) is LockState.ACQUIRE
        return pending and data.callback_override(me) == override

    def _record_request(self, data: _PeerData, override: str) -> None:
        """Make ``override`` the current request: ``state=acquire`` in the original format."""
        bag = data.relation.data[self.model.unit]
        data.write(bag, _STATE, _ACQUIRE)
        data.write(bag, _OVERRIDE, override)
        data.write(bag, _REQUESTED_AT, datetime.now(timezone.utc).isoformat())
        self.model.unit.status = ops.WaitingStatus(f"Awaiting {self.name} operation")

    def _promote_next_request(self, data: _PeerData) -> None:
        """Once idle, make the head of our queue the current request."""
        queue = data.queue(self.model.unit.name)
        if not queue or not self._is_idle(data):
            return
        rest = queue[1:]
        data.write(data.relation.data[self.model.unit], _QUEUE, json.dumps(rest) if rest else None)
        self._record_request(data, queue[0])

    def _run_if_granted(self, data: _PeerData) -> None:
        """Emit RunWithLock if we hold a grant committed in an earlier dispatch."""
        me = self.model.unit.name
        if data.state(me) is not LockState.GRANTED:
            return
        if self._granted_myself:
            logger.debug("%s: granted myself in this dispatch; running after commit", self.name)
            return
        token = data.trusted_token(me)
        self.charm.on[self.name].run_with_lock.emit(
            grant_token="" if token is None else str(token)
        )

    def _resolve_callback(self, override: str) -> Callable[..., Any] | None:
        if not override:
            return self._callback
        method = getattr(self.charm, override, None)
        if not callable(method):
            logger.error(
                "%s: charm has no method %r to run; dropping that request", self.name, override
            )
            return None
        return method

    def _release(self, data: _PeerData) -> None:
        """Tell the leader we are done; the leader then clears and hands over directly."""
        bag = data.relation.data[self.model.unit]
        data.write(bag, _STATE, _RELEASE)
        data.write(bag, _OVERRIDE, None)
        data.write(bag, _REQUESTED_AT, None)
        if self.model.unit.is_leader():
            self._lead(data)

    # -- leader side --

    def _lead(self, data: _PeerData) -> None:
        """Leader processing: forget departed units, clear finished holders, grant the next."""
        members = data.member_names(self._departing)
        me = self.model.unit.name
        others = [name for name in members if name != me]
        if any(data.state(name) in _IN_FLIGHT for name in others):
            # Another unit holds or asks for a grant: on Juju 4 a removed unit stays listed
            # (see "Juju 3.6 and 4"). An idle leader reads nothing more.
            gone = _gone_from_goal_state(others)
            members = [name for name in members if name not in gone]
        self._forget_departed(data, members)
        self._clear_released(data, members)
        order = self._update_order(data, members)
        held = [name for name in members if data.state(name) is LockState.GRANTED]
        self._check_holder_record(data, held)
        if held:
            if len(held) > 1:
                logger.warning("%s: %s all hold the lock; granting nothing", self.name, held)
            return
        if not order:  # nothing pending or held: take back our app status (also a stale one)
            self._restore_app_status()
            return
        if order[0] == me and len(order) > 1 and data.yielded() != me:
            order = [*order[1:], me]
            data.write(data.relation.data[self.model.app], _YIELDED, me)
        self._grant(data, order[0], order[1:])

    def _forget_departed(self, data: _PeerData, members: list[str]) -> None:
        """Drop the app keys of units no longer on the relation."""
        app_bag = data.relation.data[self.model.app]
        departed = [name for name in data.app_key_units() if name not in members]
        for name in departed:
            logger.info("%s: forgetting the lock of departed unit %s", self.name, name)
            data.write(app_bag, _app_key(name), None)

    def _clear_released(self, data: _PeerData, members: list[str]) -> None:
        """Mark the units that released the lock idle."""
        app_bag = data.relation.data[self.model.app]
        released = [name for name in members if data.state(name) is LockState.RELEASE]
        for name in released:
            data.write(app_bag, _app_key(name), _IDLE)
            if name == self.model.unit.name:
                self._promote_next_request(data)

    def _update_order(self, data: _PeerData, members: list[str]) -> list[str]:
        """Keep the FIFO of pending units: known ones first, newly seen ones appended."""
        pending = [name for name in members if data.state(name) is LockState.ACQUIRE]
        known = [name for name in data.order() if name in pending]

        def arrival(name: str) -> tuple[Any, ...]:
            when = data.requested_at(name)
            number = _unit_number(name)
            return (0, when, number) if when else (1, number)

        new = sorted((name for name in pending if name not in known), key=arrival)
        order = known + new
        app_bag = data.relation.data[self.model.app]
        data.write(app_bag, _ORDER, json.dumps(order) if order else None)
        if data.yielded() not in pending:
            data.write(app_bag, _YIELDED, None)
        return order

    def _check_holder_record(self, data: _PeerData, held: list[str]) -> None:
        """Drop a holder record that does not name the one current holder."""
        holder = data.holder()
        if holder and held != [holder.unit]:
            app_bag = data.relation.data[self.model.app]
            data.write(app_bag, _TOKEN, str(data.token()))  # tokens never go back
            data.write(app_bag, _HOLDER, None)

    def _grant(self, data: _PeerData, unit_name: str, rest: list[str]) -> None:
        app_bag = data.relation.data[self.model.app]
        token = data.token() + 1
        data.write(app_bag, _app_key(unit_name), _GRANTED)
        data.write(app_bag, _TOKEN, str(token))
        data.write(app_bag, _HOLDER, json.dumps({"unit": unit_name, "token": token}))
        data.write(app_bag, _ORDER, json.dumps(rest) if rest else None)
        if data.yielded() == unit_name:
            data.write(app_bag, _YIELDED, None)
        self.model.app.status = ops.MaintenanceStatus(f"Beginning rolling {self.name}")
        logger.info("%s: granted the lock to %s (token %d)", self.name, unit_name, token)
        if unit_name == self.model.unit.name:
            self._granted_myself = True
            self._dispatch_wakeup()

    def _restore_app_status(self) -> None:
        if self.model.app.status == ops.MaintenanceStatus(f"Beginning rolling {self.name}"):
            self.model.app.status = ops.ActiveStatus()

    # -- wake-up for the leader's own grant --

    def _dispatch_wakeup(self) -> None:
        """Start a detached ``juju-exec`` that dispatches ``<relation>_process_locks`` here.

        juju-exec waits for the machine hook lock, so the dispatch runs right after this hook
        has committed the grant. Never waited on; if juju-exec is missing, other wake-ups
        (relation-changed, update-status) still come.
        """
        juju_exec = _juju_exec()
        if juju_exec is None:
            if not RollingOpsManager._juju_exec_missing_logged:
                RollingOpsManager._juju_exec_missing_logged = True
                logger.info("%s: juju-exec not found; waiting for the next peer event", self.name)
            return
        dispatch = f"{self.charm.charm_dir}/dispatch"
        argv = [
            juju_exec,
            "-u",
            self.model.unit.name,
            f"JUJU_DISPATCH_PATH=hooks/{self._process_locks_event_name} {dispatch}",
        ]
        env = {key: value for key, value in os.environ.items() if key != "JUJU_CONTEXT_ID"}
        try:
            subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            logger.warning("%s: could not start %s: %s", self.name, juju_exec, e)
