"""The multi-unit Juju simulator: N copies of a real charm class under Juju's event semantics.

Juju's truth (truth.py) lives here, outside Scenario. Each unit has a queue of items (queues.py);
a scheduler (scheduler.py) decides, step by step, which unit starts its next item and when the
logical clock advances. An item runs at once against the truth as of its start (runner.py) and its
output is committed `duration` ticks later (B4), so hooks on different units overlap. At commit
the simulator applies the writes and routes the notifications Juju would send (B6).

Operator operations (deploy, add_unit, remove_unit, set_leader, run_action, refresh, config,
fail_hook, resolve, fire_custom, ...) only enqueue what Juju would enqueue; none runs charm code.
Rule numbers (R1-R24) refer to specs/juju-semantics.md.

    sim = Simulator(seed=1)
    sim.deploy("toy", spec, units=3)
    sim.drain()
    sim.run_action("toy/1", "write", key="a", value="1")
    sim.drain()
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import random
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
from ops import testing

from . import runner
from .queues import ACTION, CUSTOM, HOOK, ActionRecord, Item, UnitQueue
from .runner import CharmSpec, RunResult, SimulatorBug
from .truth import AppTruth, Bag, RelationTruth, Secret, UnitTruth, app_of, unit_id

JUJU_KEYS = ("egress-subnets", "ingress-address", "private-address")  # R11
RETRY_POLICIES = ("none", "backoff", "immediate")
FAIL_POINTS = ("entry", "in_critical_section", "before_return")
MODEL = testing.Model(name="sim", uuid="00000000-0000-4000-8000-000000000001")


class ActionRejected(Exception):
    """Juju refused the action before running it (unknown action, params fail the schema)."""


class InjectedFault(Exception):
    """The exception a `fail_hook` fault raises inside a run."""


class DrainLimit(Exception):
    """`drain` hit its step bound: likely a livelock; the message lists the repeating items."""


@dataclasses.dataclass
class FailSpec:
    """An armed `fail_hook` fault."""

    match: str | None  # substring of the item label; None matches any item
    nth: int  # fail the nth matching run
    point: str  # entry | in_critical_section | before_return
    seen: int = 0


@dataclasses.dataclass(frozen=True)
class Writable:
    """A copy of what a run may write (its own relation bags, secret contents), taken at its start.

    Scenario runs the charm on the input State itself (runner.fast_scenario skips its deepcopy),
    so the commit diffs the output against this copy.
    """

    bags: dict[int, tuple[dict[str, str], dict[str, str]]]  # relation id -> (unit bag, app bag)
    secrets: dict[str, tuple[dict[str, str], dict[str, str]]]  # id -> (latest, tracked content)
    grants: dict[str, dict[int, frozenset[str]]]  # id -> relation id -> apps (owner's view)

    @classmethod
    def of(cls, state: testing.State) -> Writable:
        return cls(
            bags={
                r.id: (dict(r.local_unit_data), dict(r.local_app_data)) for r in state.relations
            },
            secrets={
                s.id: (dict(s.latest_content), dict(s.tracked_content)) for s in state.secrets
            },
            grants={
                s.id: {rid: frozenset(apps) for rid, apps in s.remote_grants.items()}
                for s in state.secrets
            },
        )


@dataclasses.dataclass
class Running:
    """An item that started and has not committed yet."""

    seq: int
    unit: str
    item: Item
    start: int
    end: int = 0
    before: Writable | None = None  # the run's writable data at its start; writes diff against it
    result: RunResult | None = None
    juju_exec: list[tuple[str, str, dict[str, str]]] = dataclasses.field(default_factory=list)
    fault: FailSpec | None = None
    extra_ticks: int = 0
    leader_at_start: bool = False
    ok: bool | None = None  # set at commit
    wrote: bool = False  # committed at least one relation write


@dataclasses.dataclass
class Timer:
    """An operator operation or fault scheduled at a logical time."""

    at: int
    seq: int
    label: str
    action: Callable[[], Any]


def operator(method: Callable) -> Callable:
    """Record a public operation in `sim.steps` (replayable) unless called from inside another."""

    def wrapper(self: Simulator, *args: Any, **kwargs: Any) -> Any:
        outer = self._depth == 0
        if outer:
            self.steps.append((method.__name__, args, kwargs))
        self._depth += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            self._depth -= 1

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class Simulator:
    """Juju for N units of one or more applications, on logical time."""

    def __init__(
        self,
        *,
        seed: int = 0,
        leader_sees_own_app_writes: bool = True,
        retry: str = "none",
        duration: Callable[[str, Item], int] | None = None,
        election: str = "lowest",
        substrate: str = "machine",
    ):
        if retry not in RETRY_POLICIES:
            raise ValueError(f"retry must be one of {RETRY_POLICIES}")
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - schedules, not secrets
        self.leader_sees_own_app_writes = leader_sees_own_app_writes
        self.retry = retry
        self.duration = duration or (lambda unit, item: 1)
        self.election = election
        self.substrate = substrate
        self.now = 0
        self.apps: dict[str, AppTruth] = {}
        self.units: dict[str, UnitTruth] = {}
        self.queues: dict[str, UnitQueue] = {}
        self.relations: dict[int, RelationTruth] = {}
        self.secrets: dict[str, Secret] = {}
        self.running: dict[str, Running] = {}
        self.timers: list[Timer] = []
        self.faults: dict[str, list[FailSpec]] = {}
        self.actions: dict[str, ActionRecord] = {}
        self.trace: list[str] = []
        self.steps: list[tuple[str, tuple, dict]] = []  # every public call, replayable (script.py)
        self._depth = 0
        self.dropped: list[str] = []  # notifications Scenario cannot express (C1)
        self.errors: list[str] = []  # uncaught charm errors not caused by an injected fault
        self.custom_delay: dict[str, int] = {}  # custom event name -> ticks before it may run
        self.orphan_worker = False  # fault: a failed hook's juju-exec request still runs (R22)
        self.current: Running | None = None
        self.recorder: Any = None  # invariants.Recorder, when one is attached
        self.workloads: dict[str, Any] = {}  # per-unit fake workload state (owned by the fakes)
        self.actors: list[Any] = []  # background workers: next_time() -> int | None, step(sim)
        self.listeners: list[Any] = []  # objects with on_start(sim, run) / on_commit(sim, run, ok)
        self.runs: dict[int, Running] = {}  # every run by seq (inputs dropped after commit)
        self._committing = 0  # seq of the run being committed: the parent of what it queues
        self._seq = 0
        self._rel_ids = 0
        self._contexts: dict[tuple[int, str, int], testing.Context] = {}
        self.hooks_run = 0

    def fork(self, seed: int | None = None, **switches: Any) -> Simulator:
        """An independent copy of this simulator's truth (e.g. a settled deployment), reseeded.

        Contexts and charm specs are shared (they hold no truth); everything else is copied,
        except listeners and the recorder (attach new ones to the copy).
        `switches` override settings such as leader_sees_own_app_writes or retry.
        """
        if self.running:
            raise SimulatorBug("fork a settled simulator (nothing running)")
        memo: dict[int, Any] = {id(ctx): ctx for ctx in self._contexts.values()}
        for obj in [*self.apps.values(), *self.units.values()]:
            memo[id(obj.charm)] = obj.charm
        memo.update({id(u.ctx): u.ctx for u in self.units.values()})
        memo[id(self._contexts)] = self._contexts
        memo[id(self.duration)] = self.duration
        memo[id(self.listeners)], memo[id(self.recorder)] = [], None
        copy_ = copy.deepcopy(self, memo)
        copy_.seed = self.seed if seed is None else seed
        copy_.rng = random.Random(copy_.seed)  # noqa: S311
        copy_.trace, copy_.steps = [], [("fork", (), {"seed": copy_.seed})]
        for key, value in switches.items():
            if not hasattr(copy_, key):
                raise TypeError(f"unknown switch {key}")
            setattr(copy_, key, value)
        return copy_

    # --- small helpers ----------------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def log(self, text: str) -> None:
        self.trace.append(f"t={self.now} {text}")

    def enqueue(self, unit: str, event: str, kind: str = HOOK, **fields: Any) -> Item:
        fields.setdefault("parent", self._committing)
        item = Item(seq=self._next_seq(), kind=kind, event=event, **fields)
        item.not_before = max(item.not_before, self.now)
        return self.queues[unit].append(item)

    def context(self, spec: CharmSpec, unit: str) -> testing.Context:
        key = (id(spec), app_of(unit), unit_id(unit))
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = runner.make_context(spec, app_of(unit), unit_id(unit))
        return ctx

    def members(self, app: str) -> list[str]:
        """Live units of `app` (not departing), in id order."""
        return [u for u in self.apps[app].units if not self.units[u].departing]

    def leader(self, app: str) -> str | None:
        return self.apps[app].leader

    def relation(self, app: str, endpoint: str) -> RelationTruth:
        """The (first) relation of `app` on `endpoint`."""
        for rel in self.relations.values():
            if rel.endpoints.get(app) == endpoint:
                return rel
        raise KeyError(f"{app} has no relation on {endpoint}")

    def add_timer(self, at: int, label: str, action: Callable[[], Any]) -> None:
        """Run an operator operation or fault at logical time `at` (before starts at that tick)."""
        self.timers.append(Timer(max(at, self.now), self._next_seq(), label, action))

    # --- topology and operator operations (B7) ----------------------------------------------

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
        """`juju add-unit`: the new unit installs, then joins and is joined (R10)."""
        unit = self._new_unit(app)
        self._enqueue_install(unit)
        self._join_everyone(unit)
        self.log(f"add_unit {unit}")
        return unit

    @operator
    def integrate(self, app_a: str, endpoint_a: str, app_b: str, endpoint_b: str) -> int:
        """`juju integrate`: relation-created on every unit of both apps, then joins (R10)."""
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
        """`juju remove-unit` (graceful) or the machine vanishing (graceful=False) (R12, R13)."""
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

    def _leave_scope(self, unit: str, rel: RelationTruth) -> None:
        """`unit` leaves `rel`'s scope: every remaining member that knew it gets departed (R12)."""
        for other in list(rel.known):
            if other == unit or unit not in rel.known[other]:
                continue
            rel.known[other].discard(unit)
            self.queues[other].drop(
                lambda i, r=rel.id: i.relation == r and i.remote == unit and not i.app_level
            )
            if unit in rel.views.get(other, ()):
                self.enqueue(
                    other, "relation_departed", relation=rel.id, remote=unit, departing=unit,
                    cause=f"remove_unit {unit}",
                )  # fmt: skip

    def _resign_leadership(self, unit: str) -> None:
        """A removed leader's lease ends: Juju elects another unit (R15)."""
        app = self.apps[app_of(unit)]
        if app.leader == unit:
            app.leader = None
            self._elect(app.name)

    @operator
    def remove_relation(self, rel_id: int) -> None:
        """`juju remove-relation`: departed per remote unit, then broken, on every unit (R14)."""
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
        """Leadership moves to `unit`; only it gets leader-elected (R15)."""
        app = self.apps[app_of(unit)]
        if app.leader == unit:
            return
        app.leader = unit
        self.enqueue(unit, "leader_elected", cause="set_leader")
        self.log(f"set_leader {unit}")

    def _elect(self, app: str) -> None:
        members = self.members(app)
        if not members:
            return
        chosen = members[0] if self.election == "lowest" else self.rng.choice(members)
        self.set_leader(chosen)

    @operator
    def run_action(self, target: str, name: str, **params: Any) -> ActionRecord:
        """`juju run <unit> <action> k=v`: schema defaults applied, params checked first (R21)."""
        if target.endswith("/leader"):
            leader = self.apps[target.split("/")[0]].leader
            if leader is None:
                raise ActionRejected(f"{target}: the application has no leader")
            target = leader  # bound when enqueued (R16)
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
        """`juju refresh`: upgrade-charm then config-changed on every unit, random order (R20).

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
        """`juju config`: config-changed on every unit (R19)."""
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
        """One update-status tick on every unit (R19): the only wake-up for deferred events."""
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
        """What a background worker does through juju-exec: dispatch a custom event (R22).

        `on_done(ok)` is called when the dispatch commits or fails: juju-exec's exit code (B2).
        """
        return self.enqueue(
            unit, event, kind=CUSTOM, env=dict(env or {}), cause="fire_custom", on_done=on_done
        )

    @operator
    def fail_hook(
        self, unit: str, match: str | None = None, nth: int = 1, point: str = "entry"
    ) -> None:
        """Make the nth run on `unit` whose label contains `match` fail at `point` (B8)."""
        if point not in FAIL_POINTS:
            raise ValueError(f"point must be one of {FAIL_POINTS}")
        self.faults.setdefault(unit, []).append(FailSpec(match, nth, point))
        self.log(f"fail_hook {unit} match={match} nth={nth} point={point}")

    @operator
    def resolve(self, unit: str, retry: bool = True) -> None:
        """`juju resolved [--no-retry]`: clear the error; retry or skip the failed hook (R18)."""
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

    def checkpoint(self, point: str) -> None:
        """Called by fakes at named points of a run; raises if a fault is armed there."""
        run = self.current
        if run is not None and run.fault is not None and run.fault.point == point:
            raise InjectedFault(f"injected failure at {point} on {run.unit}")

    def add_cost(self, ticks: int) -> None:
        """Called by fakes: the running item takes `ticks` longer (e.g. a restart, a delay)."""
        if self.current is not None and ticks > 0:
            self.current.extra_ticks += int(ticks)

    # --- membership internals --------------------------------------------------------------

    def _new_relation(self, endpoints: dict[str, str], interface: str) -> RelationTruth:
        self._rel_ids += 1
        rel = RelationTruth(self._rel_ids, dict(endpoints), interface)
        rel.app_bags = {app: Bag() for app in endpoints}
        self.relations[rel.id] = rel
        return rel

    def _new_unit(self, app: str) -> str:
        truth = self.apps[app]
        uid = truth.next_id
        truth.next_id += 1
        name = f"{app}/{uid}"
        ctx = self.context(truth.charm, name)
        self.units[name] = UnitTruth(name, f"10.{truth.index}.0.{uid + 1}", ctx, truth.charm)
        self.queues[name] = UnitQueue()
        truth.units.append(name)
        for rel in self._relations_of(name, all_of_app=True):
            self._seed_unit_bag(rel, name)
        return name

    def _seed_unit_bag(self, rel: RelationTruth, unit: str) -> None:
        address = self.units[unit].address
        rel.unit_bags[unit] = Bag(dict.fromkeys(JUJU_KEYS, address))
        rel.views.setdefault(unit, set())
        rel.known.setdefault(unit, set())

    def _relations_of(self, unit: str, all_of_app: bool = False) -> list[RelationTruth]:
        app = app_of(unit)
        return [
            r
            for r in self.relations.values()
            if app in r.endpoints and (all_of_app or unit in r.unit_bags)
        ]

    def _enqueue_install(self, unit: str) -> None:
        self.enqueue(unit, "install", cause="deploy")
        for rel in self._relations_of(unit):
            self.enqueue(unit, "relation_created", relation=rel.id, cause="deploy")
        if self.apps[app_of(unit)].leader == unit:
            self.enqueue(unit, "leader_elected", cause="deploy")
        self.enqueue(unit, "config_changed", cause="deploy")
        self.enqueue(unit, "start", cause="deploy")

    def _join_everyone(self, unit: str) -> None:
        for rel in self._relations_of(unit):
            remote_app = rel.other_app(app_of(unit))
            for other in self.members(remote_app):
                if other == unit:
                    continue
                self._enqueue_join(rel, unit, other, cause=f"join {other}")
                self._enqueue_join(rel, other, unit, cause=f"join {unit}")

    def _enqueue_join(self, rel: RelationTruth, observer: str, joiner: str, cause: str) -> None:
        if joiner in rel.known.setdefault(observer, set()):
            return
        rel.known[observer].add(joiner)
        self.enqueue(observer, "relation_joined", relation=rel.id, remote=joiner, cause=cause)
        self.enqueue(observer, "relation_changed", relation=rel.id, remote=joiner, cause=cause)

    def _collect_garbage(self) -> None:
        """Forget removed units' bags once no unit still sees them (their departed ran, R13)."""
        for rel in list(self.relations.values()):
            for unit in list(rel.unit_bags):
                truth = self.units[unit]
                if truth.removed and not any(unit in v for v in rel.views.values()):
                    del rel.unit_bags[unit]
                    rel.views.pop(unit, None)
                    rel.known.pop(unit, None)
                    rel.attached.discard(unit)

    # --- scheduling primitives (B5) --------------------------------------------------------

    def eligible(self) -> list[str]:
        """Units that may start an item now, in id order."""
        out = []
        for name, truth in self.units.items():
            if truth.removed or name in self.running:
                continue
            item = self.queues[name].peek(self.now)
            if item is None:
                continue
            if truth.error and (self.retry == "none" or not item.attempts):
                continue
            out.append(name)
        return out

    def next_time(self) -> int | None:
        """The next logical time at which something can happen (commit, timer, not-before)."""
        times = [r.end for r in self.running.values()]
        times += [t.at for t in self.timers]
        times += [t for a in self.actors if (t := a.next_time()) is not None]
        for name, truth in self.units.items():
            if truth.removed or name in self.running:
                continue
            if truth.error and self.retry == "none":
                continue
            later = [i.not_before for i in self.queues[name].items if i.not_before > self.now]
            times += later
        future = [t for t in times if t > self.now]
        return min(future) if future else None

    def busy(self) -> bool:
        """Whether anything can still happen without an operator (run, queue, timer)."""
        return bool(self.running or self.timers or self.eligible() or self.next_time() is not None)

    def quiescent(self) -> bool:
        """Nothing running, queued or scheduled on any unit (units in error count as queued)."""
        if self.running or self.timers:
            return False
        return all(not self.queues[u] for u, t in self.units.items() if not t.removed)

    def stuck_units(self) -> list[str]:
        return [u for u, t in self.units.items() if t.error and not t.removed]

    def fire_due_timers(self) -> None:
        due = sorted((t for t in self.timers if t.at <= self.now), key=lambda t: (t.at, t.seq))
        for timer in due:
            self.timers.remove(timer)
            self.log(f"timer {timer.label}")
            timer.action()

    def advance(self) -> bool:
        """Move the clock to the next time something happens; commit what ends by then.

        Timers due by then fire afterwards, as top-level operator calls (so they are recorded).
        """
        moved = self._advance_clock()
        self.fire_due_timers()
        for actor in list(self.actors):
            due = actor.next_time()
            if due is not None and due <= self.now:
                actor.step(self)
        return moved

    @operator
    def _advance_clock(self) -> bool:
        target = self.next_time()
        if target is None:
            if self.running:
                target = self.now
            else:
                return False
        self.now = target
        ending = sorted(
            (r for r in self.running.values() if r.end <= self.now),
            key=lambda r: (r.start, unit_id(r.unit), r.unit),
        )
        for run in ending:
            del self.running[run.unit]
            self._commit(run)
        return True

    # --- running an item (B3) --------------------------------------------------------------

    @operator
    def start(self, unit: str) -> Running | None:
        """Start the unit's next item: run it now against the truth, commit it later."""
        truth = self.units[unit]
        if unit in self.running or truth.removed:
            raise SimulatorBug(f"{unit} cannot start: running or removed")
        queue = self.queues[unit]
        item = queue.peek(self.now)
        if item is None:
            raise SimulatorBug(f"{unit} has nothing to start at t={self.now}")
        queue.remove(item)
        runnable, remote_id = self._prepare(unit, item)
        if not runnable:
            return None
        state = self._build_state(unit, item)
        relation = None
        if item.relation is not None:
            relation = state.get_relation(item.relation)
        event = runner.build_event(truth.ctx, item, relation, remote_id)
        run = Running(self._next_seq(), unit, item, self.now, before=Writable.of(state))
        run.leader_at_start = state.leader
        run.fault = self._match_fault(unit, item)
        for listener in self.listeners:
            listener.on_start(self, run)
        self.current = run
        try:
            if run.fault is not None and run.fault.point == "entry":
                run.result = RunResult(state=None, error=f"InjectedFault: at entry on {unit}")
            else:
                with intercept_juju_exec(self, run):
                    run.result = runner.run(
                        truth.ctx, event, state, item.env or None, departing=item.departing
                    )
                if run.fault is not None and run.fault.point == "before_return":
                    run.result = RunResult(state=None, error="InjectedFault: before return")
        except SimulatorBug as bug:
            from .script import format_script

            script = format_script(self.steps)
            raise SimulatorBug(f"{bug}\n--- schedule (seed {self.seed}) ---\n{script}") from bug
        finally:
            self.current = None
        run.end = self.now + max(1, int(self.duration(unit, item))) + run.extra_ticks
        self.running[unit] = run
        self.runs[run.seq] = run
        truth.hooks += 1
        self.hooks_run += 1
        self.log(f"start {unit} {item.label()} (ends t={run.end})")
        return run

    def _match_fault(self, unit: str, item: Item) -> FailSpec | None:
        for spec in self.faults.get(unit, []):
            if spec.match is None or spec.match in item.label():
                spec.seen += 1
                if spec.seen == spec.nth:
                    self.faults[unit].remove(spec)
                    return spec
        return None

    def _prepare(self, unit: str, item: Item) -> tuple[bool, int | None]:
        """Agent-side bookkeeping before a run: (whether to run it, the remote unit id)."""
        truth = self.units[unit]
        if item.new_charm is not None and item.new_charm is not truth.charm:
            truth.charm = item.new_charm  # refresh: the new code handles this upgrade-charm (R20)
            truth.ctx = self.context(item.new_charm, unit)
            if self.substrate == "k8s":
                truth.stored_states, truth.deferred = frozenset(), []
        if item.relation is None:
            return True, None
        rel = self.relations.get(item.relation)
        if rel is None or unit in rel.broken:  # broken here: Juju runs nothing more for it
            self.log(f"skip {unit} {item.label()}: relation gone")
            return False, None
        if item.event == "relation_created":
            rel.attached.add(unit)
        if item.event == "relation_joined" and item.remote:
            rel.views.setdefault(unit, set()).add(item.remote)
            owed = self.queues[unit].pending_changed(rel.id, item.remote)
            if owed is not None:
                owed.owed = True
        remote = item.remote
        if item.event == "relation_changed":
            key = (rel.id, item.writer or "")
            version = self._bag_of(rel, item).version
            if truth.seen.get(key, -1) >= version and not item.owed and not item.attempts:
                self.log(f"skip {unit} {item.label()}: version {version} already seen (R7)")
                return False, None
            item.seen_version = version  # becomes the unit's seen-version if the run commits
            if item.app_level:
                remote = self._app_event_remote(rel, unit, item)
                if remote is None:
                    self.dropped.append(f"t={self.now} {unit} {item.label()}")
                    self.log(f"dropped {unit} {item.label()} (Scenario gap C1: no remote unit)")
                    return False, None
        return True, (unit_id(remote) if remote else None)

    def _bag_of(self, rel: RelationTruth, item: Item) -> Bag:
        if item.app_level:
            return rel.app_bags[item.writer_app or ""]
        return rel.unit_bags.get(item.remote or "", Bag())

    def _app_event_remote(self, rel: RelationTruth, unit: str, item: Item) -> str | None:
        """Scenario needs a remote unit for an app-level change (C1): leader, else lowest id."""
        view = sorted(rel.views.get(unit, ()), key=unit_id)
        leader = self.apps[item.writer_app or ""].leader
        if leader in view:
            return leader
        return view[0] if view else None

    def _build_state(self, unit: str, item: Item) -> testing.State:
        """The unit's snapshot of the truth at the item's start (B3)."""
        truth = self.units[unit]
        app = self.apps[truth.app]
        relations = []
        for rel in self.relations.values():
            if unit not in rel.attached or unit in rel.broken:
                continue
            relations.append(self._relation_state(rel, unit))
        secrets = [self._secret_state(s, unit) for s in self.secrets.values()]
        return testing.State(
            leader=app.leader == unit,
            config=dict(app.config),
            planned_units=len(self.members(app.name)),
            relations=relations,
            secrets=[s for s in secrets if s is not None],
            stored_states=truth.stored_states,
            deferred=list(truth.deferred),
            unit_status=truth.unit_status,
            app_status=app.app_status,
            workload_version=truth.workload_version,
            model=MODEL,
        )

    def _relation_state(self, rel: RelationTruth, unit: str) -> Any:
        app = app_of(unit)
        endpoint = rel.endpoints[app]
        view = sorted(rel.views.get(unit, ()), key=unit_id)
        local_unit = dict(rel.unit_bags[unit].data)
        if rel.is_peer:
            return testing.PeerRelation(
                endpoint,
                interface=rel.interface,
                id=rel.id,
                local_app_data=dict(rel.app_bags[app].data),
                local_unit_data=local_unit,
                peers_data={unit_id(v): dict(rel.unit_bags[v].data) for v in view},
            )
        remote_app = rel.other_app(app)
        return testing.Relation(
            endpoint,
            interface=rel.interface,
            id=rel.id,
            remote_app_name=remote_app,
            local_app_data=dict(rel.app_bags[app].data),
            local_unit_data=local_unit,
            remote_app_data=dict(rel.app_bags[remote_app].data),
            remote_units_data={unit_id(v): dict(rel.unit_bags[v].data) for v in view},
        )

    def _secret_state(self, secret: Secret, unit: str) -> testing.Secret | None:
        """The secret as `unit` sees it: its owner's units always, others only through a grant.

        A grant is to one relation instance (R23): it lasts while the relation exists and the
        unit is in it (attached, relation-broken not yet run), so a re-created relation needs
        its own grant.
        """
        owner = "app" if app_of(unit) == secret.owner_app else None
        if owner is None and not self._granted(secret, unit):
            return None
        tracked = secret.tracked.setdefault(unit, secret.latest)
        return testing.Secret(
            dict(secret.revisions[tracked - 1]),
            latest_content=dict(secret.revisions[-1]),
            id=secret.id,
            owner=owner,
            label=secret.label if owner else None,
            remote_grants={rid: set(apps) for rid, apps in secret.grants.items()} if owner else {},
        )

    def _granted(self, secret: Secret, unit: str) -> bool:
        for rel_id, apps in secret.grants.items():
            rel = self.relations.get(rel_id)
            if rel is None or app_of(unit) not in apps:
                continue
            if unit in rel.attached and unit not in rel.broken:
                return True
        return False

    # --- commit and routing (B4, B6) -------------------------------------------------------

    def _commit(self, run: Running) -> None:
        self._committing = run.seq
        try:
            self._commit_run(run)
        finally:
            self._committing = 0

    def _commit_run(self, run: Running) -> None:
        unit, item, result = run.unit, run.item, run.result
        truth = self.units[unit]
        assert result is not None
        if truth.removed:
            self._finish(run, ok=False, why="unit gone")
            return
        if result.state is None:
            self._fail(run, result.error or "failed")
            return
        out = result.state
        assert run.before is not None
        writes = self._diff(run.before, out)
        is_leader = self.apps[truth.app].leader == unit
        app_writes = any(app_changes for _, _, app_changes in writes)
        if not is_leader and (app_writes or self._secrets_changed(run.before, out)):
            # R16: app data (and app secrets) are refused once leadership has moved
            self._fail(run, "ModelError: leadership lost before the hook ended (R16)")
            return
        # stored state, deferrals, statuses: the unit's own (R5 ok path)
        truth.stored_states = out.stored_states
        truth.deferred = list(out.deferred)
        truth.unit_status = out.unit_status
        truth.workload_version = out.workload_version
        truth.error = None
        if is_leader:
            self.apps[truth.app].app_status = out.app_status
        if item.seen_version is not None:
            truth.seen[(item.relation or 0, item.writer or "")] = item.seen_version
        self._commit_relations(run, writes)
        self._commit_secrets(run, out)
        self._commit_juju_exec(run)
        if item.action is not None:
            item.action.status = "failed" if result.action_failed else "completed"
            item.action.message = result.action_failed or ""
            item.action.results = result.results
            item.action.logs = result.logs
        self._lifecycle_after(run)
        self._finish(run, ok=True, why="")

    def _finish(self, run: Running, ok: bool, why: str) -> None:
        status = "ok" if ok else f"FAILED ({why})"
        self.log(f"commit {run.unit} {run.item.label()} {status}")
        run.ok = ok
        if run.item.on_done is not None:
            run.item.on_done(ok)
        run.before = run.result = None
        for listener in self.listeners:
            listener.on_commit(self, run, ok)

    def _fail(self, run: Running, error: str) -> None:
        """A failed run commits nothing (R5); a hook puts the unit in error (R18, R24)."""
        unit, item = run.unit, run.item
        truth = self.units[unit]
        injected = "InjectedFault" in error or run.fault is not None
        if not injected and "leadership lost" not in error:
            self.errors.append(f"t={self.now} {unit} {item.label()}: {error}")
        if self.orphan_worker:
            self._commit_juju_exec(run)
        if item.kind == ACTION:
            assert item.action is not None
            item.action.status = "failed"
            item.action.message = error
        elif item.kind == HOOK:
            truth.error = f'hook failed: "{item.event.replace("_", "-")}"'
            item.attempts += 1
            backoff = min(2 ** (item.attempts - 1), 32)  # 1, 2, 4 ... ticks, capped (R18)
            delay = backoff if self.retry == "backoff" else 0
            item.not_before = self.now + delay
            self.queues[unit].push_front([item])
        self._finish(run, ok=False, why=error)

    def _diff(
        self, before: Writable, after: testing.State
    ) -> list[tuple[int, dict[str, str | None], dict[str, str | None]]]:
        """Per relation: (id, unit-bag changes, app-bag changes), key level (None deletes)."""
        out = []
        for rel_out in after.relations:
            if rel_out.id not in before.bags:
                continue
            unit_before, app_before = before.bags[rel_out.id]
            unit_changes = _changes(unit_before, rel_out.local_unit_data)
            app_changes = _changes(app_before, rel_out.local_app_data)
            if unit_changes or app_changes:
                out.append((rel_out.id, unit_changes, app_changes))
        return out

    def _commit_relations(self, run: Running, writes: list) -> None:
        unit = run.unit
        truth = self.units[unit]
        for rel_id, unit_changes, app_changes in writes:
            run.wrote = True
            rel = self.relations.get(rel_id)
            if rel is None or unit not in rel.unit_bags:
                self.log(f"drop writes of {unit} to relation {rel_id}: relation gone")
                continue
            # R13: writes of what a departing unit was given after its removal began (its own
            # departure hooks) are not published; what was in flight or already queued (an
            # action, a custom event) still runs in scope and publishes.
            if truth.departing and run.item.seq > truth.departing_seq:
                self.log(f"drop writes of departing {unit} to relation {rel_id} (R13)")
                continue
            if unit_changes and rel.unit_bags[unit].apply(unit_changes):
                for other, known in sorted(rel.known.items()):
                    if other != unit and unit in known and not self.units[other].departing:
                        self._notify(other, rel, remote=unit)
            app = truth.app
            if app_changes and rel.app_bags[app].apply(app_changes):
                for other in self._app_observers(rel, unit):
                    self._notify(other, rel, writer_app=app)

    def _app_observers(self, rel: RelationTruth, writer: str) -> list[str]:
        """Who hears of a leader's app-bag write (R2, R3)."""
        app = app_of(writer)
        if not rel.is_peer:
            remote = rel.other_app(app)
            return [u for u in self.members(remote) if u in rel.attached]
        others = [u for u in self.members(app) if u != writer and u in rel.attached]
        if self.leader_sees_own_app_writes and others:
            if rel.views.get(writer):
                others.append(writer)
            else:
                self.dropped.append(f"t={self.now} {writer} self app-changed (no peer in view)")
        elif self.leader_sees_own_app_writes:
            self.dropped.append(f"t={self.now} {writer} self app-changed (Scenario gap C1)")
        return others

    def _notify(
        self, observer: str, rel: RelationTruth, *, remote: str = "", writer_app: str = ""
    ) -> None:
        """Queue a relation_changed unless one is pending for the same writer (R7)."""
        writer = f"app:{writer_app}" if writer_app else remote
        pending = self.queues[observer].pending_changed(rel.id, writer)
        if pending is not None:
            pending.parent = self._committing  # it will read this latest write (coalesced)
            return
        self.enqueue(
            observer, "relation_changed", relation=rel.id, remote=remote or None,
            app_level=bool(writer_app), writer_app=writer_app or None, cause=f"write by {writer}",
        )  # fmt: skip

    def _secrets_changed(self, before: Writable, after: testing.State) -> bool:
        old = {id_: latest for id_, (latest, _) in before.secrets.items()}
        return any(
            old.get(s.id) != s.latest_content or _grants(s) != before.grants.get(s.id, {})
            for s in after.secrets
            if s.owner == "app"
        )

    def _commit_secrets(self, run: Running, out: testing.State) -> None:
        unit = run.unit
        assert run.before is not None
        before = run.before.secrets
        for sec in out.secrets:
            known = self.secrets.get(sec.id)
            if known is None:
                self.secrets[sec.id] = Secret(
                    sec.id, app_of(unit), [dict(sec.latest_content)], label=sec.label,
                    tracked={unit: 1},
                    grants={rid: set(apps) for rid, apps in sec.remote_grants.items()},
                )  # fmt: skip
                continue
            if sec.owner == "app":  # the grants this run added or revoked (a leader's run, R16)
                old, new = run.before.grants.get(sec.id, {}), _grants(sec)
                for rid in old.keys() | new.keys():
                    added = new.get(rid, frozenset()) - old.get(rid, frozenset())
                    revoked = old.get(rid, frozenset()) - new.get(rid, frozenset())
                    known.grants.setdefault(rid, set()).update(added)
                    known.grants[rid].difference_update(revoked)
            old_latest, old_tracked = before.get(sec.id, (None, None))
            if old_latest is not None and dict(sec.latest_content) != old_latest:
                known.revisions.append(dict(sec.latest_content))
                for other, rev in sorted(known.tracked.items()):
                    if app_of(other) != known.owner_app and rev < known.latest:
                        self.enqueue(other, "secret_changed", cause=f"secret {sec.id}")
            if old_tracked is not None and dict(sec.tracked_content) != old_tracked:
                known.tracked[unit] = known.latest
            if sec.owner == "app" and sec.label and sec.label != known.label:
                known.label = sec.label

    def _commit_juju_exec(self, run: Running) -> None:
        """Recorded juju-exec requests become custom events queued at this commit (R22)."""
        for target, event, env in run.juju_exec:
            if target not in self.units or self.units[target].removed:
                continue
            delay = self.custom_delay.get(event, 0)
            item = self.enqueue(
                target, event, kind=CUSTOM, env=env, cause=f"juju-exec by {run.unit}"
            )
            item.not_before = self.now + delay
        run.juju_exec.clear()

    def _lifecycle_after(self, run: Running) -> None:
        unit, item = run.unit, run.item
        rel = self.relations.get(item.relation) if item.relation is not None else None
        if item.event == "relation_departed" and rel is not None and item.remote:
            rel.views.get(unit, set()).discard(item.remote)
            self._collect_garbage()
        if item.event == "relation_broken" and rel is not None:
            rel.broken.add(unit)
            rel.views.pop(unit, None)
            if rel.attached <= rel.broken | {u for u in rel.attached if self.units[u].removed}:
                del self.relations[rel.id]
        truth = self.units[unit]
        departure = ("relation_departed", "relation_broken")
        last_departure_hook = (
            truth.departing
            and rel is not None
            and item.event in departure
            and not any(
                i.relation == rel.id and i.event in departure for i in self.queues[unit].items
            )
        )
        if last_departure_hook:
            assert rel is not None
            self._leave_scope(unit, rel)
        if item.event == "remove":
            truth.removed = True
            for rel in self._relations_of(unit):  # a scope it had not left yet (idempotent)
                self._leave_scope(unit, rel)
            self._resign_leadership(unit)
            self._collect_garbage()


def _changes(before: Any, after: Any) -> dict[str, str | None]:
    changes: dict[str, str | None] = {k: v for k, v in after.items() if before.get(k) != v}
    changes.update({k: None for k in before if k not in after})
    return changes


# --- juju-exec stand-in (R22, C4) -------------------------------------------------------------


@contextlib.contextmanager
def intercept_juju_exec(sim: Simulator, run: Running) -> Iterator[None]:
    """During a run, `subprocess.Popen([juju-exec, ...])` records a dispatch request instead."""
    from . import jujuexec

    with jujuexec.intercept(lambda target, event, env: run.juju_exec.append((target, event, env))):
        yield


def _grants(secret: testing.Secret) -> dict[int, frozenset[str]]:
    return {rid: frozenset(apps) for rid, apps in secret.remote_grants.items()}
