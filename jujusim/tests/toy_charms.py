"""Tiny purpose-built charms for the simulator's own tests (metadata in toy/).

`ToyCharm` records every event it sees in `SEEN` (unit, event kind, details) and writes relation
data, stored state, deferrals, secrets and juju-exec wake-ups when its actions ask it to. It also
carries a toy peer lock on the `lock` endpoint: the leader grants the critical section by writing
`holder=<unit>` in the app bag; the holder runs `critical_section` and clears its `want`.
`BrokenLockCharm` grants without checking that the holder has finished (the I1 checker must catch
it); `ToyCharmV2` is the "new code" for refresh tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
from typing import Any

import ops

SPEC_DIR = pathlib.Path(__file__).with_name("toy")
SEEN: list[tuple[str, str, dict[str, Any]]] = []


def critical_section(unit: str) -> None:
    """The toy lock's critical section; tests patch this to feed the invariant recorder.

    The patched version also declares the section's cost (it takes longer than a plain hook).
    """


class WakeEvent(ops.EventBase):
    """Dispatched by the juju-exec wake-up (rule: custom events through juju-exec)."""


class ToyEvents(ops.CharmEvents):
    toy_wake = ops.EventSource(WakeEvent)


class ToyCharm(ops.CharmBase):
    """Records what it sees; does what its actions ask."""

    on = ToyEvents()  # type: ignore[reportIncompatibleMethodOverride]
    _stored = ops.StoredState()
    VERSION = "v1"
    CHECK_HOLDER = True

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self._stored.set_default(memo="", defer_left=0, ran=0)
        on = self.on
        for event in (on.install, on.start, on.stop, on.remove, on.config_changed):
            framework.observe(event, self._record)
        for event in (on.upgrade_charm, on.leader_elected, on.secret_changed):
            framework.observe(event, self._record)
        framework.observe(on.update_status, self._on_update_status)
        for endpoint in ("peers", "db", "served", "lock"):
            for kind in ("created", "joined", "changed", "departed", "broken"):
                framework.observe(getattr(on, f"{endpoint}_relation_{kind}"), self._record)
        framework.observe(on.lock_relation_changed, self._on_lock)
        framework.observe(on.lock_relation_departed, self._on_lock)
        framework.observe(on.leader_elected, self._on_lock)
        framework.observe(on.toy_wake, self._on_wake)
        for action in ("write", "remember", "spawn-wake", "make-secret", "bump-secret"):
            framework.observe(on[action].action, getattr(self, "_" + action.replace("-", "_")))
        framework.observe(on.read_secret_action, self._read_secret)
        framework.observe(on.want_lock_action, self._want_lock)

    # --- recording ----------------------------------------------------------------------

    def _record(self, event: ops.EventBase) -> None:
        info: dict[str, Any] = {"leader": self.unit.is_leader(), "version": self.VERSION}
        info["peers"] = self.model.get_relation("peers") is not None
        if isinstance(event, ops.RelationEvent):
            info["relation"] = event.relation.id
            info["app"] = event.app.name if event.app else None
            info["remote"] = event.unit.name if event.unit else None
            if event.unit is not None and not isinstance(event, ops.RelationBrokenEvent):
                info["data"] = dict(event.relation.data[event.unit])
            if event.app is not None and not isinstance(event, ops.RelationBrokenEvent):
                info["app_data"] = dict(event.relation.data[event.app])
            if isinstance(event, ops.RelationDepartedEvent) and event.departing_unit:
                info["departing"] = event.departing_unit.name
            info["members"] = sorted(u.name for u in event.relation.units)
        if isinstance(event, ops.ConfigChangedEvent):
            info["colour"] = self.config.get("colour")
        SEEN.append((self.unit.name, event.handle.kind, info))

    def _on_update_status(self, event: ops.UpdateStatusEvent) -> None:
        if self._stored.defer_left > 0:
            self._stored.defer_left -= 1
            SEEN.append((self.unit.name, "update_status_deferred", {"memo": self._stored.memo}))
            event.defer()
            return
        peers = self.model.get_relation("peers")
        goal = subprocess.run(["goal-state", "--format=json"], capture_output=True, text=True)
        info = {
            "memo": self._stored.memo,
            "members": sorted(u.name for u in peers.units) if peers else [],
            "goal": {u: g["status"] for u, g in json.loads(goal.stdout)["units"].items()},
            "planned": self.app.planned_units(),
        }
        SEEN.append((self.unit.name, "update_status", info))

    def _on_wake(self, event: WakeEvent) -> None:
        SEEN.append((self.unit.name, "toy_wake", {"token": os.environ.get("TOY_TOKEN")}))

    # --- actions ------------------------------------------------------------------------

    def _write(self, event: ops.ActionEvent) -> None:
        relation = self.model.get_relation(event.params["endpoint"])
        assert relation is not None, "no such relation yet"
        owner = self.app if event.params["bag"] == "app" else self.unit
        relation.data[owner][event.params["key"]] = event.params["value"]
        self.unit.status = ops.ActiveStatus(f"wrote {event.params['key']}")
        if event.params["fail"]:
            event.fail("asked to fail")
        if event.params["crash"]:
            raise RuntimeError("asked to crash")
        event.set_results({"written": event.params["key"]})

    def _remember(self, event: ops.ActionEvent) -> None:
        self._stored.memo = event.params["value"]
        self._stored.defer_left = event.params["times"]

    def _spawn_wake(self, event: ops.ActionEvent) -> None:
        juju_exec = shutil.which("juju-exec") or "/usr/bin/juju-exec"
        command = f"TOY_TOKEN={event.params['token']} JUJU_DISPATCH_PATH=hooks/toy_wake"
        subprocess.Popen(
            [juju_exec, "-u", self.unit.name, f"{command} {self.charm_dir}/dispatch"],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _make_secret(self, event: ops.ActionEvent) -> None:
        secret = self.app.add_secret({"value": "1"}, label="toy")
        relation = self.model.get_relation("peers")
        assert relation is not None
        relation.data[self.app]["secret-id"] = secret.id or ""

    def _bump_secret(self, event: ops.ActionEvent) -> None:
        self.model.get_secret(label="toy").set_content({"value": event.params["value"]})

    def _read_secret(self, event: ops.ActionEvent) -> None:
        relation = self.model.get_relation("peers")
        assert relation is not None
        secret = self.model.get_secret(id=relation.data[self.app]["secret-id"])
        event.set_results({"v": secret.get_content(refresh=event.params["refresh"])["value"]})

    # --- the toy lock -------------------------------------------------------------------

    def _want_lock(self, event: ops.ActionEvent) -> None:
        relation = self.model.get_relation("lock")
        assert relation is not None
        relation.data[self.unit]["want"] = "1"
        self._on_lock(event)

    def _on_lock(self, event: ops.EventBase) -> None:
        relation = self.model.get_relation("lock")
        if relation is None:
            return
        if self.unit.is_leader():
            self._grant(relation)
        mine = relation.data[self.app].get("holder") == self.unit.name
        if mine and relation.data[self.unit].get("want") == "1":
            critical_section(self.unit.name)
            self._stored.ran += 1
            del relation.data[self.unit]["want"]
            SEEN.append((self.unit.name, "critical_section", {"ran": self._stored.ran}))

    def _grant(self, relation: ops.Relation) -> None:
        units = sorted([self.unit, *relation.units], key=lambda u: int(u.name.split("/")[1]))
        wanting = [u.name for u in units if relation.data[u].get("want") == "1"]
        holder = relation.data[self.app].get("holder")
        if self.CHECK_HOLDER and holder in wanting:
            return  # the holder has not finished yet
        candidates = [u for u in wanting if u != holder]
        if candidates:
            relation.data[self.app]["holder"] = candidates[-1]  # highest unit first


class BrokenLockCharm(ToyCharm):
    """Grants the next waiting unit without checking that the holder has finished."""

    CHECK_HOLDER = False


class ToyCharmV2(ToyCharm):
    """The same charm, "new code" for refresh tests.

    A real refresh keeps the charm class's name, which ops uses in the handle paths of stored
    state and deferred events; so does this one.
    """

    VERSION = "v2"
    handle_kind = "ToyCharm"
