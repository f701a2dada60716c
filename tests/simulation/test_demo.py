"""`tox -e demo` as a newcomer runs it: the real CLI, its printed output and its SVG picture.

Each test runs `python -m demo` in a subprocess (as tox does) for 3 units and
reads what it printed: the exit code, the text timeline (no column may show two units inside
the critical section at once), the checks, and the SVG (it must parse as XML, with one lane per
unit). The Juju controller is simulated (jujusim); the charm is the real charm.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = "coordinated-ops"
SVG = "{http://www.w3.org/2000/svg}"
BUSY, FAULT, GONE = "█", "✗", "⊘"


def run_demo(tmp_path: pathlib.Path, *args: str) -> tuple[int, str, pathlib.Path]:
    svg = tmp_path / "timeline.svg"
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / p) for p in ("", "lib", "src"))
    proc = subprocess.run(
        [sys.executable, "-m", "demo", "--units", "3", "--svg", str(svg), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout + proc.stderr, svg


def timeline_rows(output: str) -> dict[str, str]:
    """Unit -> its row of timeline cells (the characters after the label, before the notes)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Timeline ("))
    rows: dict[str, str] = {}
    for line in lines[start + 2 :]:
        if not line.startswith(APP):
            break
        label_width = len(f"{APP}/0") + 2
        unit = line[:label_width].strip().rstrip("*")
        cells = line[label_width:]
        rows[unit] = cells.split("  t=")[0].split("  removed")[0]
    return rows


def assert_one_at_a_time(rows: dict[str, str]) -> None:
    width = max(len(r) for r in rows.values())
    for column in range(width):
        inside = [u for u, row in rows.items() if column < len(row) and row[column] == BUSY]
        assert len(inside) <= 1, f"column {column}: {inside} inside the critical section at once"


def lanes(svg: pathlib.Path) -> list[str]:
    tree = ET.parse(svg)  # noqa: S314 - our own file, just written
    return [g.get("data-unit", "") for g in tree.iter(f"{SVG}g") if g.get("class") == "lane"]


def sections(svg: pathlib.Path) -> list[ET.Element]:
    tree = ET.parse(svg)  # noqa: S314
    return [r for r in tree.iter(f"{SVG}rect") if r.get("class") == "section"]


@pytest.mark.parametrize("engine", ["rollingops", "v0"])
def test_rolling_restart_of_three_units_one_at_a_time(tmp_path, engine):
    code, out, svg = run_demo(tmp_path, "--engine", engine)

    assert code == 0, out
    assert "the charm code is the real charm" in out
    assert "--- juju status (final" in out
    rows = timeline_rows(out)
    assert sorted(rows) == [f"{APP}/{i}" for i in range(3)]
    assert_one_at_a_time(rows)
    assert all(BUSY in row for row in rows.values()), rows
    assert "✓  never two units inside the critical section at once" in out
    assert "every request served (3 operations completed)" in out
    assert f"Picture of the timeline: {svg}" in out
    assert lanes(svg) == [f"{APP}/{i}" for i in range(3)]
    assert len(sections(svg)) == 3
    if engine == "rollingops":
        assert "in-memory fake etcd" in out  # never claims a real etcd


def test_holder_removed_shows_the_recovery(tmp_path):
    code, out, svg = run_demo(tmp_path, "--engine", "v0", "--fault", "holder-removed")

    assert code == 0, out
    rows = timeline_rows(out)
    assert_one_at_a_time(rows)
    lost = [u for u, row in rows.items() if GONE in row]
    assert len(lost) == 1, rows
    assert FAULT in rows[lost[0]]  # its section was cut short
    survivors = [u for u in rows if u not in lost]
    assert all(BUSY in rows[u] for u in survivors), rows
    last_lost = rows[lost[0]].rindex(GONE)
    assert any(rows[u].rfind(BUSY) > last_lost for u in survivors)  # the lock moved on
    assert "every request served (2 operations completed)" in out
    assert lanes(svg) == [f"{APP}/{i}" for i in range(3)]
    failed = [r for r in sections(svg) if r.get("fill") == "url(#failed)"]
    assert len(failed) == 1 and failed[0].get("data-unit") == lost[0]


def test_hook_failure_is_resolved_and_the_unit_restarts_after_all(tmp_path):
    code, out, svg = run_demo(tmp_path, "--engine", "v0", "--fault", "hook-failure")

    assert code == 0, out
    victim = f"{APP}/1"
    assert f"{victim} is in error" in out
    assert f"$ juju resolved {victim}" in out
    rows = timeline_rows(out)
    assert_one_at_a_time(rows)
    assert rows[victim].index(FAULT) < rows[victim].rindex(BUSY)  # crashed, then restarted
    assert lanes(svg) == [f"{APP}/{i}" for i in range(3)]


def tokens_in_time_order(output: str) -> list[tuple[int, ...]]:
    """The `#epoch:sequence` (or `#n`) token of each section in the timeline notes, by start."""
    found = re.findall(r"t=(\d+)-\d+ #([\d:]+)", output.split("Timeline (", 1)[1])
    ordered = sorted((int(start), token) for start, token in found)
    return [tuple(int(part) for part in token.split(":")) for _, token in ordered]


def test_etcd_outage_falls_back_to_peer_and_finishes(tmp_path):
    code, out, _ = run_demo(tmp_path, "--fault", "etcd-outage")

    assert code == 0, out
    assert "now on the peer backend (was etcd)" in out
    assert_one_at_a_time(timeline_rows(out))
    assert "✓  each fencing token above those of every earlier holder" in out
    tokens = tokens_in_time_order(out)
    assert len(tokens) == 3 and tokens == sorted(set(tokens)), tokens  # etcd, then peer


def test_etcd_replaced_falls_back_and_tokens_keep_increasing(tmp_path):
    code, out, _ = run_demo(tmp_path, "--fault", "etcd-replaced")

    assert code == 0, out
    assert "etcd replaced by a new cluster" in out
    assert "now on the peer backend (was etcd)" in out
    assert "the application runs on the new etcd cluster" in out
    assert_one_at_a_time(timeline_rows(out))
    tokens = tokens_in_time_order(out)
    assert len(tokens) == 4 and tokens == sorted(set(tokens)), tokens
    assert tokens[-1][0] >= tokens[0][0] + 2  # the new cluster's grant: etcd -> peer -> etcd


def test_etcd_outage_without_etcd_is_refused_clearly(tmp_path):
    code, out, svg = run_demo(tmp_path, "--engine", "v0", "--fault", "etcd-outage")

    assert code == 2
    assert "needs etcd" in out
    assert not svg.exists()


@pytest.mark.parametrize("engine", ["rollingops", "rollingops-peer", "v0", "coordinator"])
def test_no_unit_still_shows_restarting_once_the_roll_is_over(tmp_path, engine):
    """With etcd, a unit runs two hooks per restart: its last status must not say "restarting"."""
    code, output, _ = run_demo(tmp_path, "--engine", engine)
    assert code == 0, output
    final = output[output.index("juju status (final") :].split("\n\n")[0]
    rows = [line for line in final.splitlines() if line.strip().startswith(APP + "/")]
    assert len(rows) == 3, final
    assert not [row for row in rows if "restarting" in row or "maintenance" in row], final


@pytest.mark.parametrize("engine", ["rollingops", "rollingops-peer"])
def test_max_parallel_2_lets_two_units_in_at_once_never_three(tmp_path, engine):
    code, out, _ = run_demo(tmp_path, "--engine", engine, "--max-parallel", "2")
    assert code == 0, out
    rows = timeline_rows(out)
    width = max(len(row) for row in rows.values())
    inside = [sum(col < len(row) and row[col] == BUSY for row in rows.values())
              for col in range(width)]  # fmt: skip
    assert max(inside) == 2, rows
    assert "never more than 2 units inside the critical section at once" in out
    assert "every request served (3 operations completed)" in out


def test_max_parallel_above_the_units_is_refused_clearly(tmp_path):
    code, out, _ = run_demo(tmp_path, "--max-parallel", "4")
    assert code == 2 and "--max-parallel must be between 1 and --units" in out
