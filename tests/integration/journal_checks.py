"""Check an operation journal: every unit exactly once, no two operations at the same time.

The demo charm appends one JSON line per disruptive operation to a journal (src/journal.py):
`{"unit", "operation", "engine", "token", "start", "end", "result"}`, with ISO 8601 times. When an
NFS share is mounted, every unit appends to the same file on the share, so that one file holds
every unit's intervals. This module is the judge of such a file; it is pure (no Juju, no I/O), so
the integration tests use it on a real journal and tests/unit/test_journal_checks.py tests it here.

    entries = [json.loads(line) for line in text.splitlines()]
    intervals = select(parse(entries), operation="restart", engine="v0")
    assert_one_at_a_time(intervals, units={"demo/0", "demo/1", "demo/2"})

`assert_one_at_a_time` raises an AssertionError that lists every problem and ends with a text
timeline of the intervals, which is what one wants to read when a rolling operation went wrong:

    0.000 s = 2025-05-01T10:00:00+00:00; one column = 0.125 s
    demo/0  restart v0 #1 |#######.................|   0.000 ->   0.875 ok
    demo/1  restart v0 #2 |......#######...........|   0.750 ->   1.625 ok  <- overlaps demo/0
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence

FIELDS = ("unit", "operation", "engine", "start", "end", "result")


class JournalError(ValueError):
    """An entry cannot be read as an interval (missing field, bad time, end before start)."""


@dataclasses.dataclass(frozen=True)
class Interval:
    """One journal entry: `unit` ran `operation` under `engine` from `start` to `end`."""

    unit: str
    operation: str
    engine: str
    token: int | str | None
    start: datetime.datetime
    end: datetime.datetime
    result: str
    index: int  # position of the entry in the journal (0-based), to tell repeated runs apart

    def label(self) -> str:
        """`demo/1 restart v0 #7` (the token is left out when there is none)."""
        token = "" if self.token is None else f" #{self.token}"
        return f"{self.unit} {self.operation} {self.engine}{token}"


def _parse_time(value: object, field: str, index: int) -> datetime.datetime:
    if not isinstance(value, str):
        raise JournalError(f"entry {index}: {field!r} is not a timestamp: {value!r}")
    try:
        # Python 3.10's fromisoformat does not accept a trailing "Z".
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise JournalError(f"entry {index}: {field!r} is not ISO 8601: {value!r}") from None
    if moment.tzinfo is None:
        raise JournalError(f"entry {index}: {field!r} has no time zone: {value!r}")
    return moment


def parse(entries: Iterable[Mapping]) -> list[Interval]:
    """Turn journal entries into intervals; raise JournalError naming every unreadable entry."""
    intervals, errors = [], []
    for index, entry in enumerate(entries):
        try:
            missing = [field for field in FIELDS if field not in entry]
            if missing:
                raise JournalError(f"entry {index}: missing {', '.join(missing)}: {dict(entry)}")
            start = _parse_time(entry["start"], "start", index)
            end = _parse_time(entry["end"], "end", index)
            if end < start:
                raise JournalError(f"entry {index}: ends before it starts: {dict(entry)}")
        except JournalError as error:
            errors.append(str(error))
            continue
        intervals.append(
            Interval(
                unit=str(entry["unit"]),
                operation=str(entry["operation"]),
                engine=str(entry["engine"]),
                token=entry.get("token"),
                start=start,
                end=end,
                result=str(entry["result"]),
                index=index,
            )
        )
    if errors:
        raise JournalError("; ".join(errors))
    return intervals


def select(
    intervals: Iterable[Interval], *, operation: str | None = None, engine: str | None = None
) -> list[Interval]:
    """The intervals of one operation and/or one engine, in journal order."""
    return [
        interval
        for interval in intervals
        if (operation is None or interval.operation == operation)
        and (engine is None or interval.engine == engine)
    ]


def overlap_seconds(a: Interval, b: Interval) -> float:
    """How long `a` and `b` ran at the same time (0 when they did not)."""
    shared = min(a.end, b.end) - max(a.start, b.start)
    return max(shared.total_seconds(), 0.0)


def overlapping_pairs(
    intervals: Sequence[Interval], *, skew: float = 0.0
) -> list[tuple[Interval, Interval]]:
    """Every pair that ran at the same time for longer than `skew` seconds.

    `skew` is the clock difference tolerated between machines (each unit stamps its own entries);
    0 means strict: intervals that merely touch (one ends at the instant the next starts) are fine.
    """
    return [
        (a, b)
        for a, b in itertools.combinations(sorted(intervals, key=lambda i: i.start), 2)
        if overlap_seconds(a, b) > skew
    ]


def _token_problems(intervals: Sequence[Interval]) -> list[str]:
    tokens = [
        (i, i.token) for i in sorted(intervals, key=lambda i: i.start) if i.token is not None
    ]
    numbers = [(i, int(t)) for i, t in tokens if isinstance(t, int) or str(t).isdigit()]
    problems = []
    if len(numbers) == len(tokens):  # all numeric: fencing tokens must increase with time
        for (earlier, a), (later, b) in itertools.pairwise(numbers):
            if b <= a:
                problems.append(
                    f"fencing token does not increase: {earlier.label()} then {later.label()}"
                )
    else:  # opaque tokens (e.g. grant timestamps): at least never reused
        for token, count in Counter(str(t) for _, t in tokens).items():
            if count > 1:
                problems.append(f"token {token!r} used by {count} operations")
    return problems


def problems(
    intervals: Sequence[Interval],
    *,
    units: Collection[str],
    may_be_missing: Collection[str] = (),
    skew: float = 0.0,
    check_tokens: bool = True,
) -> list[str]:
    """Everything wrong with one rolling operation, as sentences (empty when all is well).

    - every unit in `units` ran exactly once, except those in `may_be_missing` (removed units),
      which ran at most once; no other unit ran;
    - every operation succeeded (`result` "ok");
    - no two intervals overlap by more than `skew` seconds;
    - with `check_tokens`, fencing tokens increase in start order (unique when not numbers).
    """
    found = []
    runs = Counter(interval.unit for interval in intervals)
    for unit in sorted(units):
        if runs[unit] == 0 and unit not in may_be_missing:
            found.append(f"{unit} never ran")
    for unit, count in sorted(runs.items()):
        if unit not in units and unit not in may_be_missing:
            found.append(f"{unit} ran but was not expected to")
        if count > 1:
            found.append(f"{unit} ran {count} times")
    for interval in intervals:
        if interval.result != "ok":
            found.append(f"{interval.label()} ended with result {interval.result!r}")
    for a, b in overlapping_pairs(intervals, skew=skew):
        found.append(f"{a.label()} and {b.label()} overlap by {overlap_seconds(a, b):.3f} s")
    if check_tokens:
        found.extend(_token_problems(intervals))
    return found


def timeline(intervals: Sequence[Interval], *, width: int = 60) -> str:
    """A text chart of the intervals on one time axis, overlaps called out at the line's end."""
    if not intervals:
        return "(no operations in the journal)"
    ordered = sorted(intervals, key=lambda i: (i.start, i.index))
    origin = ordered[0].start
    span = max((i.end - origin).total_seconds() for i in ordered) or 1e-6
    scale = span / width  # seconds per column
    label_width = max(len(i.label()) for i in ordered)
    clashes = {(a.index, b.index) for a, b in overlapping_pairs(ordered) if a.index != b.index}
    lines = [f"0.000 s = {origin.isoformat()}; one column = {scale:.3f} s"]
    for interval in ordered:
        begin = (interval.start - origin).total_seconds()
        finish = (interval.end - origin).total_seconds()
        first = min(int(begin / scale), width - 1)
        last = max(min(int(finish / scale), width - 1), first)
        bar = "." * first + "#" * (last - first + 1) + "." * (width - last - 1)
        others = [o.unit for o in ordered if (interval.index, o.index) in clashes]
        others += [o.unit for o in ordered if (o.index, interval.index) in clashes]
        note = f"  <- overlaps {', '.join(others)}" if others else ""
        lines.append(
            f"{interval.label():<{label_width}} |{bar}| {begin:7.3f} -> {finish:7.3f} "
            f"{interval.result}{note}"
        )
    return "\n".join(lines)


def assert_one_at_a_time(intervals: Sequence[Interval], **expectations) -> None:
    """Raise AssertionError listing `problems(...)` and the timeline, unless there are none."""
    found = problems(intervals, **expectations)
    if found:
        listing = "\n".join(f"- {problem}" for problem in found)
        raise AssertionError(
            f"the operations did not run one at a time:\n{listing}\n{timeline(intervals)}"
        )
