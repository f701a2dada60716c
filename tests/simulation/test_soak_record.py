"""A soak with --record resumes where a stopped run left off and summarises every schedule."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.simulation import soak

OPTIONS = ["--engine", "v0", "--units", "2", "--faults", "all", "--juju", "4", "--json"]
SAME_AS_ONE_RUN = (
    "schedules",
    "violations",
    "liveness_failures",
    "uncaught_errors",
    "combinations",
    "hooks_total_p50",
    "hooks_per_unit_max",
    "handoff_hooks_p50",
    "makespan_ratio_p50",
    "stuck_then_resolved",
    "served_after_update_status",
)


@pytest.fixture
def _code(monkeypatch):
    """The record's code identity, fixed: these tests must not depend on the checkout's state."""
    monkeypatch.setattr(soak, "code_identity", lambda: "lib=test")


def _soak(*more: str) -> dict:
    return soak.soak(soak.build_parser().parse_args([*OPTIONS, *more]))


@pytest.mark.usefixtures("_code")
def test_a_resumed_soak_runs_only_the_missing_schedules_and_sums_them_all(tmp_path):
    record = tmp_path / "v0.jsonl"
    first = _soak("--seeds", "4", "--record", str(record))
    assert (first["schedules"], first["resumed"]) == (4, 0)

    # Killed while writing the last line: the cut line is dropped and its schedule runs again.
    text = record.read_text()
    record.write_text(text[: text.rindex('{"')] + '{"faults": [], "fig')
    resumed = _soak("--seeds", "6", "--record", str(record))
    assert (resumed["schedules"], resumed["resumed"]) == (6, 3)

    whole = _soak("--seeds", "6")
    for key in SAME_AS_ONE_RUN:
        assert resumed[key] == whole[key], key
    assert resumed["schedule_seconds"] > 0
    lines = record.read_text().splitlines()
    assert json.loads(lines[0])["code"] == "lib=test"
    indices = [json.loads(line)["index"] for line in lines[1:] if line.endswith("}")]
    assert sorted(indices) == [0, 1, 2, 3, 4, 5]  # each schedule once, the cut one included


@pytest.mark.usefixtures("_code")
def test_a_record_of_other_options_other_code_or_no_record_at_all_is_refused(
    tmp_path, monkeypatch
):
    record = tmp_path / "v0.jsonl"
    _soak("--seeds", "1", "--record", str(record))
    with pytest.raises(SystemExit, match="records another soak"):
        _soak("--seeds", "1", "--units", "3", "--record", str(record))
    monkeypatch.setattr(soak, "code_identity", lambda: "lib=changed")
    with pytest.raises(SystemExit, match="records another soak"):
        _soak("--seeds", "1", "--record", str(record))
    stranger = tmp_path / "notes.txt"
    stranger.write_text("not json\n")
    with pytest.raises(SystemExit, match="is not a soak record"):
        _soak("--seeds", "1", "--record", str(stranger))
    assert stranger.read_text() == "not json\n"


def test_the_code_identity_names_the_committed_trees_and_refuses_uncommitted_changes(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the code identity reads the trees from git")

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *argv], capture_output=True, text=True, check=True
        ).stdout

    git("init", "-q")
    for name in soak.SOAKED_CODE:
        (tmp_path / name).mkdir()
        (tmp_path / name / "code.py").write_text(f"# {name}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "code")
    identity = soak.code_identity(tmp_path)
    assert identity.startswith("lib=") and identity.count("=") == len(soak.SOAKED_CODE)

    (tmp_path / "src" / "code.py").write_text("# changed\n")
    with pytest.raises(SystemExit, match="uncommitted changes"):
        soak.code_identity(tmp_path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "changed")
    assert soak.code_identity(tmp_path) != identity
