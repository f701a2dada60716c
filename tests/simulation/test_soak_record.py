"""A soak with --record resumes where a stopped run left off and summarises every schedule."""

from __future__ import annotations

import json

import pytest

from tests.simulation import soak

OPTIONS = ["--engine", "v0", "--units", "2", "--faults", "all", "--juju", "4", "--json"]


def _soak(*more: str) -> dict:
    return soak.soak(soak.build_parser().parse_args([*OPTIONS, *more]))


def test_a_resumed_soak_runs_only_the_missing_schedules_and_sums_them_all(tmp_path):
    record = tmp_path / "v0.jsonl"
    first = _soak("--seeds", "4", "--record", str(record))
    assert (first["schedules"], first["resumed"]) == (4, 0)

    # A run killed mid-line leaves a cut line: dropped, and its schedule would run again.
    with record.open("a") as cut:
        cut.write('{"index": 9, "seed"')
    resumed = _soak("--seeds", "6", "--record", str(record))
    assert (resumed["schedules"], resumed["resumed"]) == (6, 4)

    whole = _soak("--seeds", "6")
    for key in ("violations", "liveness_failures", "uncaught_errors", "combinations"):
        assert resumed[key] == whole[key], key
    for key in ("hooks_total_p50", "hooks_per_unit_max", "stuck_then_resolved"):
        assert resumed[key] == whole[key], key

    lines = record.read_text().splitlines()
    assert json.loads(lines[0]) == {
        "soak": soak._record_header(soak.build_parser().parse_args([*OPTIONS, "--seeds", "6"]))[
            "soak"
        ]
    }
    indices = [json.loads(line)["index"] for line in lines[1:] if line.endswith("}")]
    assert sorted(indices) == list(range(6))


def test_a_record_of_another_soak_is_refused(tmp_path):
    record = tmp_path / "v0.jsonl"
    _soak("--seeds", "1", "--record", str(record))
    with pytest.raises(SystemExit, match="records another soak"):
        soak.soak(
            soak.build_parser().parse_args(
                ["--engine", "v0", "--units", "3", "--seeds", "1", "--record", str(record)]
            )
        )
