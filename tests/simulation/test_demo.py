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


def label_boxes(svg: pathlib.Path) -> list[tuple[float, float, float, float, str]]:
    """Every <text>'s box (x0, y0, x1, y1, text), estimated from its size and anchor.

    No font metrics here: a sans-serif character is taken as 0.6 em wide (0.64 bold), which is
    DejaVu Sans's average for this mix of lower case and digits; the box spans the ascent
    (0.78 em above the baseline) and the descent (0.22 em below).
    """
    boxes = []
    for text in ET.parse(svg).iter(f"{SVG}text"):  # noqa: S314 - our own file
        x, y = float(text.get("x", 0)), float(text.get("y", 0))
        size = float(text.get("font-size", 12))
        body = text.text or ""
        width = len(body) * size * (0.64 if text.get("font-weight") == "bold" else 0.6)
        anchor = text.get("text-anchor", "start")
        x0 = x - width / 2 if anchor == "middle" else x - width if anchor == "end" else x
        boxes.append((x0, y - 0.78 * size, x0 + width, y + 0.22 * size, body))
    return boxes


def overlapping_labels(svg: pathlib.Path) -> list[tuple[str, str]]:
    boxes = label_boxes(svg)
    return [
        (a[4], b[4])
        for i, a in enumerate(boxes)
        for b in boxes[i + 1 :]
        if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
    ]


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
    assert overlapping_labels(svg) == []
    assert "Faults that apply to this engine" in out
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
    assert overlapping_labels(svg) == []


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
    assert overlapping_labels(svg) == []


def tokens_in_time_order(output: str) -> list[tuple[int, ...]]:
    """The `#epoch:sequence` (or `#n`) token of each section in the timeline notes, by start."""
    found = re.findall(r"t=(\d+)-\d+ #([\d:]+)", output.split("Timeline (", 1)[1])
    ordered = sorted((int(start), token) for start, token in found)
    return [tuple(int(part) for part in token.split(":")) for _, token in ordered]


def test_etcd_outage_falls_back_to_peer_and_finishes(tmp_path):
    code, out, svg = run_demo(tmp_path, "--fault", "etcd-outage")

    assert code == 0, out
    assert overlapping_labels(svg) == []  # the outage's label and the request's share a row
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


def status_tables(output: str) -> list[tuple[int, list[dict[str, str]]]]:
    """Every status table the demo printed: (its line number, one {column: cell} per unit)."""
    lines = output.splitlines()
    tables = []
    for i, line in enumerate(lines):
        if not line.startswith(f"App {APP}:"):
            continue
        header = lines[i + 1]
        columns = ["Unit", "Workload", "Agent", "Lock", "Message"]
        starts = [header.index(c) for c in columns] + [10_000]
        rows = []
        for row in lines[i + 2 :]:
            if not row.startswith(f"  {APP}/"):
                break
            rows.append({c: row[starts[k] : starts[k + 1]].strip() for k, c in enumerate(columns)})
        tables.append((i, rows))
    return tables


def shows_restarting_outside_the_lock(output: str) -> list[str]:
    """Rows whose status still says the unit restarts while it is not inside the lock."""
    return [
        f"line {i}: {row}"
        for i, rows in status_tables(output)
        for row in rows
        if re.search(r"restarting|Executing", row["Message"]) and "restarting" not in row["Lock"]
    ]


@pytest.mark.parametrize("engine", ["rollingops", "rollingops-peer", "v0", "coordinator"])
def test_no_unit_still_shows_restarting_once_the_roll_is_over(tmp_path, engine):
    """With etcd, a unit runs two hooks per restart: its last status must not say "restarting".

    Every table counts, not only the final one: a unit whose restart finished never shows a
    restarting status again, and the header says the tables show committed statuses.
    """
    code, output, _ = run_demo(tmp_path, "--engine", engine, "--seed", "3")
    assert code == 0, output
    assert "Status tables show the statuses Juju has committed" in output
    final = output[output.index("juju status (final") :].split("\n\n")[0]
    rows = [line for line in final.splitlines() if line.strip().startswith(APP + "/")]
    assert len(rows) == 3, final
    assert not [row for row in rows if "restarting" in row or "maintenance" in row], final
    assert len(status_tables(output)) >= 4  # after deploy, one per restart, final
    assert shows_restarting_outside_the_lock(output) == []


ENGINE_NAMES = ["rollingops", "rollingops-peer", "v0", "coordinator"]


def test_help_explains_each_engine_and_which_faults_apply(tmp_path):
    code, out, _ = run_demo(tmp_path, "--help")

    assert code == 0, out
    for engine, library in zip(
        ENGINE_NAMES,
        ["charmlibs.rollingops, etcd", "charmlibs.rollingops, peer", "charms.rolling_ops.v0",
         "charms.coordinated_ops.v0.coordinator"],
        strict=True,
    ):  # fmt: skip
        assert re.search(rf"^  {engine} +{re.escape(library)}", out, re.MULTILINE), engine
    for fault in ("leader-removed", "holder-removed", "hook-failure"):
        assert re.search(rf"^  {fault} .*\[every engine\]$", out, re.MULTILINE), fault
    for fault in ("etcd-outage", "etcd-replaced"):
        assert re.search(rf"^  {fault} .*\[rollingops only", out, re.MULTILINE), fault
    assert "--compare" in out


def test_the_header_explains_the_engine_and_its_faults(tmp_path):
    code, out, _ = run_demo(tmp_path, "--engine", "coordinator")

    assert code == 0, out
    header = out.split("$ juju deploy", 1)[0]
    assert "How: units request named locks" in header
    assert "Faults that apply to this engine (--fault): leader-removed, holder-removed, " in header
    assert "etcd-outage" not in header


def compare_rows(output: str, fault: str) -> dict[str, tuple[list[str], list[str]]]:
    """Map engine -> (its row's cells, the lines under it) in the `=== fault: <fault>` block."""
    block = output.split(f"=== fault: {fault}", 1)[1].split("\n\n", 1)[0]
    rows: dict[str, tuple[list[str], list[str]]] = {}
    engine = None
    for line in block.splitlines()[2:]:
        cells = line.split()
        if cells and cells[0] in ENGINE_NAMES and line.startswith("  " + cells[0]):
            engine = cells[0]
            rows[engine] = (cells[1:], [])
        elif engine is not None and line.startswith("      "):
            rows[engine][1].append(line.strip())
    return rows


@pytest.mark.parametrize("fault", ["holder-removed", "leader-removed"])
def test_compare_runs_every_engine_on_the_same_fault_and_they_differ(tmp_path, fault):
    code, out, _ = run_demo(tmp_path, "--compare", "--fault", fault)

    assert code == 0, out
    rows = compare_rows(out, fault)
    assert sorted(rows) == sorted(ENGINE_NAMES), out
    figures = {engine: tuple(cells[:4]) for engine, (cells, _) in rows.items()}
    assert all(cells[-1] == "ok" for cells, _ in rows.values()), out
    assert len(set(figures.values())) > 1, f"every engine did the same: {figures}"
    for engine, (_, told) in rows.items():
        assert any(line.startswith("next inside:") for line in told), (engine, told)
    assert sorted(p.name for p in tmp_path.glob("timeline-*.svg")) == sorted(
        f"timeline-{engine}-{fault}.svg" for engine in ENGINE_NAMES
    )


def test_svg_labels_never_overlap_even_when_everything_happens_at_once(tmp_path):
    """A crowded picture: every label's box stays clear of every other.

    An outage starting a tick after the request, a dozen markers on one lane a tick apart
    (two-digit numbers), footnotes at three-digit times.
    """
    from demo.svg import Interval, Lane, Mark, Picture, render

    units = [f"{APP}/{i}" for i in range(3)]
    marks = [Mark(100, u, "request", "restart requested") for u in units]
    marks += [Mark(101 + k, units[1], ("fault", "note")[k % 2], f"event {k}") for k in range(12)]
    marks += [Mark(180, units[2], "resolved", "juju resolved"), Mark(183, units[0], "resolved",
              "juju resolved")]  # fmt: skip
    picture = Picture(
        "crowded", "every label at once", 100, 220,
        [Lane(u, list(range(100, 220, 3)), 100, None) for u in units],
        [Interval(units[0], 102, 110, True, 1), Interval(units[2], 111, 119, False, 2)],
        marks, "restart", [(100, units[0]), (150, units[2])], [(101, 140)],
    )  # fmt: skip
    svg = tmp_path / "crowded.svg"
    svg.write_text(render(picture))

    assert overlapping_labels(svg) == []


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


def test_a_failed_restart_halts_the_roll_and_the_operator_resumes_it(tmp_path):
    # halt-after-failures=1 (the charm's default): the crash inside the critical section pauses
    # the roll; the demo's operator runs `resume` on the leader and every restart completes.
    code, out, _ = run_demo(tmp_path, "--engine", "rollingops-peer", "--fault", "hook-failure")

    assert code == 0, out
    assert "the roll paused itself: halted after 1 failed operation(s)" in out
    assert re.search(r"\$ juju run coordinated-ops/leader resume", out), out
    assert "every action accepted" in out
