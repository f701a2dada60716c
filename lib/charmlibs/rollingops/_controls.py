"""Operator controls: pause and resume, the current roll's progress, halting after failures.

State (peer relation, application databag, written by the leader only; optional keys, so no
version bump: a reader without them ignores them):

    rollingops-paused   why the lock is paused (free text, at most PAUSE_REASON_LIMIT characters),
                        absent when it is not. No peer grant is issued while it is set.
    rollingops-roll     {"done": 3, "failed": ["app/4"], "strikes": 1, "active": true}: the
                        current (or last) roll, as the leader saw the peer grants end. `done`
                        counts operations released, `failed` names each failed attempt's unit
                        (retry-release, dropped, missing callback), `strikes` counts the
                        failures since the roll began or was last resumed. A roll begins with
                        the first grant after one ended; it ends (`active` false, counts kept
                        for `rolling_status`) when nothing is granted or queued and the lock is
                        not paused.

    rollingops-etcd-paused  "true" while etcd may hold our pause key (below).
    rollingops-window   "closed" while the leader last found the maintenance window closed.

Maintenance window (`maintenance_window="02:00-04:00"`, daily, UTC; it may span midnight): only
the granting side looks at a clock, and only at its own: the leader, in its scheduling pass. No
time is ever written for another unit to compare. On the peer backend the leader grants nothing
outside the window; on etcd the leader puts the pause key while the window is closed (so the
etcd transaction refuses every slot) and deletes it when it opens. The edges take effect at the
leader's next hook (update-status comes every few minutes): a grant issued just before the end
runs to completion.

On the etcd backend the pause is also the key `P paused/<model uuid>.<app>` (see `_etcd_lock`):
every async acquire transaction requires it absent, so a paused application takes no new slot,
and deleting it (resume) wakes the waiters like any release. The leader writes it in the pause
action (and sets `rollingops-etcd-paused`); a resume deletes it (on the peer backend, when etcd
answers). The application never returns to etcd while paused or while the flag is set (the
leader retries the delete first), so the two places agree.

A hook that put the key can still fail afterwards (the action raises later, leadership moves
mid-hook): Juju discards its databag writes, flag and pause included, but etcd keeps the key,
and every waiter would wait for a resume nobody can run ("not paused"). So the unit marks the
put in a local file first (`_files.mark_pause`: files outside the databags survive a failed
hook), and a new leader marks too (it cannot know what its predecessor left). A marked unit is
not quiet; the leader's next reconcile deletes the key when nothing stops the lock (deleting
an absent key writes nothing in etcd) and then drops the mark; the mark also holds the return
to etcd like the flag. A marked unit that is no longer leader drops its mark: the new
leader's own mark covers the key. The leader deletes only its own key (value
`PAUSED_BY_LEADER`, below), so this clean-up never lifts a halt.

Counts and halting on the etcd backend: the roll record is the etcd key `P roll/<model
uuid>.<app>` (no lease; same JSON and same strict reader as `rollingops-roll`), written by the
workers, never by a peer write (a unit on etcd writes nothing to the peer relation per grant).
The worker that ends a grant records its result in the transaction that deletes its slot (see
`EtcdLock.release_recorded`): "the slot is still mine (fencing token) and the record is as I
read it (mod_revision): put the new record, delete the slot, and, when the strikes reach
`halt_after_failures`, put the pause key with the halt reason", re-read and retried on a
compare failure. So no slot can be granted between a failure and the halt, and a stale token
records nothing. The pause key's value says who put it: `PAUSED_BY_LEADER` (pause action,
closed window: the leader deletes only that value) or a halt reason (deleted by `resume` only,
which resets the strikes in the same transaction). Differences from the peer backend: a roll
begins with the first result recorded while the record is inactive (not with the first grant),
and ends at a release that leaves no slot, no ticket and no pending work of this application
and no pause key; a unit between its release and its next ticket (a few milliseconds) is not
seen, so a roll can end and a new one begin there (its counts, strikes included, restart,
as they do on the peer backend when a roll ends). A halt in etcd is not copied into the
peer relation: `rolling_status` and `resume` read etcd for it, and a unit whose worker waits on it
shows it in `paused_reason` (the worker writes the pause key's value into worker-status.json as
each failed attempt reads it; see `_worker`); if the application falls back to
the peer backend meanwhile, the peer grants count a roll of their own, and the etcd halt holds
again when it returns to etcd, until `resume`.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
from collections.abc import Mapping, MutableMapping

from ._models import (
    DONE_DROPPED,
    DONE_MISSING_CALLBACK,
    RollingOpsDecodingError,
    canonical_json,
    is_json_object,
    is_str_list,
    load_json,
    printable,
    short,
)

logger = logging.getLogger(__name__)

KEY_PAUSED = "rollingops-paused"
KEY_ROLL = "rollingops-roll"
KEY_ETCD_PAUSED = "rollingops-etcd-paused"
KEY_WINDOW = "rollingops-window"
WINDOW_CLOSED = "outside the maintenance window"
PAUSE_REASON_LIMIT = 200
PAUSED_BY_LEADER = "paused"  # the etcd pause key's value when the leader put it (not a halt)
FAILED_LIMIT = 50  # `Roll.failed` keeps the last 50 failed attempts (bounded record)
UNIT_NAME_LIMIT = 60  # a unit name read back from a record is shown cut to this
FAILED_RESULTS = frozenset({"retry-release", DONE_DROPPED, DONE_MISSING_CALLBACK})
DONE_RESULT = "release"


def paused(bag: Mapping[str, str]) -> str | None:
    """Why the lock is paused, or None."""
    return bag.get(KEY_PAUSED) or None


def set_paused(bag: MutableMapping[str, str], reason: str | None) -> None:
    """Pause with `reason` (None: resume)."""
    if reason is None:
        bag.pop(KEY_PAUSED, None)
    elif bag.get(KEY_PAUSED) != reason[:PAUSE_REASON_LIMIT]:
        bag[KEY_PAUSED] = reason[:PAUSE_REASON_LIMIT]


def parse_window(text: str) -> tuple[int, int]:
    """The window "HH:MM-HH:MM" (UTC) in minutes since midnight; ValueError says what is wrong."""
    match = re.fullmatch(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})", text.strip())
    if match is None:
        raise ValueError(f"{short(text)} is not a daily UTC window like 02:00-04:00")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"{short(text)}: hours are 00-23 and minutes 00-59")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"{short(text)}: the window is empty (leave it empty for always)")
    return start, end


def utcnow() -> datetime.datetime:
    """The current time in UTC (one place, so tests can set it)."""
    return datetime.datetime.now(datetime.timezone.utc)


def window_open(window: str | None, now: datetime.datetime | None = None) -> bool:
    """Whether `now` (default: this machine's clock, UTC) is inside `window` (None: always)."""
    if not window:
        return True
    start, end = parse_window(window)
    now = now or utcnow()
    minute = now.hour * 60 + now.minute
    return start <= minute < end if start < end else (minute >= start or minute < end)


def _count(value: object) -> bool:
    """A JSON integer >= 0 (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclasses.dataclass
class Roll:
    """The current roll's counts (`rollingops-roll`); malformed data reads as a new roll."""

    done: int = 0
    failed: list[str] = dataclasses.field(default_factory=list[str])
    strikes: int = 0
    active: bool = False

    @classmethod
    def read(cls, bag: Mapping[str, str], errors: list[str]) -> Roll:
        return cls.parse(bag.get(KEY_ROLL), f"app databag: bad {KEY_ROLL}", errors)

    @classmethod
    def parse(cls, raw: str | None, where: str, errors: list[str]) -> Roll:
        """Decode a roll record (peer value or etcd key); malformed: logged, a new roll."""
        if not raw:
            return cls()
        try:
            data = load_json(raw)
            if not is_json_object(data):
                raise RollingOpsDecodingError("not a JSON object")
            done, strikes, failed = data.get("done"), data.get("strikes"), data.get("failed")
            active = data.get("active", False)
            if not isinstance(active, bool):
                raise RollingOpsDecodingError("active must be true or false")
            if not (_count(done) and _count(strikes)):
                raise RollingOpsDecodingError("done and strikes must be integers >= 0")
            if not is_str_list(failed):
                raise RollingOpsDecodingError("failed must be a list of unit names")
        except (ValueError, RollingOpsDecodingError) as error:
            message = f"{where} {short(raw)} (counts restart): {error}"
            logger.error("%s", message)
            errors.append(message)
            return cls()
        assert isinstance(done, int) and isinstance(strikes, int)
        units = [printable(unit, UNIT_NAME_LIMIT) for unit in failed[-FAILED_LIMIT:]]
        return cls(done, units, strikes, active)

    def to_json(self) -> str:
        return canonical_json(dataclasses.asdict(self))

    def write(self, bag: MutableMapping[str, str]) -> None:
        value = self.to_json()
        if bag.get(KEY_ROLL) != value:
            bag[KEY_ROLL] = value

    def record(self, unit: str, result: str) -> None:
        """Count one ended grant of `unit` with `result` (other results count nothing).

        `failed` keeps the last FAILED_LIMIT failed attempts (a bounded record).
        """
        if result == DONE_RESULT:
            self.done += 1
        elif result in FAILED_RESULTS:
            self.failed = [*self.failed, unit][-FAILED_LIMIT:]
            self.strikes += 1


def halt_reason(roll: Roll, halt_after: int | None) -> str | None:
    """The pause reason once `halt_after` failures happened since the roll began or resumed."""
    if halt_after is None or roll.strikes < halt_after:
        return None
    units = ", ".join(dict.fromkeys(roll.failed[-roll.strikes :]))
    return f"halted after {roll.strikes} failed operation(s): {units}"[:PAUSE_REASON_LIMIT]


@dataclasses.dataclass(frozen=True)
class RollingStatus:
    """What `RollingOpsManager.rolling_status()` reports (read-only; any unit).

    `holders`: units inside now; `queue`: the units waiting, in the order they will be granted;
    `done` / `failed`: the current roll's counts and failed units (the last FAILED_LIMIT; on
    etcd from the roll record in etcd, None when etcd could not be read); `remaining`:
    operations queued or running that this unit can see; `paused`: why the lock is paused, or
    None; `unknown`: why the answer may be incomplete.
    """

    backend: str
    holders: tuple[str, ...] = ()
    queue: tuple[str, ...] = ()
    done: int | None = None
    failed: tuple[str, ...] | None = None
    remaining: int = 0
    paused: str | None = None
    max_parallel: int = 1
    unknown: str | None = None
    window: str | None = None
    window_open: bool = True

    @property
    def summary(self) -> str:
        """One line for humans."""
        parts = [f"{self.backend} backend"]
        if self.paused:
            parts.append(f"PAUSED ({self.paused})")
        if self.window:
            state = "open" if self.window_open else "closed"
            parts.append(f"window {self.window} UTC {state}")
        inside = ", ".join(self.holders) or "none"
        parts.append(f"inside {inside} (max {self.max_parallel})")
        parts.append(
            f"{len(self.queue)} waiting" + (f": {', '.join(self.queue)}" if self.queue else "")
        )
        if self.done is not None:
            failed = f", {len(self.failed or ())} failed" if self.failed else ""
            parts.append(f"{self.done} done{failed}, {self.remaining} remaining")
        else:
            parts.append(f"{self.remaining} remaining (done/failed unknown)")
        if self.unknown:
            parts.append(f"incomplete: {self.unknown}")
        return "; ".join(parts)

    def results(self) -> dict[str, str]:
        """Flat action results (Juju action keys: lowercase, dashes)."""
        out = {
            "backend": self.backend,
            "holders": ",".join(self.holders),
            "queue": ",".join(self.queue),
            "remaining": str(self.remaining),
            "paused": "true" if self.paused else "false",
            "max-parallel": str(self.max_parallel),
            "window": self.window or "always",
            "window-open": "true" if self.window_open else "false",
            "summary": self.summary,
        }
        if self.paused:
            out["paused-reason"] = self.paused
        if self.done is not None:
            out["done"] = str(self.done)
            out["failed"] = str(len(self.failed or ()))
            out["failed-units"] = ",".join(dict.fromkeys(self.failed or ()))
        if self.unknown:
            out["unknown"] = self.unknown
        return out
