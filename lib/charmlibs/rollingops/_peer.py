"""The peer-relation backend: per-unit queues, a leader-run scheduler, clock-free release.

Data lives in the peer relation (wire format v1, see the package docstring). Three pieces:

- `UnitView` / `AppView`: one unit's and the application's databag, decoded leniently (a bad queue
  entry is logged, listed in the view's `errors` and skipped; the rest of the bag still counts).
- `execute_grant`: the holder runs its queue head under the grant and records `done`.
- `schedule`: the leader releases finished or stale grants and grants the next units, up to
  `max_parallel` grants at once.

Release detection never looks at a clock: unit U has finished grant T exactly when U's
`rollingops-done.token == T` (or U left, or U no longer runs the peer backend).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping
from typing import Any, cast

from ._models import (
    APP_WIRE_VERSION,
    APP_WIRE_VERSIONS_READ,
    DONE_DROPPED,
    DONE_MISSING_CALLBACK,
    DONE_NO_OP,
    DONE_NOT_GRANTED,
    KEY_BACKEND,
    KEY_DONE,
    KEY_EPOCH,
    KEY_ETCD_CLEANUP,
    KEY_GRANT,
    KEY_INTENT,
    KEY_MODE,
    KEY_MORE_GRANTS,
    KEY_ORDER,
    KEY_QUEUE,
    KEY_SEQ,
    KEY_TOKEN,
    KEY_VERSION,
    MAX_EPOCH,
    UNIT_WIRE_VERSION,
    Done,
    Grant,
    Intent,
    LockGrant,
    Operation,
    OperationResult,
    ProcessingBackend,
    RollingOpsDecodingError,
    canonical_json,
    encode_queue,
    is_wire_version,
    load_json,
    make_token,
    parse_int,
    parse_order,
    parse_queue,
    short,
    split_token,
)

logger = logging.getLogger(__name__)


def unit_sort_key(name: str) -> tuple[str, int]:
    """Order unit names by application, then unit number (app/10 after app/9)."""
    app, _, number = name.rpartition("/")
    return (app, int(number) if number.isdigit() else -1)


@dataclasses.dataclass
class UnitView:
    """One unit's peer databag, decoded. `readable` is False for an unknown wire version."""

    name: str
    readable: bool = True
    queue: list[Operation] = dataclasses.field(default_factory=list[Operation])
    seq: int = 0
    done: Done | None = None
    backend: ProcessingBackend = ProcessingBackend.PEER
    etcd_cleanup: bool = False
    last_result: str | None = None
    errors: list[str] = dataclasses.field(default_factory=list[str])  # malformed values, ignored

    def _bad(self, problem: str) -> None:
        message = f"unit {self.name}: {problem}"
        logger.error("%s", message)
        self.errors.append(message)

    @classmethod
    def read(cls, name: str, bag: Mapping[str, str]) -> UnitView:
        view = cls(name)
        version = bag.get(KEY_VERSION)
        if version is None and not any(key.startswith("rollingops-") for key in bag):
            return view  # nothing written yet
        if version != UNIT_WIRE_VERSION:
            if is_wire_version(version):  # another version: not ours to read, and not malformed
                logger.error(
                    "unit %s: rollingops wire version %s; ignoring the unit", name, version
                )
            else:
                view._bad(f"bad {KEY_VERSION} {short(version)}; ignoring the unit")
            view.readable = False
            return view
        view.queue, errors = parse_queue(bag.get(KEY_QUEUE))
        for error in errors:
            view._bad(f"bad {KEY_QUEUE}: {error}")
        try:
            view.seq = parse_int(bag.get(KEY_SEQ))
        except RollingOpsDecodingError as error:
            view._bad(f"bad {KEY_SEQ}: {error}")
        view.seq = max([view.seq, *(op.id for op in view.queue)])
        if bag.get(KEY_DONE):
            try:
                view.done = Done.decode(bag[KEY_DONE])
            except RollingOpsDecodingError as error:
                view._bad(f"bad {KEY_DONE}: {error}")
        view.last_result = view.done.result if view.done else None
        backend = bag.get(KEY_BACKEND, ProcessingBackend.PEER.value)
        if backend in (ProcessingBackend.PEER.value, ProcessingBackend.ETCD.value):
            view.backend = ProcessingBackend(backend)
        else:
            view._bad(f"unknown {KEY_BACKEND} {short(backend)}; treating it as etcd")
            view.backend = ProcessingBackend.ETCD  # unknown: it may hold a lock we cannot see
        cleanup = bag.get(KEY_ETCD_CLEANUP)
        view.etcd_cleanup = cleanup == "true"
        if cleanup not in (None, "true"):
            view._bad(f"bad {KEY_ETCD_CLEANUP} {short(cleanup)}; reading it as absent")
        return view

    @property
    def intent(self) -> Intent:
        """What this unit asks for: derived from its queue and its last result."""
        if not self.queue:
            return Intent.IDLE
        if self.last_result == OperationResult.RETRY_HOLD.value:
            return Intent.RETRY_HOLD
        if self.last_result == OperationResult.RETRY_RELEASE.value and self.queue[0].attempt > 0:
            return Intent.RETRY_RELEASE
        return Intent.REQUEST

    def write(self, bag: MutableMapping[str, str]) -> None:
        """Write this view back; keys whose value is unchanged are left alone.

        A unit that never used the lock writes nothing (no relation-changed churn at deploy).
        A unit on the etcd backend publishes only that fact (`rollingops-backend: etcd`, an empty
        queue, intent idle): its queue, seq and done live in its local state (`to_local`) until
        the hook that moves it back to peer publishes them. So an etcd grant cycle writes nothing
        here and wakes no other unit.
        """
        if not self.readable:
            return
        untouched = not any(key.startswith("rollingops-") for key in bag)
        if (
            untouched
            and not (self.queue or self.done or self.seq or self.etcd_cleanup)
            and (self.backend is ProcessingBackend.PEER)
        ):
            return
        values = {KEY_VERSION: UNIT_WIRE_VERSION, KEY_BACKEND: self.backend.value}
        if self.backend is ProcessingBackend.ETCD:
            values[KEY_QUEUE] = encode_queue([])
            values[KEY_INTENT] = Intent.IDLE.value
        else:
            values[KEY_QUEUE] = encode_queue(self.queue)
            values[KEY_SEQ] = str(self.seq)
            values[KEY_INTENT] = self.intent.value
            if self.done is not None:
                values[KEY_DONE] = self.done.encode()
        for key, value in values.items():
            if bag.get(key) != value:
                bag[key] = value
        if self.etcd_cleanup and bag.get(KEY_ETCD_CLEANUP) != "true":
            bag[KEY_ETCD_CLEANUP] = "true"
        elif not self.etcd_cleanup and KEY_ETCD_CLEANUP in bag:
            del bag[KEY_ETCD_CLEANUP]

    def to_local(self) -> dict[str, Any]:
        """What a unit on the etcd backend keeps in its own stored state instead of the bag."""
        return {
            "queue": encode_queue(self.queue),
            "seq": self.seq,
            "done": self.done.encode() if self.done is not None else "",
        }

    def load_local(self, local: Mapping[str, Any]) -> None:
        """Replace queue, seq and done with the unit's local copy (see `to_local`)."""
        self.queue, errors = parse_queue(local.get("queue"))
        for error in errors:
            logger.error("unit %s, local queue: %s", self.name, error)
        seq = local.get("seq")
        local_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else 0
        self.seq = max([self.seq, local_seq, *(op.id for op in self.queue)])  # ids never reused
        self.done = None
        if local.get("done"):
            try:
                self.done = Done.decode(local["done"])
            except RollingOpsDecodingError as error:
                logger.error("unit %s, local done: %s", self.name, error)
        self.last_result = self.done.result if self.done else None

    def append(
        self,
        callback_id: str,
        kwargs: dict[str, Any],
        max_retry: int | None,
        *,
        executing_op: int | None,
        requested_at: str,
    ) -> Operation | None:
        """Queue a request unless it duplicates the last queued op; returns the new op or None."""
        if self.queue:
            last = self.queue[-1]
            if last.id != executing_op and last.same_request(callback_id, kwargs):
                return None
        self.seq += 1
        op = Operation(self.seq, callback_id, kwargs, max_retry, 0, requested_at)
        self.queue.append(op)
        return op


@dataclasses.dataclass
class AppView:
    """The application's peer databag, decoded. `readable` is False for an unknown version.

    `epoch` is the fencing epoch of the current mode (0 in a version 1 databag); `token` the last
    peer grant token (packed with its epoch, see `_models.make_token`). `grants` are the
    outstanding peer grants in the order they were issued: the first is `rollingops-grant`, the
    others (max_parallel > 1) `rollingops-more-grants`.
    """

    readable: bool = True
    token: int = 0
    grants: list[Grant] = dataclasses.field(default_factory=list[Grant])
    order: list[str] | None = None
    mode: ProcessingBackend = ProcessingBackend.PEER
    epoch: int = 0
    errors: list[str] = dataclasses.field(default_factory=list[str])  # malformed values, ignored

    def _bad(self, problem: str) -> None:
        message = f"app databag: {problem}"
        logger.error("%s", message)
        self.errors.append(message)

    @classmethod
    def read(cls, bag: Mapping[str, str]) -> AppView:
        view = cls()
        version = bag.get(KEY_VERSION)
        if version is None and not any(key.startswith("rollingops-") for key in bag):
            return view
        if version not in APP_WIRE_VERSIONS_READ:
            if is_wire_version(version):  # another version: not ours to read, and not malformed
                logger.error(
                    "rollingops wire version %s in the app databag; not reading it", version
                )
            else:
                view._bad(f"bad {KEY_VERSION} {short(version)}")
            view.readable = False
            return view
        try:
            view.token = parse_int(bag.get(KEY_TOKEN))
            view.epoch = parse_int(bag.get(KEY_EPOCH)) if version == APP_WIRE_VERSION else 0
        except RollingOpsDecodingError as error:
            # Never reuse a token: an unreadable counter is a broken invariant, stop granting.
            view._bad(f"bad {KEY_TOKEN} or {KEY_EPOCH} (granting stops): {error}")
            view.readable = False
        if view.epoch > MAX_EPOCH:  # written by hand: no token of it fits, none was issued
            view._bad(f"{KEY_EPOCH} above {MAX_EPOCH} (ignored): {view.epoch}")
            view.epoch = 0  # the epoch of the last token issued, below
        if bag.get(KEY_GRANT):
            try:
                view.grants.append(Grant.decode(bag[KEY_GRANT]))
            except RollingOpsDecodingError as error:
                view._bad(f"bad {KEY_GRANT} (treated as released): {error}")
        view.grants += view._more_grants(bag.get(KEY_MORE_GRANTS))
        view.token = max([view.token, *(grant.token for grant in view.grants)])
        view.epoch = max(view.epoch, split_token(view.token)[0])  # never below a token issued
        try:
            view.order = parse_order(bag.get(KEY_ORDER))
        except RollingOpsDecodingError as error:
            view._bad(f"bad {KEY_ORDER} (rebuilt): {error}")
        mode = bag.get(KEY_MODE)
        view.mode = (
            ProcessingBackend.ETCD
            if mode == ProcessingBackend.ETCD.value
            else ProcessingBackend.PEER
        )
        if mode not in (None, ProcessingBackend.PEER.value, ProcessingBackend.ETCD.value):
            view._bad(f"unknown {KEY_MODE} {short(mode)}; reading it as peer")
        return view

    def _more_grants(self, raw: str | None) -> list[Grant]:
        """Decode `rollingops-more-grants` (a JSON array of grants); a bad entry is skipped."""
        if not raw:
            return []
        try:
            data = load_json(raw)
        except ValueError as error:
            self._bad(f"bad {KEY_MORE_GRANTS} (treated as released): {error}")
            return []
        if not isinstance(data, list):
            self._bad(f"bad {KEY_MORE_GRANTS} (treated as released): not a JSON array")
            return []
        grants: list[Grant] = []
        entries = cast("list[object]", data)  # JSON values, each checked by Grant.decode
        for entry in entries:
            try:
                grants.append(Grant.decode(canonical_json(entry)))
            except (RollingOpsDecodingError, TypeError, ValueError) as error:
                self._bad(f"bad entry in {KEY_MORE_GRANTS} (treated as released): {error}")
        return grants

    @property
    def grant(self) -> Grant | None:
        """The oldest outstanding grant (None when no unit holds the peer lock)."""
        return self.grants[0] if self.grants else None

    def grant_of(self, unit: str) -> Grant | None:
        """The outstanding grant of `unit`, if any (a unit holds at most one)."""
        return next((grant for grant in self.grants if grant.unit == unit), None)

    def switch_mode(self, mode: ProcessingBackend) -> None:
        """Leader: run the application on `mode` from now on, in a new fencing epoch.

        At MAX_EPOCH (only ever written by hand) it stays in its mode: no new epoch is left.
        """
        if self.epoch >= MAX_EPOCH:
            logger.error("fencing epoch %s is the last one: staying on %s", self.epoch, self.mode)
            return
        self.mode = mode
        self.epoch += 1

    def next_token(self) -> int:
        """The token of the next peer grant: above every token issued so far, in this epoch."""
        return max(self.token + 1, make_token(self.epoch, 1))

    def write(self, bag: MutableMapping[str, str]) -> None:
        values = {
            KEY_VERSION: APP_WIRE_VERSION,
            KEY_EPOCH: str(self.epoch),
            KEY_TOKEN: str(self.token),
            KEY_ORDER: canonical_json(self.order or []),
            KEY_MODE: self.mode.value,
        }
        for key, value in values.items():
            if bag.get(key) != value:
                bag[key] = value
        if self.grant is None:
            bag.pop(KEY_GRANT, None)
        elif bag.get(KEY_GRANT) != self.grant.encode():
            bag[KEY_GRANT] = self.grant.encode()
        more = [dataclasses.asdict(grant) for grant in self.grants[1:]]
        if not more:
            bag.pop(KEY_MORE_GRANTS, None)
        elif bag.get(KEY_MORE_GRANTS) != canonical_json(more):
            bag[KEY_MORE_GRANTS] = canonical_json(more)


def is_granted(app: AppView, unit: UnitView) -> bool:
    """Whether `unit` holds a peer grant it has not acknowledged yet."""
    grant = app.grant_of(unit.name)
    if grant is None:
        return False
    return unit.done is None or unit.done.token < grant.token


Callback = Callable[..., Any]


def execute_grant(
    unit: UnitView,
    grant: Grant,
    callbacks: Mapping[str, Callback],
    run: Callable[[LockGrant, Callback, dict[str, Any]], OperationResult],
) -> Done:
    """Run the queue head of `unit` under `grant`; update the queue; return the acknowledgement.

    `run` calls the callback and maps its outcome (return value or exception) to a result. The op
    is dropped when its callback is unknown or its retries are exhausted; dequeued on release.
    """
    if not unit.queue:
        unit.done = Done(grant.token, None, DONE_NO_OP)
        unit.last_result = DONE_NO_OP
        return unit.done
    op = unit.queue[0]
    callback = callbacks.get(op.callback_id)
    if callback is None:
        logger.error(
            "unknown callback_id %r for op %s#%s: dropping it and releasing the lock",
            op.callback_id,
            unit.name,
            op.id,
        )
        unit.queue.pop(0)
        result = DONE_MISSING_CALLBACK
    else:
        op.attempt += 1
        grant_info = LockGrant(
            ProcessingBackend.PEER, grant.token, f"{unit.name}#{op.id}", op.callback_id, op.attempt
        )
        outcome = run(grant_info, callback, dict(op.kwargs))
        result = outcome.value
        if outcome is OperationResult.RELEASE:
            unit.queue.remove(op)
        elif op.exhausted:
            logger.warning(
                "op %s#%s (%s) failed %d time(s), its max_retry=%s is used up: dropping it",
                unit.name,
                op.id,
                op.callback_id,
                op.attempt,
                op.max_retry,
            )
            unit.queue.remove(op)
            result = DONE_DROPPED
    unit.done = Done(grant.token, op.id, result)
    unit.last_result = result
    return unit.done


def not_granted(unit: UnitView, grant: Grant) -> Done:
    """Acknowledge a grant this unit cannot use (e.g. it is not on the peer backend)."""
    unit.done = Done(grant.token, None, DONE_NOT_GRANTED)
    return unit.done


@dataclasses.dataclass
class ScheduleOutcome:
    """What the leader's scheduling pass did (for logs, tests and the wake-up decision)."""

    released: list[Grant] = dataclasses.field(default_factory=list[Grant])
    granted: list[Grant] = dataclasses.field(default_factory=list[Grant])


def schedule(
    app: AppView,
    units: Mapping[str, UnitView],
    *,
    may_grant: bool,
    max_parallel: int = 1,
    halt: Callable[[list[Grant]], bool] | None = None,
) -> ScheduleOutcome:
    """Leader only: release finished or stale grants, then grant next units while allowed.

    `units` holds every current member (the departing unit excluded). `may_grant` is False while
    the cross-backend barrier is closed (some unit may still run under the etcd lock) or the
    operator paused the lock. At most `max_parallel` grants are outstanding after the pass; a
    lower value than the grants outstanding (changed mid-roll) revokes none: it applies as they
    are released. `halt(released)`, called once the ended grants are released, returns True
    to grant nothing in this pass (the leader's failure count paused the lock).
    """
    outcome = ScheduleOutcome()
    hold_again: list[UnitView] = []
    for grant in list(app.grants):
        holder = units.get(grant.unit)
        if holder is None:
            logger.info("releasing grant %s of %s: it left the relation", grant.token, grant.unit)
        elif holder.backend is not ProcessingBackend.PEER or not holder.readable:
            logger.info(
                "releasing grant %s of %s: not on the peer backend", grant.token, grant.unit
            )
        elif holder.done is not None and holder.done.token >= grant.token:
            if holder.done.result == OperationResult.RETRY_HOLD.value and holder.queue:
                hold_again.append(holder)
        else:
            continue
        app.grants.remove(grant)
        outcome.released.append(grant)

    order = _update_order(app, units)
    if halt is not None and halt(outcome.released):
        return outcome
    while may_grant and len(app.grants) < max_parallel:
        holding = {grant.unit for grant in app.grants}
        if hold_again:
            chosen: UnitView | None = hold_again.pop(0)
        else:
            chosen = _next_unit(order, units, holding)
        if chosen is None:
            break
        app.token = app.next_token()
        head = chosen.queue[0].id if chosen.queue else None
        granted = Grant(chosen.name, app.token, head)
        app.grants.append(granted)
        outcome.granted.append(granted)
        if chosen.name in order:
            order.remove(chosen.name)
        logger.info("granted the lock to %s (token %s, op %s)", chosen.name, app.token, head)
    return outcome


def _update_order(app: AppView, units: Mapping[str, UnitView]) -> list[str]:
    """FIFO of the leader's first sighting of each fresh peer request (ties: by unit number).

    Only units on the peer backend count: the queue of a unit on etcd is local (the leader's own
    included), so ordering it would rewrite the app databag, and wake every unit, per request.
    """
    holders = {grant.unit for grant in app.grants}

    def requesting(unit: UnitView) -> bool:
        return (
            unit.readable
            and unit.backend is ProcessingBackend.PEER
            and unit.intent is Intent.REQUEST
        )

    order = [name for name in (app.order or []) if name in units and requesting(units[name])]
    fresh = sorted(
        (
            name
            for name, unit in units.items()
            if requesting(unit) and name not in order and name not in holders
        ),
        key=unit_sort_key,
    )
    order.extend(fresh)
    app.order = order
    return order


def _next_unit(
    order: Iterable[str], units: Mapping[str, UnitView], holding: Collection[str] = ()
) -> UnitView | None:
    """Fresh requests first (FIFO), then retries (lowest token of the last attempt first).

    Units in `holding` (they hold a grant already) are skipped.
    """
    for name in order:
        unit = units[name]
        if unit.backend is ProcessingBackend.PEER and name not in holding:
            return unit
    retries = [
        unit
        for unit in units.values()
        if unit.readable
        and unit.name not in holding
        and unit.backend is ProcessingBackend.PEER
        and unit.intent in (Intent.RETRY_RELEASE, Intent.RETRY_HOLD)
    ]
    if not retries:
        return None
    return min(retries, key=lambda u: (u.done.token if u.done else 0, unit_sort_key(u.name)))
