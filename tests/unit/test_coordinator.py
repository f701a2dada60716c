"""Unit tests of charms.coordinated_ops.v0.coordinator with ops.testing.

A small test charm (defined here) uses the coordinator the way the module docstring teaches: a
durable "needs restart" flag, a `_maybe_restart` called wherever a grant can become visible, and a
guarded `acquire`. Only the juju-exec wake-up spawn is replaced (by a recorder): there is no Juju
unit agent here to run it. `MiniJuju` at the end routes databag writes between a few units so that
multi-hook behaviour (no hook loops, every request served) is checked end to end.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
from collections import deque
from datetime import datetime, timezone
from typing import Any, ClassVar

import ops
import pytest
from charms.coordinated_ops.v0 import coordinator as coordinator_module
from charms.coordinated_ops.v0.coordinator import TIMESTAMP_FORMAT, BaseCoordinator, Serial
from ops import testing
from scenario.state import _Event  # private: the only way to run a charm.on event ops defines

META = {"name": "app", "peers": {"cluster": {"interface": "cluster"}}}
ACTIONS = {"restart": {}}
KEY = "coordinator"

RESTARTS: list[str] = []  # units whose "restart" ran, in order
RELEASED: list[tuple[str, str, datetime]] = []  # released() calls seen by the leader
WAKEUPS: list[str] = []  # units that asked for a juju-exec wake-up


def make_state(**fields: Any) -> testing.State:
    """A State whose planned unit count matches the peers present (no unit being removed).

    Juju's planned units exclude dying units; the coordinator holds off while it is below the
    units a unit sees (a removal under way), so every State here says how many units are planned.
    """
    members = 1 + max(
        (len(getattr(r, "peers_data", {})) for r in fields.get("relations", ())), default=0
    )
    fields.setdefault("planned_units", members)
    return testing.State(**fields)


def ts(second: int) -> str:
    return f"2026-11-22 01:33:{second:02d}.000000Z"


@pytest.fixture(autouse=True)
def _record(monkeypatch: pytest.MonkeyPatch):
    RESTARTS.clear()
    RELEASED.clear()
    WAKEUPS.clear()

    # No Juju agent here to run juju-exec: record the request instead of spawning.
    def record_wakeup(self: BaseCoordinator) -> None:
        WAKEUPS.append(self.model.unit.name)

    monkeypatch.setattr(BaseCoordinator, "_dispatch_wakeup", record_wakeup)


class RecordingSerial(Serial):
    def released(self, unit: str, lock: str, timestamp: datetime) -> None:
        super().released(unit, lock, timestamp)
        RELEASED.append((unit, lock, timestamp))


class UpToTwo(RecordingSerial):
    """The N-holder policy from the module docstring, N = 2."""

    def grant_restart(self, lock: str, unit: str, granted: set[str], queue: list[str]) -> bool:
        free = 2 - len(granted)
        return free > 0 and unit in queue[:free]


class CoordCharm(ops.CharmBase):
    coordinator_class: ClassVar[type[BaseCoordinator]] = RecordingSerial
    fail_after_acquire: ClassVar[bool] = False
    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._stored.set_default(needs_restart=False)
        self._observe_before_coordinator(framework)
        self.serial = self.coordinator_class(self)
        framework.observe(self.on.restart_action, self._on_restart_action)
        for event in (
            self.on.cluster_relation_changed,
            self.on.leader_elected,
            self.on.update_status,
            self.serial.wake_up_event,
        ):
            framework.observe(event, self._maybe_restart)

    def _observe_before_coordinator(self, framework: ops.Framework) -> None:
        """Subclasses observe here to run before the coordinator's own observers."""

    def _on_restart_action(self, event: ops.ActionEvent) -> None:
        self._stored.needs_restart = True
        acquired = self.serial.acquire("restart")
        if self.fail_after_acquire:
            raise RuntimeError("injected failure after acquire")
        event.set_results({"acquired": acquired})
        self._maybe_restart(event)

    def _maybe_restart(self, _: ops.EventBase) -> None:
        if self.serial.granted("restart"):
            RESTARTS.append(self.unit.name)
            self._stored.needs_restart = False
        elif self._stored.needs_restart:
            self.serial.acquire("restart")


def context(charm: type[ops.CharmBase] = CoordCharm, unit_id: int = 0) -> testing.Context:
    return testing.Context(charm, meta=META, actions=ACTIONS, app_name="app", unit_id=unit_id)


def peer(
    own: dict[str, str] | str | None = None,
    peers: dict[int, Any] | None = None,
    grants: dict[str, dict[str, str]] | str | None = None,
) -> testing.PeerRelation:
    """The `cluster` peer relation with coordinator data (dicts are JSON-encoded, str is raw)."""

    def bag(value: Any) -> dict[str, str]:
        if value is None:
            return {}
        return {KEY: value if isinstance(value, str) else json.dumps(value)}

    return testing.PeerRelation(
        "cluster",
        id=1,
        local_unit_data=bag(own),
        local_app_data=bag(grants),
        peers_data={unit: bag(data) for unit, data in (peers or {}).items()},
    )


def out_relation(state: testing.State) -> testing.PeerRelation:
    relation = state.get_relation(1)
    assert isinstance(relation, testing.PeerRelation)
    return relation


def own_requests(state: testing.State) -> dict[str, str]:
    return json.loads(out_relation(state).local_unit_data.get(KEY, "{}"))


def app_grants(state: testing.State) -> dict[str, dict[str, str]]:
    return json.loads(out_relation(state).local_app_data.get(KEY, "{}"))


def wake_up() -> _Event:
    """The event the coordinator's juju-exec wake-up dispatches (hooks/coordinator_wake_up)."""
    return _Event("coordinator_wake_up")


# ---- the leader's own grant -----------------------------------------------------------------


def test_leader_free_lock_is_granted_now_and_held_from_the_next_dispatch():
    ctx = context()
    state = ctx.run(ctx.on.action("restart"), make_state(leader=True, relations=[peer()]))

    assert ctx.action_results == {"acquired": False}
    assert RESTARTS == []
    request = own_requests(state)["restart"]
    assert datetime.strptime(request, TIMESTAMP_FORMAT)
    assert app_grants(state) == {"app/0": {"restart": request}}
    assert WAKEUPS == ["app/0"]

    state = context().run(wake_up(), state)

    assert RESTARTS == ["app/0"]
    assert own_requests(state) == {}
    assert app_grants(state) == {}
    assert [(unit, lock) for unit, lock, _ in RELEASED] == [("app/0", "restart")]
    assert RELEASED[0][2] == datetime.strptime(request, TIMESTAMP_FORMAT)
    assert WAKEUPS == ["app/0"]  # nothing new granted to itself


def test_leader_own_grant_also_acted_on_in_relation_changed():
    ctx = context()
    state = ctx.run(
        ctx.on.action("restart"), make_state(leader=True, relations=[peer(peers={1: {}})])
    )
    relation = out_relation(state)
    state = context().run(ctx.on.relation_changed(relation, remote_unit=1), state)
    assert RESTARTS == ["app/0"]
    assert own_requests(state) == {} and app_grants(state) == {}


def test_failure_after_self_grant_keeps_nothing_and_retry_regrants_self(monkeypatch):
    monkeypatch.setattr(CoordCharm, "fail_after_acquire", True)
    state = make_state(leader=True, relations=[peer(peers={1: {}})])
    ctx = context()
    with pytest.raises(testing.errors.UncaughtCharmError):
        ctx.run(ctx.on.action("restart"), state)
    assert RESTARTS == [] and WAKEUPS == []  # Juju discards the failed hook's writes

    monkeypatch.setattr(CoordCharm, "fail_after_acquire", False)
    ctx = context()
    state = ctx.run(ctx.on.action("restart"), state)  # Juju retries the hook on the same state
    assert ctx.action_results == {"acquired": False}
    mine = own_requests(state)["restart"]
    assert app_grants(state) == {"app/0": {"restart": mine}}
    assert WAKEUPS == ["app/0"]

    # app/1 asks meanwhile: the leader first does its own work, then hands over.
    relation = out_relation(state)
    relation = dataclasses.replace(relation, peers_data={1: {KEY: json.dumps({"restart": ts(1)})}})
    state = dataclasses.replace(state, relations=[relation])
    state = context().run(ctx.on.relation_changed(relation, remote_unit=1), state)
    assert RESTARTS == ["app/0"]
    assert app_grants(state) == {"app/1": {"restart": ts(1)}}


# ---- non-leaders ----------------------------------------------------------------------------


def test_non_leader_acquire_records_a_request_and_keeps_its_timestamp():
    ctx = context(unit_id=1)
    state = ctx.run(ctx.on.action("restart"), make_state(relations=[peer()]))
    assert ctx.action_results == {"acquired": False}
    first = own_requests(state)
    assert list(first) == ["restart"]
    assert datetime.strptime(first["restart"], TIMESTAMP_FORMAT)
    assert app_grants(state) == {}

    state = context(unit_id=1).run(ctx.on.action("restart"), state)
    assert own_requests(state) == first
    assert WAKEUPS == []


def test_non_leader_sees_its_grant_acts_and_releases():
    ctx = context(unit_id=1)
    relation = peer(own={"restart": ts(1)}, grants={"app/1": {"restart": ts(1)}}, peers={0: {}})
    seen: list[bool] = []
    with ctx(
        ctx.on.relation_changed(relation, remote_unit=0), make_state(relations=[relation])
    ) as mgr:
        seen.append(mgr.charm.serial.granted("restart"))
        state = mgr.run()
    assert seen == [True]
    assert RESTARTS == ["app/1"]
    assert own_requests(state) == {}
    assert app_grants(state) == {"app/1": {"restart": ts(1)}}  # only the leader revokes


def test_non_leader_grant_is_released_even_when_the_charm_ignores_it():
    ctx = context(unit_id=1)
    relation = peer(own={"restart": ts(1)}, grants={"app/1": {"restart": ts(1)}}, peers={0: {}})
    state = ctx.run(ctx.on.start(), make_state(relations=[relation]))  # charm ignores start
    assert RESTARTS == []
    assert own_requests(state) == {}


# ---- the leader's queue ---------------------------------------------------------------------


@pytest.mark.parametrize("order", [(1, 2), (2, 1)])
def test_leader_grants_the_oldest_request_only(order):
    requests = {1: {"restart": ts(1)}, 2: {"restart": ts(2)}}
    relation = peer(peers={unit: requests[unit] for unit in order})
    ctx = context()
    state = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=2),
        make_state(leader=True, relations=[relation]),
    )
    assert app_grants(state) == {"app/1": {"restart": ts(1)}}
    assert WAKEUPS == []


@pytest.mark.parametrize("holder_now", [{"restart": ts(5)}, {}], ids=["re-requested", "released"])
def test_stale_grant_is_revoked_and_the_next_waiter_granted(holder_now):
    relation = peer(
        peers={1: holder_now, 2: {"restart": ts(3)}}, grants={"app/1": {"restart": ts(1)}}
    )
    ctx = context()
    state = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=1),
        make_state(leader=True, relations=[relation]),
    )
    assert [("app/1", "restart", datetime.strptime(ts(1), TIMESTAMP_FORMAT))] == RELEASED
    assert app_grants(state) == {"app/2": {"restart": ts(3)}}


def test_departed_holder_grant_revoked_and_next_granted():
    relation = peer(
        peers={1: {"restart": ts(1)}, 2: {"restart": ts(2)}},
        grants={"app/1": {"restart": ts(1)}},
    )
    ctx = context()
    state = ctx.run(
        ctx.on.relation_departed(relation, remote_unit=1, departing_unit=1),
        make_state(leader=True, relations=[relation]),
    )
    assert [(unit, lock) for unit, lock, _ in RELEASED] == [("app/1", "restart")]
    assert app_grants(state) == {"app/2": {"restart": ts(2)}}


class LoadsFirstOnDeparted(CoordCharm):
    """Its departed handler runs before the coordinator's and loads the state first."""

    def _observe_before_coordinator(self, framework: ops.Framework) -> None:
        framework.observe(self.on.cluster_relation_departed, self._on_departed)

    def _on_departed(self, _: ops.EventBase) -> None:
        self.serial.granted("restart")


def test_departed_holder_revoked_even_if_state_was_loaded_before():
    relation = peer(
        peers={1: {"restart": ts(1)}, 2: {"restart": ts(2)}},
        grants={"app/1": {"restart": ts(1)}},
    )
    ctx = context(LoadsFirstOnDeparted)
    state = ctx.run(
        ctx.on.relation_departed(relation, remote_unit=1, departing_unit=1),
        make_state(leader=True, relations=[relation]),
    )
    assert app_grants(state) == {"app/2": {"restart": ts(2)}}


def test_new_leader_revokes_stale_grants_and_keeps_valid_ones():
    relation = peer(
        peers={1: {"restart": ts(1)}, 2: {"restart": ts(7)}, 3: {"other": ts(4)}},
        grants={
            "app/1": {"restart": ts(1)},  # valid: equals app/1's request
            "app/2": {"restart": ts(2)},  # stale: app/2 re-requested at ts(7)
            "app/9": {"other": ts(3)},  # a unit that left while there was no leader
        },
    )
    ctx = context()
    state = ctx.run(ctx.on.leader_elected(), make_state(leader=True, relations=[relation]))
    assert sorted((unit, lock) for unit, lock, _ in RELEASED) == [
        ("app/2", "restart"),
        ("app/9", "other"),
    ]
    assert app_grants(state) == {"app/1": {"restart": ts(1)}, "app/3": {"other": ts(4)}}


# ---- a unit being removed ---------------------------------------------------------------------


def test_holder_waits_while_a_unit_is_leaving_and_acts_once_it_departed():
    """Juju's planned units exclude a dying unit: app/2 is being removed, app/1 holds the grant."""
    relation = peer(
        own={"restart": ts(1)}, peers={0: {}, 2: {}}, grants={"app/1": {"restart": ts(1)}}
    )
    leaving = make_state(relations=[relation], planned_units=2, stored_states=needs_restart())
    ctx = context(unit_id=1)
    state = ctx.run(ctx.on.relation_changed(relation, remote_unit=0), leaving)
    assert RESTARTS == []
    assert own_requests(state) == {"restart": ts(1)}  # kept: not acted on, so not released

    relation = out_relation(state)
    state = context(ActsOnDeparted, unit_id=1).run(  # its departed handler runs first
        ctx.on.relation_departed(relation, remote_unit=2, departing_unit=2),
        dataclasses.replace(state, planned_units=2),
    )
    assert RESTARTS == ["app/1"]
    assert own_requests(state) == {}


# ---- Juju 4 (juju/juju#23326): a removed unit stays listed, no relation-departed -----------


def test_juju4_removed_holder_still_listed_is_revoked_when_goal_state_drops_it(goal_state):
    goal_state.set({"app/0": "active", "app/2": "active"})
    relation = peer(
        peers={1: {"restart": ts(1)}, 2: {"restart": ts(2)}},
        grants={"app/1": {"restart": ts(1)}},
    )
    ctx = context()
    state = ctx.run(
        ctx.on.update_status(), make_state(leader=True, relations=[relation], planned_units=2)
    )
    assert [(unit, lock) for unit, lock, _ in RELEASED] == [("app/1", "restart")]
    assert app_grants(state) == {"app/2": {"restart": ts(2)}}


def test_juju4_dying_holder_keeps_its_grant(goal_state):
    goal_state.set({"app/0": "active", "app/1": "dying", "app/2": "active"})
    relation = peer(
        peers={1: {"restart": ts(1)}, 2: {"restart": ts(2)}},
        grants={"app/1": {"restart": ts(1)}},
    )
    ctx = context()
    state = ctx.run(
        ctx.on.update_status(), make_state(leader=True, relations=[relation], planned_units=2)
    )
    assert app_grants(state) == {"app/1": {"restart": ts(1)}}


def test_juju4_a_removed_unit_still_listed_does_not_pause_the_holder(goal_state):
    goal_state.set({"app/0": "active", "app/1": "active"})
    relation = peer(
        own={"restart": ts(1)}, peers={0: {}, 2: {}}, grants={"app/1": {"restart": ts(1)}}
    )
    state = make_state(relations=[relation], planned_units=2, stored_states=needs_restart())
    ctx = context(unit_id=1)
    ctx.run(ctx.on.relation_changed(relation, remote_unit=0), state)
    assert RESTARTS == ["app/1"]


def test_juju4_an_idle_leader_does_not_read_goal_state(goal_state):
    relation = peer(peers={1: {}, 2: {}})
    ctx = context()
    ctx.run(ctx.on.update_status(), make_state(leader=True, relations=[relation]))
    assert goal_state.calls == 0


class ActsOnDeparted(CoordCharm):
    def _observe_before_coordinator(self, framework: ops.Framework) -> None:
        framework.observe(self.on.cluster_relation_departed, self._maybe_restart)


def test_a_unit_that_saw_its_own_departure_never_acts_on_a_grant():
    relation = peer(
        own={"restart": ts(1)}, peers={0: {}, 2: {}}, grants={"app/1": {"restart": ts(1)}}
    )
    ctx = context(ActsOnDeparted, unit_id=1)
    state = ctx.run(
        ctx.on.relation_departed(relation, remote_unit=0, departing_unit=1),
        make_state(relations=[relation], planned_units=2, stored_states=needs_restart()),
    )
    assert RESTARTS == []
    # Even if a later hook sees a full application again, the departing unit stays out.
    state = context(ActsOnDeparted, unit_id=1).run(
        ctx.on.update_status(), dataclasses.replace(state, planned_units=3)
    )
    assert RESTARTS == []


def needs_restart() -> list[testing.StoredState]:
    return [testing.StoredState(owner_path="CoordCharm", content={"needs_restart": True})]


# ---- policies -------------------------------------------------------------------------------


class UpToTwoCharm(CoordCharm):
    coordinator_class = UpToTwo


def test_up_to_two_grants_the_two_oldest_then_the_third_after_a_release():
    waiting = {unit: {"restart": ts(unit)} for unit in (4, 2, 3, 1)}
    relation = peer(peers=waiting)
    state = context(UpToTwoCharm).run(
        testing.Context(
            UpToTwoCharm, meta=META, actions=ACTIONS, app_name="app"
        ).on.relation_changed(relation, remote_unit=4),
        make_state(leader=True, relations=[relation]),
    )
    assert app_grants(state) == {"app/1": {"restart": ts(1)}, "app/2": {"restart": ts(2)}}

    released = out_relation(state)
    released = testing.PeerRelation(
        "cluster",
        id=1,
        local_app_data=dict(released.local_app_data),
        peers_data={**{u: dict(d) for u, d in released.peers_data.items()}, 1: {KEY: "{}"}},
    )
    ctx = context(UpToTwoCharm)
    state = ctx.run(
        ctx.on.relation_changed(released, remote_unit=1),
        make_state(leader=True, relations=[released]),
    )
    assert app_grants(state) == {"app/2": {"restart": ts(2)}, "app/3": {"restart": ts(3)}}


class RollingSerial(RecordingSerial):
    calls: ClassVar[list[tuple[str, str, set[str], list[str]]]] = []

    def grant_rolling_restart(self, lock, unit, granted, queue) -> bool:
        self.calls.append((lock, unit, set(granted), list(queue)))
        return unit == "app/2"


class RollingCharm(CoordCharm):
    coordinator_class = RollingSerial


def test_policy_method_for_a_lock_name_with_a_dash():
    RollingSerial.calls.clear()
    relation = peer(peers={1: {"rolling-restart": ts(1)}, 2: {"rolling-restart": ts(2)}})
    ctx = context(RollingCharm)
    state = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=1),
        make_state(leader=True, relations=[relation]),
    )
    assert RollingSerial.calls[0] == ("rolling-restart", "app/1", set(), ["app/1", "app/2"])
    assert app_grants(state) == {"app/2": {"rolling-restart": ts(2)}}


class NoPolicyCharm(CoordCharm):
    coordinator_class = BaseCoordinator


def test_base_coordinator_without_a_policy_raises_a_clear_error():
    relation = peer(peers={1: {"restart": ts(1)}})
    ctx = context(NoPolicyCharm)
    with pytest.raises(testing.errors.UncaughtCharmError) as caught:
        ctx.run(
            ctx.on.relation_changed(relation, remote_unit=1),
            make_state(leader=True, relations=[relation]),
        )
    assert isinstance(caught.value.__cause__, NotImplementedError)
    assert "grant_restart" in str(caught.value.__cause__)


# ---- construction ---------------------------------------------------------------------------


class TwoSerials(CoordCharm):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.other = RecordingSerial(self)


def test_second_instance_with_the_same_key_is_refused():
    ctx = context(TwoSerials)
    with pytest.raises(testing.errors.UncaughtCharmError) as caught:
        ctx.run(ctx.on.update_status(), make_state())
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_no_peer_relation_in_metadata_is_a_value_error():
    ctx = testing.Context(CoordCharm, meta={"name": "app"}, actions=ACTIONS, app_name="app")
    with pytest.raises(testing.errors.UncaughtCharmError) as caught:
        ctx.run(ctx.on.update_status(), make_state())
    assert isinstance(caught.value.__cause__, ValueError)


def test_requests_are_keyed_by_unit_only_and_timestamps_are_naive_utc():
    relation = peer(peers={1: {"restart": ts(1)}})
    ctx = context(unit_id=2)
    with ctx(ctx.on.update_status(), make_state(relations=[relation])) as mgr:
        serial = mgr.charm.serial
        assert serial.request_timestamp("restart") is None
        before = datetime.now(timezone.utc).replace(tzinfo=None)
        serial.acquire("restart")
        serial.acquire("other")
        when = serial.request_timestamp("restart")
        assert serial.requests is not None
        assert set(serial.requests) == {"app/1", "app/2"}
        assert serial.requested("restart") and not serial.requested("third")
        mgr.run()
    assert when is not None and when.tzinfo is None
    assert abs((when - before).total_seconds()) < 60


# ---- no peer relation yet -------------------------------------------------------------------

STORED_OWNER = "CoordCharm/RecordingSerial[coordinator]"


def test_request_without_peer_relation_is_kept_locally_then_published():
    ctx = context(unit_id=1)
    state = ctx.run(ctx.on.action("restart"), make_state())
    local = json.loads(
        state.get_stored_state("_stored", owner_path=STORED_OWNER).content["requests"]
    )
    assert list(local) == ["restart"]

    state = context(unit_id=1).run(
        ctx.on.update_status(),
        make_state(relations=[peer(peers={0: {}})], stored_states=state.stored_states),
    )
    assert own_requests(state) == local
    assert state.get_stored_state("_stored", owner_path=STORED_OWNER).content["requests"] == ""


def test_leader_without_peer_relation_grants_itself_locally():
    ctx = context()
    state = ctx.run(ctx.on.action("restart"), make_state(leader=True))
    assert ctx.action_results == {"acquired": False} and WAKEUPS == ["app/0"]
    state = context().run(wake_up(), state)
    assert RESTARTS == ["app/0"]
    stored = state.get_stored_state("_stored", owner_path=STORED_OWNER).content
    assert (stored["requests"], stored["grants"]) == ("", "")


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_peer", "bad_grants"),
    [
        ("{not json", None),
        ('["a", "list"]', None),
        ('{"restart": 12}', None),
        ('{"restart": "yesterday"}', None),
        (None, "{not json"),
        (None, '{"app/2": "granted"}'),
        (None, '{"app/2": {"restart": null}}'),
    ],
)
def test_malformed_data_is_logged_and_ignored(caplog, bad_peer, bad_grants):
    relation = peer(
        peers={2: {"restart": ts(2)}, **({3: bad_peer} if bad_peer else {})},
        grants=bad_grants,
    )
    ctx = context()
    with (
        caplog.at_level(logging.WARNING),
        ctx(
            ctx.on.relation_changed(relation, remote_unit=2),
            make_state(leader=True, relations=[relation]),
        ) as mgr,
    ):
        mgr.charm.serial.initialize()
        bad = list(mgr.charm.serial.bad_data)  # for the charm's status
        state = mgr.run()
    assert app_grants(state) == {"app/2": {"restart": ts(2)}}
    assert "malformed" in caplog.text
    assert len(bad) == 1


def test_malformed_own_data_is_replaced_by_valid_data(caplog):
    relation = peer(own="{{{", peers={0: {}})
    ctx = context(unit_id=1)
    with caplog.at_level(logging.WARNING):
        state = ctx.run(ctx.on.action("restart"), make_state(relations=[relation]))
    assert "malformed" in caplog.text
    assert list(own_requests(state)) == ["restart"]


# ---- require --------------------------------------------------------------------------------


class RequireCharm(CoordCharm):
    guard: ClassVar[bool] = False
    calls: ClassVar[list[str]] = []

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.guarded_restart = self.serial.require("restart", lambda: self.guard)(self.do_restart)
        framework.observe(self.on.config_changed, self._on_config_changed)

    def do_restart(self) -> str:
        """Restart (recorded)."""
        self.calls.append(self.unit.name)
        return "done"

    def _on_config_changed(self, _: ops.EventBase) -> None:
        self.guarded_restart()


@pytest.mark.parametrize("guard", [False, True])
def test_require_requests_only_when_the_guard_says_so(monkeypatch, guard):
    monkeypatch.setattr(RequireCharm, "guard", guard)
    RequireCharm.calls.clear()
    ctx = context(RequireCharm, unit_id=1)
    state = ctx.run(ctx.on.config_changed(), make_state(relations=[peer()]))
    assert RequireCharm.calls == []
    assert ("restart" in own_requests(state)) is guard


def test_require_runs_the_function_when_granted():
    RequireCharm.calls.clear()
    relation = peer(own={"restart": ts(1)}, grants={"app/1": {"restart": ts(1)}})
    ctx = context(RequireCharm, unit_id=1)
    with ctx(ctx.on.config_changed(), make_state(relations=[relation])) as mgr:
        assert mgr.charm.guarded_restart.__doc__ == "Restart (recorded)."
        mgr.run()
    assert RequireCharm.calls == ["app/1"]


# ---- the wake-up spawn ----------------------------------------------------------------------


def test_wakeup_spawns_a_detached_juju_exec_with_the_contract_argv(monkeypatch, tmp_path):
    monkeypatch.undo()  # use the real _dispatch_wakeup
    record = tmp_path / "argv.json"
    fake = tmp_path / "juju-exec"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        "seen = {'argv': sys.argv[1:], 'ctx': os.environ.get('JUJU_CONTEXT_ID')}\n"
        f"json.dump(seen, open({str(record)!r}, 'w'))\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("JUJU_CONTEXT_ID", "app/0-run-1")
    spawned: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        spawned.append(real_popen(*args, **kwargs))
        spawned[-1].kwargs = kwargs  # type: ignore[attr-defined]
        return spawned[-1]

    monkeypatch.setattr(coordinator_module.subprocess, "Popen", popen)
    ctx = context()
    ctx.run(ctx.on.action("restart"), make_state(leader=True, relations=[peer()]))

    assert len(spawned) == 1
    assert spawned[0].wait(timeout=30) == 0
    kwargs = spawned[0].kwargs  # type: ignore[attr-defined]
    assert kwargs["start_new_session"] is True
    assert list(spawned[0].args)[:3] == [str(fake), "-u", "app/0"]  # type: ignore[arg-type]
    seen = json.loads(record.read_text())
    assert seen["ctx"] is None
    assert seen["argv"][:2] == ["-u", "app/0"]
    path, dispatch = seen["argv"][2].split(" ")
    assert path == "JUJU_DISPATCH_PATH=hooks/coordinator_wake_up"
    assert dispatch.endswith("/dispatch")


def test_wakeup_without_juju_exec_logs_and_does_not_fail(monkeypatch, tmp_path, caplog):
    monkeypatch.undo()
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(coordinator_module.os.path, "exists", lambda _: False)
    monkeypatch.setattr(coordinator_module, "_missing_juju_exec_logged", False)
    ctx = context()
    with caplog.at_level(logging.WARNING):
        state = ctx.run(ctx.on.action("restart"), make_state(leader=True, relations=[peer()]))
    assert "juju-exec not found" in caplog.text
    assert "app/0" in app_grants(state)


# ---- several units: guarded acquire does not loop hooks -------------------------------------


class UnguardedCharm(CoordCharm):
    """Acquires unconditionally in relation-changed: the anti-pattern the docstring warns about."""

    def _maybe_restart(self, event: ops.EventBase) -> None:
        super()._maybe_restart(event)
        if isinstance(event, ops.RelationChangedEvent):
            self.serial.acquire("restart")


class MiniJuju:
    """Just enough of Juju for one peer relation: bags, routing, stored state, wake-ups.

    Hooks run one at a time from a FIFO; a changed unit bag gives the other units one
    relation-changed, a changed app bag gives the others (and the leader, if
    `leader_sees_own_app_writes`) one; pending relation-changed events are coalesced.
    """

    def __init__(self, charm: type[CoordCharm], units: int, leader_sees_own_app_writes: bool):
        self.charm = charm
        self.units = list(range(units))
        self.own_writes = leader_sees_own_app_writes
        self.bags: dict[int, str | None] = dict.fromkeys(self.units)
        self.app_bag: str | None = None
        self.stored: dict[int, list] = {u: [] for u in self.units}
        self.queue: deque[tuple[int, str, int | None]] = deque()
        self.hooks = 0

    def enqueue(self, unit: int, kind: str, remote: int | None = None) -> None:
        if (unit, kind, remote) not in self.queue or kind != "changed":
            self.queue.append((unit, kind, remote))

    def run_one(self) -> None:
        unit, kind, remote = self.queue.popleft()
        self.hooks += 1
        bag = lambda v: {KEY: v} if v is not None else {}  # noqa: E731
        relation = testing.PeerRelation(
            "cluster",
            id=1,
            local_unit_data=bag(self.bags[unit]),
            local_app_data=bag(self.app_bag),
            peers_data={u: bag(self.bags[u]) for u in self.units if u != unit},
        )
        state = make_state(leader=unit == 0, relations=[relation], stored_states=self.stored[unit])
        ctx = context(self.charm, unit_id=unit)
        event = {
            "action": lambda: ctx.on.action("restart"),
            "changed": lambda: ctx.on.relation_changed(relation, remote_unit=remote),
            "wake": wake_up,
        }[kind]()
        del WAKEUPS[:]
        out = ctx.run(event, state)
        self.stored[unit] = list(out.stored_states)
        new = out_relation(out)
        if new.local_unit_data.get(KEY) != self.bags[unit]:
            self.bags[unit] = new.local_unit_data.get(KEY)
            for other in self.units:
                if other != unit:
                    self.enqueue(other, "changed", unit)
        if new.local_app_data.get(KEY) != self.app_bag:
            self.app_bag = new.local_app_data.get(KEY)
            for other in self.units:
                if other != unit or self.own_writes:
                    self.enqueue(other, "changed", 1 if other == unit else unit)
        for _ in WAKEUPS:
            self.enqueue(unit, "wake")

    def drain(self, max_hooks: int) -> bool:
        while self.queue and self.hooks < max_hooks:
            self.run_one()
        return not self.queue


@pytest.mark.parametrize("own_writes", [True, False])
def test_guarded_acquire_serves_every_unit_once_and_quiesces(own_writes):
    juju = MiniJuju(CoordCharm, units=3, leader_sees_own_app_writes=own_writes)
    for unit in juju.units:
        juju.enqueue(unit, "action")
    assert juju.drain(max_hooks=60), f"no quiescence after {juju.hooks} hooks"
    assert sorted(RESTARTS) == ["app/0", "app/1", "app/2"]
    assert juju.app_bag == "{}"
    assert all(bag in (None, "{}") for bag in juju.bags.values())


def test_unguarded_acquire_loops_hooks():
    """The negative control: MiniJuju does detect the loop the docstring warns about."""
    juju = MiniJuju(UnguardedCharm, units=3, leader_sees_own_app_writes=True)
    for unit in juju.units:
        juju.enqueue(unit, "action")
    assert not juju.drain(max_hooks=200)
    assert len(RESTARTS) > 3


# ---- quiet: an idle unit reads nothing ------------------------------------------------------


def test_a_quiet_unit_loads_nothing_and_another_request_arrives_as_relation_changed():
    ctx = context()
    relation = peer(peers={1: {}})
    out = ctx.run(ctx.on.leader_elected(), make_state(leader=True, relations=[relation]))
    with ctx(ctx.on.config_changed(), out) as mgr:  # the test charm ignores config-changed
        assert mgr.charm.serial.quiet
        out = mgr.run()
    requested = dataclasses.replace(
        out_relation(out), peers_data={1: {KEY: json.dumps({"restart": ts(1)})}}
    )
    out = dataclasses.replace(out, relations={requested})
    assert app_grants(ctx.run(ctx.on.config_changed(), out)) == {}  # not polled
    out = ctx.run(ctx.on.relation_changed(requested, remote_unit=1), out)
    assert app_grants(out) == {"app/1": {"restart": ts(1)}}
    with ctx(ctx.on.config_changed(), out) as mgr:
        assert not mgr.charm.serial.quiet  # a grant is out: every dispatch loads again
