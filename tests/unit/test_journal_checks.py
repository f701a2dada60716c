"""The integration tests' journal checker (tests/integration/journal_checks.py), tested here.

The checker decides whether a real deployment restarted one unit at a time, so it must catch every
kind of wrong journal: overlaps, a unit missing or run twice, a failed operation, tokens that go
backwards, unreadable entries. Its input format is checked against the real src/journal.py.
"""

from __future__ import annotations

import datetime
import json

import pytest

import journal
from tests.integration import journal_checks as jc

T0 = datetime.datetime(2025, 5, 1, 10, 0, 0, tzinfo=datetime.timezone.utc)
UNITS = {"demo/0", "demo/1", "demo/2"}


def entry(unit, start, end, *, token=None, result="ok", operation="restart", engine="v0"):
    """A journal line as src/journal.py writes it, times given in seconds after T0."""
    return {
        "unit": unit,
        "operation": operation,
        "engine": engine,
        "token": token,
        "start": (T0 + datetime.timedelta(seconds=start)).isoformat(timespec="microseconds"),
        "end": (T0 + datetime.timedelta(seconds=end)).isoformat(timespec="microseconds"),
        "result": result,
    }


def rolling(*spans, **kwargs):
    """Entries for demo/0, demo/1, ... with the given (start, end) spans and tokens 1, 2, ..."""
    return jc.parse(
        entry(f"demo/{n}", start, end, token=n + 1, **kwargs)
        for n, (start, end) in enumerate(spans)
    )


def test_one_at_a_time_has_no_problems():
    intervals = rolling((0, 2), (2.5, 4), (4.2, 6))
    assert jc.problems(intervals, units=UNITS) == []
    jc.assert_one_at_a_time(intervals, units=UNITS)


def test_touching_intervals_do_not_overlap():
    assert jc.problems(rolling((0, 2), (2, 4), (4, 6)), units=UNITS) == []


def test_overlap_is_reported_with_its_length_and_shown_in_the_timeline():
    intervals = rolling((0, 2), (1.5, 4), (4.5, 6))
    found = jc.problems(intervals, units=UNITS)
    assert found == ["demo/0 restart v0 #1 and demo/1 restart v0 #2 overlap by 0.500 s"]
    with pytest.raises(AssertionError) as raised:
        jc.assert_one_at_a_time(intervals, units=UNITS)
    message = str(raised.value)
    assert "overlap by 0.500 s" in message
    overlapping = [line for line in message.splitlines() if "<- overlaps" in line]
    assert [line.split()[0] for line in overlapping] == ["demo/0", "demo/1"]


def test_a_long_interval_containing_another_is_an_overlap():
    intervals = rolling((0, 10), (2, 3), (11, 12))
    assert jc.overlapping_pairs(intervals) == [(intervals[0], intervals[1])]


def test_skew_tolerates_small_overlaps_only():
    intervals = rolling((0, 2), (1.95, 4), (4, 6))
    assert jc.problems(intervals, units=UNITS, skew=0.1) == []
    assert len(jc.problems(intervals, units=UNITS, skew=0.0)) == 1
    assert len(jc.problems(rolling((0, 2), (1.5, 4), (4, 6)), units=UNITS, skew=0.1)) == 1


def test_missing_duplicate_and_unexpected_units():
    intervals = jc.parse(
        [
            entry("demo/0", 0, 1, token=1),
            entry("demo/0", 2, 3, token=2),
            entry("demo/7", 4, 5, token=3),
        ]
    )
    assert jc.problems(intervals, units=UNITS) == [
        "demo/1 never ran",
        "demo/2 never ran",
        "demo/0 ran 2 times",
        "demo/7 ran but was not expected to",
    ]


def test_a_removed_unit_may_be_missing_but_not_doubled():
    intervals = rolling((0, 1), (2, 3))  # demo/0 and demo/1; demo/2 was removed
    assert jc.problems(intervals, units={"demo/0", "demo/1"}, may_be_missing={"demo/2"}) == []
    twice = jc.parse([entry("demo/2", 0, 1), entry("demo/2", 2, 3), entry("demo/0", 4, 5)])
    assert jc.problems(twice, units={"demo/0"}, may_be_missing={"demo/2"}) == [
        "demo/2 ran 2 times"
    ]


def test_failed_operation_is_a_problem():
    intervals = jc.parse([entry("demo/0", 0, 1, result="failed")])
    assert jc.problems(intervals, units={"demo/0"}) == [
        "demo/0 restart v0 ended with result 'failed'"
    ]


def test_tokens_must_increase_with_time():
    backwards = jc.parse(
        [entry("demo/0", 0, 1, token=5), entry("demo/1", 2, 3, token="4"), entry("demo/2", 4, 5)]
    )
    assert jc.problems(backwards, units=UNITS) == [
        "fencing token does not increase: demo/0 restart v0 #5 then demo/1 restart v0 #4"
    ]
    assert jc.problems(backwards, units=UNITS, check_tokens=False) == []
    repeated = jc.parse([entry("demo/0", 0, 1, token=3), entry("demo/1", 2, 3, token=3)])
    assert len(jc.problems(repeated, units={"demo/0", "demo/1"})) == 1


def test_opaque_tokens_must_be_unique():
    stamps = jc.parse(
        [entry("demo/0", 0, 1, token="2025-05-01T10:00:00"), entry("demo/1", 2, 3, token="x")]
    )
    assert jc.problems(stamps, units={"demo/0", "demo/1"}) == []
    reused = jc.parse([entry("demo/0", 0, 1, token="a"), entry("demo/1", 2, 3, token="a")])
    assert jc.problems(reused, units={"demo/0", "demo/1"}) == ["token 'a' used by 2 operations"]


def test_select_keeps_one_operation_and_engine_in_journal_order():
    intervals = jc.parse(
        [
            entry("demo/0", 0, 1, engine="v0"),
            entry("demo/0", 2, 3, operation="upgrade", engine="upgrade"),
            entry("demo/1", 4, 5, engine="coordinator"),
            entry("demo/2", 6, 7, engine="v0"),
        ]
    )
    assert [i.index for i in jc.select(intervals, engine="v0")] == [0, 3]
    assert [i.index for i in jc.select(intervals, operation="restart")] == [0, 2, 3]
    assert [i.index for i in jc.select(intervals, operation="upgrade", engine="v0")] == []


def test_unreadable_entries_are_all_named():
    good = entry("demo/0", 0, 1)
    bad = [
        good,
        {k: v for k, v in good.items() if k != "end"},
        {**good, "start": "yesterday"},
        {**good, "start": "2025-05-01T10:00:00"},
        {**good, "start": good["end"], "end": good["start"]},
        {**good, "end": 17},
    ]
    with pytest.raises(jc.JournalError) as raised:
        jc.parse(bad)
    message = str(raised.value)
    assert "entry 0" not in message
    for index, words in [
        (1, "missing end"),
        (2, "not ISO 8601"),
        (3, "no time zone"),
        (4, "ends before it starts"),
        (5, "not a timestamp"),
    ]:
        assert f"entry {index}: " in message
        assert words in message


def test_utc_z_suffix_is_accepted():
    (interval,) = jc.parse([{**entry("demo/0", 0, 1), "start": "2025-05-01T10:00:00Z"}])
    assert interval.start == T0


def test_timeline_draws_each_interval_on_one_axis():
    intervals = rolling((0, 3), (3, 6), (6, 12))
    chart = jc.timeline(intervals, width=12).splitlines()
    assert chart[0] == f"0.000 s = {T0.isoformat()}; one column = 1.000 s"
    bars = [line.split("|")[1] for line in chart[1:]]
    assert bars == ["####........", "...####.....", "......######"]
    assert chart[1].endswith("0.000 ->   3.000 ok")
    assert jc.timeline([]) == "(no operations in the journal)"


def test_reads_what_the_real_journal_writes(tmp_path, monkeypatch):
    """The checker's input format is src/journal.py's output, read back with journal.read."""
    monkeypatch.setenv("COORDINATED_OPS_ROOT", str(tmp_path / "root"))
    share = tmp_path / "share"
    for n, unit in enumerate(sorted(UNITS)):
        with journal.operation(unit, "restart", "v0", token=n + 1, dirs=[share]):
            pass
    with pytest.raises(RuntimeError), journal.operation("demo/3", "restart", "v0", dirs=[share]):
        raise RuntimeError("the restart failed")
    lines = (share / journal.JOURNAL_NAME).read_text().splitlines()
    assert len(lines) == 4
    intervals = jc.parse(journal.read(share / journal.JOURNAL_NAME))
    assert [json.loads(line)["unit"] for line in lines] == [i.unit for i in intervals]
    assert jc.problems(intervals[:3], units=UNITS) == []
    assert jc.problems(intervals, units=UNITS) == [
        "demo/3 ran but was not expected to",
        "demo/3 restart v0 ended with result 'failed'",
    ]
