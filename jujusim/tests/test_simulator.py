"""The simulator's own acceptance: every rule of docs/juju-rules.md, each checked by a test.

These tests drive tiny purpose-built charms (toy_charms.py) through the simulator. No Juju
controller can run on these machines: the simulator IS the stand-in for it, and what is checked
here is that it delivers what Juju would deliver, in Juju's order, with Juju's failure semantics.
"""

from __future__ import annotations

import gc
import json

import ops
import pytest
from hypothesis import find, settings
from hypothesis import strategies as st

from jujusim.accounting import account
from jujusim.invariants import Recorder
from jujusim.queues import HOOK, Item, UnitQueue
from jujusim.runner import CharmSpec, SimulatorBug
from jujusim.scheduler import RoundRobin, SeededRandom, drain
from jujusim.script import format_script, replay
from jujusim.simulator import ActionRejected, Simulator

from . import toy_charms
from .toy_charms import SEEN, SPEC_DIR, BrokenLockCharm, ToyCharm, ToyCharmV2

TOY = CharmSpec.from_dir(ToyCharm, SPEC_DIR)
TOY_V2 = CharmSpec.from_dir(ToyCharmV2, SPEC_DIR)
BROKEN = CharmSpec.from_dir(BrokenLockCharm, SPEC_DIR)


@pytest.fixture(autouse=True)
def _clear_seen():
    SEEN.clear()


def toy(n: int = 3, spec: CharmSpec = TOY, **kwargs) -> Simulator:
    sim = Simulator(**kwargs)
    sim.deploy("toy", spec, units=n)
    drain(sim)
    assert not sim.errors
    SEEN.clear()
    return sim


def seen(kind: str, unit: str | None = None) -> list[tuple[str, dict]]:
    return [(u, info) for u, k, info in SEEN if k == kind and unit in (None, u)]


def kinds(unit: str) -> list[str]:
    return [k for u, k, _ in SEEN if u == unit]


def step_until_idle(sim: Simulator) -> None:
    drain(sim, RoundRobin())


# --- relation data -------------------------------------------------------------------------------


def test_unit_bag_write_notifies_the_others_only_and_identical_rewrite_nothing():
    sim = toy()
    sim.run_action("toy/1", "write", key="a", value="1")
    drain(sim)
    changed = seen("peers_relation_changed")
    assert sorted(u for u, _ in changed) == ["toy/0", "toy/2"]
    assert all(info["remote"] == "toy/1" and info["data"]["a"] == "1" for _, info in changed)
    SEEN.clear()
    sim.run_action("toy/1", "write", key="a", value="1")  # rule: unchanged content is no change
    drain(sim)
    assert seen("peers_relation_changed") == []


@pytest.mark.parametrize("switch", [True, False])
def test_leader_app_write_notifies_others_and_the_leader_iff_the_switch(switch):
    sim = toy(leader_sees_own_app_writes=switch)
    sim.run_action("toy/0", "write", key="k", value="v", bag="app")
    drain(sim)
    got = sorted(u for u, info in seen("peers_relation_changed") if info["app_data"].get("k"))
    assert got == (["toy/0", "toy/1", "toy/2"] if switch else ["toy/1", "toy/2"])
    assert all(info["app"] == "toy" for _, info in seen("peers_relation_changed"))


def test_single_unit_self_notification_is_dropped_as_a_scenario_gap():
    sim = toy(n=1)
    sim.run_action("toy/0", "write", key="k", value="v", bag="app")
    drain(sim)
    assert seen("peers_relation_changed") == []
    assert any("Scenario gap" in d for d in sim.dropped)


def test_cross_app_writes_reach_the_other_side_only():
    sim = Simulator()
    sim.deploy("left", TOY, units=2)
    sim.deploy("right", TOY, units=2)
    rel = sim.integrate("left", "db", "right", "served")
    drain(sim)
    assert not sim.errors
    SEEN.clear()
    sim.run_action("left/0", "write", key="k", value="v", bag="app", endpoint="db")
    sim.run_action("left/1", "write", key="u", value="w", endpoint="db")
    drain(sim)
    # Scenario gap: an app-level change names the writing leader as its remote unit
    app_events = [(u, i) for u, i in seen("served_relation_changed") if i["remote"] == "left/0"]
    assert sorted(u for u, _ in app_events) == ["right/0", "right/1"]
    assert all(i["app_data"]["k"] == "v" and i["relation"] == rel for _, i in app_events)
    unit_events = [u for u, i in seen("served_relation_changed") if i["remote"] == "left/1"]
    assert sorted(unit_events) == ["right/0", "right/1"]
    assert seen("db_relation_changed") == []  # never the writer's own app


def test_several_writes_in_one_hook_are_one_change_published_at_commit():
    sim = toy(duration=lambda unit, item: 3)
    sim.run_action("toy/1", "write", key="a", value="1")
    t0 = sim.now
    sim.start("toy/1")
    assert sim.relation("toy", "peers").unit_bags["toy/1"].data.get("a") is None  # not yet
    sim.advance()
    assert sim.now == t0 + 3 and sim.relation("toy", "peers").unit_bags["toy/1"].data["a"] == "1"
    assert len(sim.queues["toy/0"]) == 1


def test_two_writes_before_the_observer_runs_give_one_event_reading_the_second():
    sim = toy()
    for value in ("1", "2"):
        sim.run_action("toy/1", "write", key="a", value=value)
        sim.start("toy/1")
        sim.advance()
    assert [i.label() for i in sim.queues["toy/0"].items] == ["relation_changed(1, toy/1)"]
    drain(sim)
    events = seen("peers_relation_changed", "toy/0")
    assert len(events) == 1 and events[0][1]["data"]["a"] == "2"


def test_relation_order_per_unit():
    queue = UnitQueue()
    seq = iter(range(1, 100))

    def add(event, **kw):
        return queue.append(Item(next(seq), HOOK, event, relation=1, **kw))

    add("relation_changed", remote="a/2")
    add("relation_joined", remote="a/3")
    add("relation_changed", app_level=True, writer_app="a")
    add("relation_departed", remote="a/1", departing="a/1")
    add("relation_changed", remote="a/3")
    queue.append(Item(next(seq), HOOK, "update_status"))
    order = []
    while queue.items:
        item = queue.peek(0)
        assert item is not None
        queue.remove(item)
        order.append(item.label())
        if item.event == "relation_joined":
            owed = queue.pending_changed(1, item.remote or "")
            assert owed is not None
            owed.owed = True
    assert order == [
        "relation_departed(1, a/1)",
        "relation_changed(1, app=a)",
        "relation_joined(1, a/3)",
        "relation_changed(1, a/3)",  # owed right after its joined
        "relation_changed(1, a/2)",
        "update_status",
    ]


def test_hooks_serialise_per_unit_and_overlap_across_units():
    sim = toy(duration=lambda unit, item: 3)
    sim.run_action("toy/0", "remember", value="a")
    sim.run_action("toy/0", "remember", value="b")
    sim.run_action("toy/1", "remember", value="c")
    sim.start("toy/0")
    assert sim.eligible() == ["toy/1"]  # toy/0 is busy until its commit
    sim.start("toy/1")
    assert set(sim.running) == {"toy/0", "toy/1"}  # overlapping in logical time
    sim.advance()
    assert sim.eligible() == ["toy/0"]


def test_a_hook_reads_the_truth_as_of_its_start():
    def slow_write_of_a(unit, item):
        return 3 if item.action is not None and item.action.params.get("key") == "a" else 1

    sim = toy(duration=slow_write_of_a)
    sim.run_action("toy/0", "write", key="b", value="1")
    sim.start("toy/0")
    sim.advance()  # b committed: toy/1 has a relation-changed queued
    sim.run_action("toy/0", "write", key="a", value="new")
    t1 = sim.now
    sim.start("toy/0")  # commits a at t1 + 3
    sim.start("toy/1")  # starts at t1 and reads the truth as of t1
    assert sim.running["toy/0"].end == t1 + 3 and sim.running["toy/1"].start == t1
    drain(sim)
    changed = [i["data"] for _, i in seen("peers_relation_changed", "toy/1")]
    assert changed[0]["b"] == "1" and "a" not in changed[0]
    assert changed[1]["a"] == "new"


# --- membership ----------------------------------------------------------------------------------


def test_add_unit_sequence_and_juju_owned_keys():
    sim = toy(n=2)
    sim.add_unit("toy")
    drain(sim)
    assert kinds("toy/2")[:5] == [
        "install",
        "peers_relation_created",
        "lock_relation_created",
        "config_changed",
        "start",
    ]
    assert seen("install", "toy/2")[0][1]["peers"] is False  # no peer data in install
    rest = [(k, i["remote"]) for u, k, i in SEEN if u == "toy/2" and "peers_relation_j" in k] + [
        (k, i["remote"]) for u, k, i in SEEN if u == "toy/2" and "peers_relation_ch" in k
    ]
    assert sorted(rest) == sorted(
        [
            ("peers_relation_joined", "toy/0"),
            ("peers_relation_joined", "toy/1"),
            ("peers_relation_changed", "toy/0"),
            ("peers_relation_changed", "toy/1"),
        ]
    )
    for unit in ("toy/0", "toy/1"):
        assert [k for k in kinds(unit) if "peers" in k] == [
            "peers_relation_joined",
            "peers_relation_changed",
        ]
        data = seen("peers_relation_changed", unit)[0][1]["data"]
        assert data["ingress-address"] == data["private-address"] == "10.0.0.3"


def test_deploy_order_with_leader_elected_after_relation_created():
    sim = Simulator()
    sim.deploy("toy", TOY, units=2)
    drain(sim)
    assert kinds("toy/0")[:6] == [
        "install",
        "peers_relation_created",
        "lock_relation_created",
        "leader_elected",
        "config_changed",
        "start",
    ]
    assert "leader_elected" not in kinds("toy/1")


def test_remove_unit_sequence_departed_data_readable_writes_not_routed():
    sim = toy(n=3)
    sim.run_action("toy/2", "write", key="last", value="words")
    drain(sim)
    SEEN.clear()
    sim.remove_unit("toy/2")
    sim.run_action("toy/2", "write", key="late", value="never-seen")  # runs during departure
    drain(sim)
    for unit in ("toy/0", "toy/1"):
        departed = seen("peers_relation_departed", unit)
        assert len(departed) == 1
        info = departed[0][1]
        assert info["remote"] == info["departing"] == "toy/2"
        # rule: departing unit's data: readable in the departed hook; what it wrote during its
        # departure is not published
        assert info["data"]["last"] == "words"
        assert "late" not in info["data"]
        assert not any(
            i.get("data", {}).get("late") for _, i in seen("peers_relation_changed", unit)
        )
    gone = [k for k in kinds("toy/2") if not k.startswith("lock")]
    assert gone[-4:] == ["peers_relation_departed", "peers_relation_departed", "stop", "remove"]
    assert {i["remote"] for _, i in seen("peers_relation_departed", "toy/2")} == {"toy/0", "toy/1"}
    assert not any("broken" in k for _, k, _ in SEEN)
    assert "toy/2" not in sim.relation("toy", "peers").unit_bags
    assert seen("peers_relation_changed", "toy/0") == []


def test_juju4_removed_unit_stays_in_the_peer_relation_without_departed():
    """juju/juju#23326: on Juju 4 the survivors keep listing a removed peer and get no departed.

    Goal-state (and so planned units) no longer shows it; the departing unit's own hooks run.
    """
    sim = toy(n=3, juju="4")
    sim.remove_unit("toy/2")
    drain(sim)
    assert sim.units["toy/2"].removed
    assert kinds("toy/2")[-2:] == ["stop", "remove"]
    sim.update_status("toy")
    drain(sim)
    for unit in ("toy/0", "toy/1"):
        assert seen("peers_relation_departed", unit) == []
        ((_, info),) = seen("update_status", unit)
        assert info["members"] == sorted({"toy/0", "toy/1", "toy/2"} - {unit})
        assert info["goal"] == {"toy/0": "active", "toy/1": "active"}
        assert info["planned"] == 2


def test_juju36_removed_unit_leaves_the_peer_relation_and_goal_state():
    sim = toy(n=3)
    sim.remove_unit("toy/2", graceful=False)
    sim.update_status("toy")
    drain(sim)
    for unit in ("toy/0", "toy/1"):
        assert len(seen("peers_relation_departed", unit)) == 1
        ((_, info),) = seen("update_status", unit)
        assert "toy/2" not in info["members"] and "toy/2" not in info["goal"]


def test_goal_state_shows_a_departing_unit_as_dying_until_it_is_removed():
    sim = toy(n=3, juju="4")
    sim.run_action("toy/2", "write", key="slow", value="x")
    sim.start("toy/2")  # in flight: the removal waits for it
    sim.remove_unit("toy/2")
    sim.update_status("toy")
    sim.start("toy/0")
    sim.advance()
    ((_, info),) = seen("update_status", "toy/0")
    assert info["goal"]["toy/2"] == "dying"
    assert info["planned"] == 2


def test_juju4_other_relations_still_get_departed():
    sim = Simulator(juju="4")
    sim.deploy("left", TOY, units=1)
    sim.deploy("right", TOY, units=2)
    sim.integrate("left", "db", "right", "served")
    drain(sim)
    SEEN.clear()
    sim.remove_unit("right/1")
    drain(sim)
    assert [i["remote"] for _, i in seen("db_relation_departed", "left/0")] == ["right/1"]
    assert seen("peers_relation_departed", "right/0") == []


def test_unknown_juju_version_is_refused():
    with pytest.raises(ValueError, match="juju must be one of"):
        Simulator(juju="3.5")


def test_removing_the_leader_elects_another():
    sim = toy(n=3)
    sim.remove_unit("toy/0")
    drain(sim)
    assert sim.leader("toy") == "toy/1"
    assert seen("leader_elected") == [("toy/1", seen("leader_elected")[0][1])]


def test_graceful_removal_mid_hook_takes_effect_when_that_hook_commits():
    """Juju acts on Dying between hooks: a hook in flight finishes in scope, still leader."""
    sim = toy(n=3)
    sim.run_action("toy/0", "write", key="last", value="words")
    sim.start("toy/0")  # the action is in flight on the leader
    sim.remove_unit("toy/0")
    assert sim.leader("toy") == "toy/0"
    assert not sim.queues["toy/1"] and not sim.queues["toy/2"]
    drain(sim)
    for unit in ("toy/1", "toy/2"):
        departed = seen("peers_relation_departed", unit)
        assert len(departed) == 1
        assert departed[0][1]["data"]["last"] == "words"  # committed in scope, not dropped
    assert sim.leader("toy") == "toy/1"


def test_an_action_queued_before_removal_still_runs_in_scope():
    """What was queued before removal runs before the departure hooks, and its writes publish."""
    sim = toy(n=3)
    sim.run_action("toy/0", "write", key="queued", value="before")
    sim.remove_unit("toy/0")  # the action has not started yet
    drain(sim)
    for unit in ("toy/1", "toy/2"):
        departed = seen("peers_relation_departed", unit)
        assert len(departed) == 1
        assert departed[0][1]["data"]["queued"] == "before"


def test_unit_zero_departing_is_named_as_itself():
    """Scenario reads departing_unit=0 as unset; the runner must still name toy/0 as departing."""
    sim = toy(n=3)
    sim.remove_unit("toy/0")
    drain(sim)
    own = seen("peers_relation_departed", "toy/0")
    assert len(own) == 2
    assert {info["departing"] for _, info in own} == {"toy/0"}
    assert {info["departing"] for _, info in seen("peers_relation_departed", "toy/1")} == {"toy/0"}


def test_abrupt_removal_runs_nothing_on_the_gone_unit():
    sim = toy(n=3)
    sim.remove_unit("toy/2", graceful=False)
    drain(sim)
    assert kinds("toy/2") == []
    assert len(seen("peers_relation_departed")) == 2


def test_remove_relation_gives_departed_then_broken_and_drops_it():
    sim = Simulator()
    sim.deploy("left", TOY, units=1)
    sim.deploy("right", TOY, units=2)
    rel = sim.integrate("left", "db", "right", "served")
    drain(sim)
    SEEN.clear()
    sim.remove_relation(rel)
    drain(sim)
    assert kinds("left/0") == [
        "db_relation_departed",
        "db_relation_departed",
        "db_relation_broken",
    ]
    assert kinds("right/1") == ["served_relation_departed", "served_relation_broken"]
    assert rel not in sim.relations


# --- leadership ----------------------------------------------------------------------------------


def test_set_leader_fires_leader_elected_on_the_new_leader_only():
    sim = toy()
    sim.set_leader("toy/2")
    drain(sim)
    assert [u for u, _ in seen("leader_elected")] == ["toy/2"]


def test_leader_moved_during_a_leader_hook_rejects_the_app_write_and_retries():
    sim = toy(retry="immediate", duration=lambda unit, item: 3)
    sim.run_action("toy/1", "want-lock")
    sim.start("toy/1")
    sim.advance()  # toy/1's want committed: toy/0 (leader) has a lock relation-changed queued
    sim.start("toy/0")  # it grants (an app-bag write) ...
    sim.set_leader("toy/1")  # ... but leadership moves before its commit
    sim.advance()
    assert sim.units["toy/0"].error == 'hook failed: "relation-changed"'
    assert "holder" not in sim.relation("toy", "lock").app_bags["toy"].data
    drain(sim)
    runs = [i["leader"] for u, k, i in SEEN if u == "toy/0" and k == "lock_relation_changed"]
    assert runs[:2] == [True, False]  # the retry ran as a non-leader
    assert sim.relation("toy", "lock").app_bags["toy"].data["holder"] == "toy/1"


def test_app_leader_target_is_bound_when_enqueued():
    sim = toy()
    record = sim.run_action("toy/leader", "remember", value="x")
    sim.set_leader("toy/1")
    drain(sim)
    assert record.unit == "toy/0" and record.status == "completed"


# --- event flow ----------------------------------------------------------------------------------


def test_deferred_events_rerun_first_on_the_next_dispatch_of_the_same_unit():
    sim = toy()
    sim.run_action("toy/1", "remember", value="m", times=2)
    sim.update_status("toy")
    drain(sim)
    assert kinds("toy/1") == ["update_status_deferred"]
    assert len(sim.units["toy/1"].deferred) == 1
    SEEN.clear()
    sim.run_action("toy/1", "write", key="a")  # an action wakes the deferred event first
    drain(sim)
    assert kinds("toy/1") == ["update_status_deferred"]
    assert kinds("toy/0") == ["peers_relation_changed"]  # nothing deferred on the others
    SEEN.clear()
    sim.update_status("toy")
    drain(sim)
    assert kinds("toy/1") == ["update_status", "update_status"]  # the deferred, then the new
    assert sim.units["toy/1"].deferred == []


@pytest.mark.parametrize("point", ["entry", "before_return"])
def test_failed_hook_discards_everything_and_blocks_until_resolved(point):
    sim = toy()
    sim.run_action("toy/1", "remember", value="kept", times=1)
    drain(sim)
    stored_before = sim.units["toy/1"].stored_states
    status_before = sim.units["toy/1"].unit_status
    sim.fail_hook("toy/1", match="update_status", point=point)
    sim.update_status("toy")
    drain(sim)
    truth = sim.units["toy/1"]
    assert truth.stored_states == stored_before and truth.deferred == []
    assert truth.displayed_status == 'error: hook failed: "update-status"'  # rule: statuses
    assert truth.unit_status == status_before
    sim.run_action("toy/1", "write", key="a")
    drain(sim)
    # blocked behind the failed hook (rule: hook failure and retry)
    assert seen("peers_relation_changed", "toy/0") == []
    sim.resolve("toy/1", retry=False)  # --no-retry skips the failed hook
    drain(sim)
    assert len(seen("peers_relation_changed", "toy/0")) == 1
    assert kinds("toy/1").count("update_status_deferred") == (1 if point == "before_return" else 0)
    assert len(sim.units["toy/1"].deferred) == 0


@pytest.mark.parametrize("retry", ["immediate", "backoff"])
def test_automatic_retry_reruns_the_failed_hook(retry):
    sim = toy(retry=retry)
    sim.fail_hook("toy/2", match="update_status")
    sim.update_status("toy")
    drain(sim)
    assert sim.units["toy/2"].error is None
    assert kinds("toy/2") == ["update_status"]  # the first run failed at entry, the retry ran


def test_actions_defaults_validation_fail_commits_exception_discards():
    sim = toy()
    record = sim.run_action("toy/1", "write", key="a")
    assert record.params == {
        "key": "a",
        "value": "x",
        "bag": "unit",
        "endpoint": "peers",
        "fail": False,
        "crash": False,
    }
    with pytest.raises(ActionRejected, match="required"):
        sim.run_action("toy/1", "write", value="no key")
    with pytest.raises(ActionRejected, match="Additional properties"):
        sim.run_action("toy/1", "write", key="a", colour="red")
    with pytest.raises(ActionRejected):
        sim.run_action("toy/1", "remember", times=-1)
    drain(sim)
    assert record.status == "completed" and record.results == {"written": "a"}
    failed = sim.run_action("toy/1", "write", key="f", fail=True)
    crashed = sim.run_action("toy/1", "write", key="c", crash=True)
    drain(sim)
    bag = sim.relation("toy", "peers").unit_bags["toy/1"].data
    assert failed.status == "failed" and failed.message == "asked to fail" and bag["f"] == "x"
    assert crashed.status == "failed" and "c" not in bag
    assert sim.units["toy/1"].error is None  # a crashed action does not put the unit in error
    assert sim.errors and "asked to crash" in sim.errors[-1]


def test_config_and_update_status_reach_every_unit():
    sim = toy()
    sim.config("toy", colour="red")
    sim.update_status()
    drain(sim)
    assert sorted(u for u, i in seen("config_changed") if i["colour"] == "red") == [
        "toy/0",
        "toy/1",
        "toy/2",
    ]
    assert len(seen("update_status")) == 3


def test_refresh_swaps_the_class_and_keeps_deferred_events_on_machines():
    sim = toy()
    sim.fail_hook("toy/2", match="update_status")
    sim.update_status("toy")
    drain(sim)  # toy/2 is in error: refresh skips it
    sim.run_action("toy/1", "remember", value="m", times=1)
    sim.update_status("toy")
    drain(sim)
    assert sim.units["toy/1"].deferred
    SEEN.clear()
    sim.refresh("toy", TOY_V2)
    drain(sim)
    assert kinds("toy/0")[:2] == ["upgrade_charm", "config_changed"]
    # the deferred event survived the refresh and ran first, with the new code (rules: deferred
    # events; refresh)
    assert kinds("toy/1")[:3] == ["update_status", "upgrade_charm", "config_changed"]
    assert all(i["version"] == "v2" for _, i in seen("upgrade_charm"))
    assert kinds("toy/2") == []


def test_k8s_refresh_drops_deferred_events_and_delayed_upgrade_waits_behind_pending():
    sim = toy(substrate="k8s")
    sim.run_action("toy/1", "remember", value="m", times=1)
    sim.update_status("toy")
    drain(sim)
    assert sim.units["toy/1"].deferred
    sim.run_action("toy/0", "write", key="a")
    sim.start("toy/0")
    sim.advance()  # toy/2 now has a relation-changed pending
    SEEN.clear()
    sim.refresh("toy", TOY_V2, delayed=("toy/2",))
    drain(sim)
    assert sim.units["toy/1"].deferred == [] and "update_status" not in kinds("toy/1")
    assert kinds("toy/2")[:3] == ["peers_relation_changed", "upgrade_charm", "config_changed"]
    assert kinds("toy/1")[:2] == ["upgrade_charm", "config_changed"]


def test_juju_exec_request_becomes_a_custom_event_after_deferred_ones():
    sim = toy()
    sim.run_action("toy/1", "remember", value="m", times=1)
    sim.update_status("toy")
    drain(sim)
    SEEN.clear()
    sim.custom_delay["toy_wake"] = 2
    sim.run_action("toy/1", "spawn-wake", token="42")
    sim.start("toy/1")
    sim.advance()  # the action commits at t: the custom event is queued, not before t + 2
    item = sim.queues["toy/1"].items[0]
    assert (item.kind, item.event, item.env) == ("custom", "toy_wake", {"TOY_TOKEN": "42"})
    assert item.not_before == sim.now + 2
    drain(sim)
    # deferred first (rule: deferred events)
    assert kinds("toy/1") == ["update_status", "toy_wake"]
    assert seen("toy_wake")[0][1]["token"] == "42"


@pytest.mark.parametrize("orphan", [False, True])
def test_request_from_a_failed_hook_is_dropped_unless_orphan_worker(orphan):
    sim = toy()
    sim.orphan_worker = orphan
    sim.fail_hook("toy/1", match="spawn-wake", point="before_return")
    sim.run_action("toy/1", "spawn-wake")
    drain(sim)
    assert bool(seen("toy_wake")) is orphan


def test_custom_event_the_charm_does_not_define_is_ignored():
    sim = toy()
    sim.fire_custom("toy/1", "no_such_event")
    drain(sim)
    assert not sim.errors and sim.units["toy/1"].error is None


def test_app_secret_shared_by_id_and_new_revision_after_refresh():
    sim = toy()
    sim.run_action("toy/0", "make-secret")
    drain(sim)
    first = sim.run_action("toy/2", "read-secret")
    drain(sim)
    assert first.results == {"v": "1"}
    sim.run_action("toy/0", "bump-secret", value="2")
    stale = sim.run_action("toy/2", "read-secret")
    drain(sim)
    fresh = sim.run_action("toy/2", "read-secret", refresh=True)
    drain(sim)
    assert stale.results == {"v": "1"} and fresh.results == {"v": "2"}
    assert next(iter(sim.secrets.values())).tracked["toy/2"] == 2


def test_status_is_from_committed_runs_and_error_is_shown_until_resolved():
    sim = toy()
    sim.run_action("toy/1", "write", key="s")
    drain(sim)
    assert sim.units["toy/1"].displayed_status == "active: wrote s"
    sim.fail_hook("toy/1")
    sim.update_status("toy")
    drain(sim)
    assert sim.units["toy/1"].displayed_status.startswith("error: hook failed")
    sim.resolve("toy/1", retry=True)
    drain(sim)
    assert sim.units["toy/1"].displayed_status == "active: wrote s"


# --- the invariant checkers against a toy lock ---------------------------------------------------


TOY_LOCK_GRANT = staticmethod(lambda bags, unit: bags.app("lock").get("holder") == unit)
CS_TICKS = 2  # a critical-section hook lasts 1 + 2 ticks


class FeedRecorder:
    """Patch the toy's critical section to feed the recorder of the simulator running it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.sim: Simulator | None = None
        original = Simulator.start
        feeder = self

        def start(sim: Simulator, unit: str):
            feeder.sim = sim
            return original(sim, unit)

        monkeypatch.setattr(Simulator, "start", start)
        monkeypatch.setattr(toy_charms, "critical_section", self.critical_section)

    def critical_section(self, unit: str) -> None:
        assert self.sim is not None and self.sim.recorder is not None
        self.sim.recorder.enter("cs")
        self.sim.add_cost(CS_TICKS)


def lock_schedule(spec: CharmSpec, seed: int, n: int = 3) -> tuple[Simulator, Recorder]:
    sim = Simulator(seed=seed)
    sim.deploy("toy", spec, units=n)
    drain(sim)
    recorder = Recorder(sim, holds_grant=TOY_LOCK_GRANT)
    for unit in sim.members("toy"):
        sim.request(unit, "cs", "want-lock")
    drain(sim, SeededRandom())
    return sim, recorder


def test_exclusion_checker_catches_the_broken_lock_and_passes_the_correct_one(monkeypatch):
    FeedRecorder(monkeypatch)
    caught = [s for s in range(50) if "I1" in str(lock_schedule(BROKEN, s)[1].violations)]
    assert caught, "I1 never caught the broken lock in 50 seeds"
    for seed in range(20):
        sim, recorder = lock_schedule(TOY, seed)
        assert recorder.violations == [], (seed, recorder.violations)
        assert recorder.liveness_failures() == []
        assert not sim.errors


SCHEDULE_STEPS = ["start toy/0", "start toy/1", "start toy/2", "advance"]


_BROKEN_DEPLOYED: list[Simulator] = []


def broken_lock_violates(steps: list[str]) -> bool:
    """Run the toy lock requests of toy/1 and toy/0 under `steps`; True on an I1 violation."""
    if not _BROKEN_DEPLOYED:
        deployed = Simulator()
        deployed.deploy("toy", BROKEN, units=3)
        drain(deployed)
        _BROKEN_DEPLOYED.append(deployed)
    sim = _BROKEN_DEPLOYED[0].fork()
    recorder = Recorder(sim, holds_grant=TOY_LOCK_GRANT)
    sim.run_action("toy/1", "want-lock")
    sim.run_action("toy/0", "want-lock")
    for step in steps:
        verb, _, unit = step.partition(" ")
        if verb == "advance":
            sim.advance()
        elif unit in sim.eligible():
            sim.start(unit)
    while sim.running:
        sim.advance()
    return any(v.startswith("I1") for v in recorder.violations)


def test_hypothesis_shrinks_the_broken_lock_to_at_most_6_steps(monkeypatch):
    FeedRecorder(monkeypatch)
    minimal = find(
        st.lists(st.sampled_from(SCHEDULE_STEPS), max_size=14),
        broken_lock_violates,
        settings=settings(max_examples=1000, database=None, derandomize=True, deadline=None),
    )
    script = [f"sim.start({s.split()[1]!r})" if " " in s else "sim.advance()" for s in minimal]
    print("minimal schedule after the two want-lock requests:\n" + "\n".join(script))
    assert len(minimal) <= 6, minimal


def test_same_seed_same_trace_and_accounting_json(monkeypatch):
    FeedRecorder(monkeypatch)
    sim_a, rec_a = lock_schedule(TOY, seed=7, n=4)
    sim_b, _ = lock_schedule(TOY, seed=7, n=4)
    assert sim_a.trace == sim_b.trace
    report = account(sim_a, rec_a)
    json.dumps(report)
    assert set(report["hooks_per_unit"]) == {"toy/0", "toy/1", "toy/2", "toy/3"}
    assert report["operations"] == 4 and len(report["handoffs"]) == 3
    assert all(h["hooks"] is None or h["hooks"] >= 1 for h in report["handoffs"])
    assert report["makespan"] >= report["lower_bound"] > 0


def test_replay_of_the_recorded_steps_gives_the_same_trace():
    sim = Simulator(seed=3)
    sim.deploy("toy", TOY, units=3)
    sim.run_action("toy/1", "write", key="a")
    drain(sim, SeededRandom())
    again = replay(Simulator(seed=3), sim.steps)
    assert again.trace == sim.trace
    assert "sim.deploy('toy', <ToyCharm>, units=3)" in format_script(sim.steps)


def test_inconsistent_state_is_a_loud_simulator_bug_with_the_schedule():
    sim = toy()
    sim.apps["toy"].config["no-such-option"] = "x"  # Scenario rejects config not in metadata
    sim.update_status("toy")
    with pytest.raises(SimulatorBug, match=r"(?s)Inconsistent.*schedule.*sim.update_status"):
        drain(sim)


def test_memory_stays_flat_finished_runs_free_their_framework_and_charm():
    # ops caches bound events per object in a class-level WeakKeyDictionary whose values refer
    # back to their keys; without runner.forget_bound_events every run's framework and charm
    # stayed alive, and a long soak was killed for lack of memory.
    def frameworks_and_charms() -> set[int]:
        gc.collect()
        return {id(o) for o in gc.get_objects() if isinstance(o, (ops.Framework, ops.CharmBase))}

    before = frameworks_and_charms()  # other tests' (a module may keep a settled simulator)
    sim = toy(3)
    for _ in range(5):
        sim.update_status()
        drain(sim)
    alive = frameworks_and_charms() - before
    assert sim.hooks_run > 15
    assert len(alive) <= 2, f"{len(alive)} frameworks/charms outlived their runs"
