"""What a quiet hook costs in hook tool calls: the charm run through its real `dispatch`.

On a controller every hook tool call (relation-get, relation-list, is-leader, status-set...) is a
round trip to the unit agent, and update-status runs on every unit every five minutes. Here the
charm is assembled as packed and run with the stub hook tools of tests/dispatch, which record
every call, on one unit (the leader) with its peer relations and nothing in flight. Counts, not
timings (tests/benchmarks/dispatch.py measures the time): an idle update-status makes at most 4
calls and reads no relation, and neither does an unchanged config-changed. Every library decides
from its stored state that it has nothing to do.

The charm runs with this test environment's interpreter (a superset of requirements.txt); the
packaging itself is checked by tests/functional/test_dispatch_smoke.py.
"""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from tests.benchmarks.dispatch import quiet_hooks
from tests.dispatch import charmdir

MAX_IDLE_UPDATE_STATUS_CALLS = 4
RELATION_TOOLS = {"relation-ids", "relation-list", "relation-get", "relation-set"}


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    if sys.prefix == sys.base_prefix:
        pytest.skip("needs a virtualenv to run the charm's dispatch with (sys.prefix is not one)")
    work = tmp_path_factory.mktemp("idle-unit")
    unit = charmdir.Unit(work, pathlib.Path(sys.prefix), unit="coordinated-ops/0", leader=True)
    config = {**unit.state()["config"], "startup-seconds": 0.0}
    unit.update_state(config=config)
    try:
        for hook in ("install", "start", "update-status"):  # the first update-status settles
            run = unit.dispatch(f"hooks/{hook}")
            assert run.returncode == 0, run.output
        yield unit
    finally:
        unit.close()


def calls_of(unit: charmdir.Unit, hook: str, env: dict[str, str] | None = None) -> list[list]:
    """Run `hook` and return the hook tool calls it made (juju-log excluded: not a round trip)."""
    path = unit.work / "calls.jsonl"
    before = len(path.read_text().splitlines()) if path.exists() else 0
    run = unit.dispatch(f"hooks/{hook}", env)
    assert run.returncode == 0, run.output
    return [json.loads(line) for line in path.read_text().splitlines()[before:]]


def test_an_idle_update_status_makes_at_most_4_hook_tool_calls_and_reads_no_relation(unit):
    calls = calls_of(unit, "update-status")
    listing = "\n".join(" ".join(call) for call in calls)
    assert len(calls) <= MAX_IDLE_UPDATE_STATUS_CALLS, f"{len(calls)} calls:\n{listing}"
    assert not [call for call in calls if call[0] in RELATION_TOOLS], listing


def test_an_unchanged_config_changed_reads_no_relation(unit):
    calls = calls_of(unit, "config-changed")
    listing = "\n".join(" ".join(call) for call in calls)
    assert not [call for call in calls if call[0] in RELATION_TOOLS], listing


def test_a_peer_change_with_nothing_to_do_reads_no_other_peer_relation(unit):
    """Only the concern of the changed relation reads; the other concerns stay quiet."""
    hook, env = quiet_hooks(unit)["relation-changed"]
    assert env is not None
    calls = calls_of(unit, hook, env)
    read = {call[call.index("-r") + 1].split(":")[0] for call in calls if "-r" in call}
    read |= {call[1] for call in calls if call[0] == "relation-ids"}
    others = set(charmdir.peer_endpoints(unit.charm_dir)) - {env["JUJU_RELATION"]}
    assert not read & others, calls


def test_an_idle_update_status_of_a_paused_lock_still_reads_no_relation_and_says_paused(unit):
    """The leader remembers the pause it made: its status says so without reading the relation."""
    run = unit.run_action("pause", {})
    assert run.returncode == 0, run.output
    try:
        calls = calls_of(unit, "update-status")
        listing = "\n".join(" ".join(call) for call in calls)
        assert len(calls) <= MAX_IDLE_UPDATE_STATUS_CALLS, f"{len(calls)} calls:\n{listing}"
        assert not [call for call in calls if call[0] in RELATION_TOOLS], listing
        app_status = [
            call[-1] for call in calls if call[:2] == ["status-set", "--application=True"]
        ]
        paused = "rollingops lock paused (paused by the operator): nothing waits; run resume"
        assert app_status == [paused], listing
    finally:
        run = unit.run_action("resume", {})
        assert run.returncode == 0, run.output
