"""Operator operations: what `juju deploy`, `add-unit`, `run`, `refresh`... make Juju enqueue.

None of them runs charm code; the scheduler runs what they queue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema

from .clock import Clock
from .core import operator
from .queues import ACTION, CUSTOM, HOOK, ActionRecord, Item
from .records import ActionRejected, FailSpec
from .runner import CharmSpec
from .truth import AppTruth, app_of, unit_id

FAIL_POINTS = ("entry", "in_critical_section", "before_return")


class Operations(Clock):
    """The operator's side of Juju (rule: operator operations only enqueue)."""

    @operator
    def deploy(
        self,
        app: str,
        spec: CharmSpec,
        *,
        units: int = 1,
        config: dict[str, Any] | None = None,
    ) -> list[str]:
        """`juju deploy`: install, peer relation-created, leader-elected, config-changed, start."""
        if app in self.apps:
            raise ValueError(f"application {app} already exists")
        truth = AppTruth(app, len(self.apps), spec, {**spec.config_defaults(), **(config or {})})
        self.apps[app] = truth
        for endpoint, interface in spec.peer_endpoints().items():
            self._new_relation({app: endpoint}, interface)
        added = [self._new_unit(app) for _ in range(units)]
        if added:
            truth.leader = added[0]
        for unit in added:
            self._enqueue_install(unit)
        for unit in added:
            self._join_everyone(unit)
        self.log(f"deploy {app} units={units}")
        return added

    @operator
    def add_unit(self, app: str) -> str:
        """`juju add-unit`: the new unit installs, then joins and is joined.

        Rule: relation lifecycle.
        """
        unit = self._new_unit(app)
        self._enqueue_install(unit)
        self._join_everyone(unit)
        self.log(f"add_unit {unit}")
        return unit

    @operator
    def integrate(self, app_a: str, endpoint_a: str, app_b: str, endpoint_b: str) -> int:
        """`juju integrate`: relation-created on every unit of both apps, then joins.

        Rule: relation lifecycle.
        """
        interface = self.apps[app_a].charm.endpoint_interface(endpoint_a)
        rel = self._new_relation({app_a: endpoint_a, app_b: endpoint_b}, interface)
        for app in (app_a, app_b):
            for unit in self.members(app):
                self._seed_unit_bag(rel, unit)
                self.enqueue(unit, "relation_created", relation=rel.id, cause="integrate")
        for unit in self.members(app_a) + self.members(app_b):
            for remote in self.members(rel.other_app(app_of(unit))):
                self._enqueue_join(rel, unit, remote, cause="integrate")
        self.log(f"integrate {app_a}:{endpoint_a} {app_b}:{endpoint_b} -> relation {rel.id}")
        return rel.id

    @operator
    def remove_unit(self, unit: str, graceful: bool = True) -> None:
        """`juju remove-unit` (graceful) or the machine vanishing (graceful=False).

        Rules: unit removal; departing unit's data.
        """
        truth = self.units[unit]
        if truth.departing:
            return
        truth.departing = True
        truth.departing_seq = self._next_seq()
        self.apps[truth.app].units.remove(unit)
        if graceful:
            # The agent acts on Dying between hooks: what is in flight or queued runs first, then
            # the unit's own departed (and broken) hooks; it leaves each relation's scope after its
            # last one there (the others' departed follow), and leadership when `remove` commits.
            self.queues[unit].drop(
                lambda i: i.event in ("relation_joined", "relation_changed") and i.attempts == 0
            )
            for rel in self._relations_of(unit):
                remotes = sorted(rel.views.get(unit, ()), key=unit_id)
                for remote in remotes:
                    self.enqueue(
                        unit, "relation_departed", relation=rel.id, remote=remote,
                        departing=unit, cause=f"remove_unit {unit}",
                    )  # fmt: skip
                if not rel.is_peer:
                    self.enqueue(unit, "relation_broken", relation=rel.id, cause="remove_unit")
                elif not remotes:
                    self._leave_scope(unit, rel)
            self.enqueue(unit, "stop", cause=f"remove_unit {unit}")
            self.enqueue(unit, "remove", cause=f"remove_unit {unit}")
        else:
            self.queues[unit].items.clear()
            lost = self.running.pop(unit, None)
            if lost is not None:
                self._finish(lost, ok=False, why="machine gone")
            truth.removed = True
            for rel in self._relations_of(unit):
                self._leave_scope(unit, rel)
            self._resign_leadership(unit)
        self.log(f"remove_unit {unit} graceful={graceful}")
        self._collect_garbage()

    @operator
    def remove_relation(self, rel_id: int) -> None:
        """`juju remove-relation`: departed per remote unit, then broken, on every unit.

        Rule: relation removal.
        """
        rel = self.relations[rel_id]
        for unit in sorted(rel.attached, key=lambda u: (app_of(u), unit_id(u))):
            self.queues[unit].drop(lambda i: i.relation == rel_id and i.attempts == 0)
            for remote in sorted(rel.views.get(unit, ()), key=unit_id):
                self.enqueue(
                    unit, "relation_departed", relation=rel_id, remote=remote, departing=remote,
                    cause=f"remove_relation {rel_id}",
                )  # fmt: skip
            self.enqueue(unit, "relation_broken", relation=rel_id, cause="remove_relation")
        rel.known.clear()
        self.log(f"remove_relation {rel_id}")

    @operator
    def set_leader(self, unit: str) -> None:
        """Leadership moves to `unit`; only it gets leader-elected (rule: leadership)."""
        self._appoint_leader(unit)

    @operator
    def run_action(self, target: str, name: str, /, **params: Any) -> ActionRecord:
        """`juju run <unit> <action> k=v`: schema defaults applied, params checked first.

        `target` and `name` are positional only, so an action may have a parameter `name`.

        Rule: actions.
        """
        if target.endswith("/leader"):
            leader = self.apps[target.split("/")[0]].leader
            if leader is None:
                raise ActionRejected(f"{target}: the application has no leader")
            target = leader  # bound when enqueued (rule: leadership may move mid-hook)
        truth = self.units[target]
        spec = truth.charm.actions.get(name)
        if spec is None:
            raise ActionRejected(f"{target}: action {name!r} is not defined")
        props = spec.get("params", {})
        full = {k: v["default"] for k, v in props.items() if "default" in v}
        full.update(params)
        schema = {
            "type": "object",
            "properties": props,
            "required": spec.get("required", []),
            "additionalProperties": spec.get("additionalProperties", True),
        }
        try:
            jsonschema.validate(full, schema)
        except jsonschema.ValidationError as error:
            raise ActionRejected(f"{target} {name}: {error.message}") from error
        record = ActionRecord(id=str(len(self.actions) + 1), unit=target, name=name, params=full)
        self.actions[record.id] = record
        self.enqueue(target, name, kind=ACTION, action=record, cause="juju run")
        self.log(f"run_action {target} {name} {full}")
        return record

    @operator
    def refresh(
        self,
        app: str,
        spec: CharmSpec | None = None,
        *,
        delayed: tuple[str, ...] = (),
    ) -> None:
        """`juju refresh`: upgrade-charm, config-changed on every unit in random order (refresh).

        The new charm class is swapped in when a unit's upgrade-charm starts. Units in error are
        skipped. Units in `delayed` (fault `delayed_upgrade`) first run what they already queued.
        """
        new = spec or self.apps[app].charm
        self.apps[app].charm = new
        order = self.members(app)
        self.rng.shuffle(order)
        for unit in order:
            if self.units[unit].error:
                continue
            items = [
                Item(self._next_seq(), HOOK, "upgrade_charm", new_charm=new, cause="refresh"),
                Item(self._next_seq(), HOOK, "config_changed", cause="refresh"),
            ]
            for item in items:
                item.not_before = self.now
            if unit in delayed:
                self.queues[unit].items.extend(items)
            else:
                self.queues[unit].push_front(items)
        self.log(f"refresh {app} order={order} delayed={list(delayed)}")

    @operator
    def config(self, app: str, **values: Any) -> None:
        """`juju config`: config-changed on every unit (rule: periodic and config hooks)."""
        self.apps[app].config.update(values)
        for unit in self.members(app):
            self.enqueue(unit, "config_changed", cause="config")
        self.log(f"config {app} {values}")

    @operator
    def request(self, unit: str, operation: str, action: str, **params: Any) -> ActionRecord:
        """Ask for a coordinated operation through an action; the recorder counts the request."""
        record = self.run_action(unit, action, **params)
        if self.recorder is not None:
            self.recorder.request(unit, operation, record)
        return record

    @operator
    def update_status(self, app: str | None = None) -> None:
        """One update-status tick on every unit: the only wake-up for deferred events.

        Rules: periodic and config hooks; deferred events.
        """
        for name in self.apps:
            if app in (None, name):
                for unit in self.members(name):
                    self.enqueue(unit, "update_status", cause="update-status")

    @operator
    def fire_custom(
        self,
        unit: str,
        event: str,
        env: dict[str, str] | None = None,
        on_done: Callable[[bool], Any] | None = None,
    ) -> Item:
        """What a background worker does through juju-exec: dispatch a custom event.

        Rule: custom events through juju-exec.

        `on_done(ok)` is called when the dispatch commits or fails: juju-exec's exit code (rule:
        queues and background actors).
        """
        return self.enqueue(
            unit, event, kind=CUSTOM, env=dict(env or {}), cause="fire_custom", on_done=on_done
        )

    @operator
    def fail_hook(
        self, unit: str, match: str | None = None, nth: int = 1, point: str = "entry"
    ) -> None:
        """Make the nth run on `unit` whose label contains `match` fail at `point`.

        Rule: faults.
        """
        if point not in FAIL_POINTS:
            raise ValueError(f"point must be one of {FAIL_POINTS}")
        self.faults.setdefault(unit, []).append(FailSpec(match, nth, point))
        self.log(f"fail_hook {unit} match={match} nth={nth} point={point}")

    @operator
    def resolve(self, unit: str, retry: bool = True) -> None:
        """`juju resolved [--no-retry]`: clear the error; retry or skip the failed hook.

        Rule: hook failure and retry.
        """
        truth = self.units[unit]
        if not truth.error:
            return
        truth.error = None
        failed = [i for i in self.queues[unit].items if i.attempts]
        if failed:
            if retry:
                failed[0].not_before = self.now
            else:
                self.queues[unit].remove(failed[0])
        self.log(f"resolve {unit} retry={retry}")
