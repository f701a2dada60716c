"""The simulator's state and the membership bookkeeping every other part builds on.

`SimulatorCore` holds Juju's truth (applications, units, relations, secrets, queues, the clock's
`now`) and the helpers that change who is in which relation: new units and relations, joins,
leaving a relation's scope, leadership handover, forgetting removed units. The other concerns are
layered on it, each in its own module: views.py (what a unit sees), commit.py (applying a run's
output and routing notifications), runs.py (starting a run), clock.py (the scheduling primitives
and timers), operations.py (what an operator does), simulator.py (the class callers use).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from ops import testing

from . import runner
from .protocols import Actor, Listener
from .queues import HOOK, ActionRecord, Item, UnitQueue
from .records import FailSpec, Running, Timer
from .runner import CharmSpec
from .truth import AppTruth, Bag, RelationTruth, Secret, UnitTruth, app_of, unit_id

if TYPE_CHECKING:
    from .invariants import Recorder
    from .simulator import Simulator

JUJU_KEYS = ("egress-subnets", "ingress-address", "private-address")  # rule: Juju's own keys
RETRY_POLICIES = ("none", "backoff", "immediate")
# "4": juju/juju#23326, a removed unit stays in its peers' relation (rule: peer removal on Juju 4)
JUJU_VERSIONS = ("3.6", "4")

F = TypeVar("F", bound=Callable[..., Any])


def operator(method: F) -> F:
    """Record a public operation in `sim.steps` (replayable) unless called from inside another."""

    def wrapper(self: SimulatorCore, *args: Any, **kwargs: Any) -> Any:
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
    return cast(F, wrapper)


class SimulatorCore:
    """Juju's truth for N units of one or more applications, on logical time."""

    def __init__(
        self,
        *,
        seed: int = 0,
        leader_sees_own_app_writes: bool = True,
        retry: str = "none",
        duration: Callable[[str, Item], int] | None = None,
        election: str = "lowest",
        substrate: str = "machine",
        juju: str = "3.6",
    ):
        if retry not in RETRY_POLICIES:
            raise ValueError(f"retry must be one of {RETRY_POLICIES}")
        if juju not in JUJU_VERSIONS:
            raise ValueError(f"juju must be one of {JUJU_VERSIONS}")
        self.seed = seed
        self.rng = random.Random(seed)  # noqa: S311 - schedules, not secrets
        self.leader_sees_own_app_writes = leader_sees_own_app_writes
        self.retry = retry
        self.duration = duration or (lambda unit, item: 1)
        self.election = election
        self.substrate = substrate
        self.juju = juju  # which Juju's removal behaviour (rule: peer removal on Juju 4)
        self.now: int = 0
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
        self._depth: int = 0
        self.dropped: list[
            str
            # notifications Scenario cannot express (rule: app-level change needs a remote unit)
        ] = []
        self.errors: list[str] = []  # uncaught charm errors not caused by an injected fault
        self.custom_delay: dict[str, int] = {}  # custom event name -> ticks before it may run
        # fault: a failed hook's juju-exec request still runs (rule: custom events through
        # juju-exec)
        self.orphan_worker = False
        self.current: Running | None = None
        self.recorder: Recorder | None = None  # the invariants checker, when one is attached
        self.workloads: dict[str, object] = {}  # per-unit fake workload state (owned by the fakes)
        self.extras: dict[str, object] = {}  # engine-specific state; forks copy it
        self.actors: list[Actor] = []  # background workers (protocols.Actor)
        self.listeners: list[Listener] = []  # told of every run's start and commit
        self.runs: dict[int, Running] = {}  # every run by seq (inputs dropped after commit)
        self._committing: int = 0  # seq of the run being committed: the parent of what it queues
        self._seq: int = 0
        self._rel_ids: int = 0
        self._contexts: dict[tuple[int, str, int], testing.Context] = {}
        self.hooks_run: int = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    @property
    def last_seq(self) -> int:
        """The sequence number given last (items, runs, timers share it): a mark for `since=`."""
        return self._seq

    def _whole(self) -> Simulator:
        """This object as the `Simulator` that listeners and actors are typed against."""
        return cast("Simulator", self)

    def log(self, text: str) -> None:
        """Add a line to the trace, stamped with the logical time."""
        self.trace.append(f"t={self.now} {text}")

    def enqueue(self, unit: str, event: str, kind: str = HOOK, **fields: Any) -> Item:
        """Queue an item on `unit`; its parent is the run being committed (0: an operator)."""
        fields.setdefault("parent", self._committing)
        item = Item(seq=self._next_seq(), kind=kind, event=event, **fields)
        item.not_before = max(item.not_before, self.now)
        return self.queues[unit].append(item)

    def context(self, spec: CharmSpec, unit: str) -> testing.Context:
        """The Scenario Context of `unit` running `spec` (one per unit and charm, cached)."""
        key = (id(spec), app_of(unit), unit_id(unit))
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = self._contexts[key] = runner.make_context(spec, app_of(unit), unit_id(unit))
        return ctx

    def members(self, app: str) -> list[str]:
        """Live units of `app` (not departing), in id order."""
        return [u for u in self.apps[app].units if not self.units[u].departing]

    def leader(self, app: str) -> str | None:
        """The leader unit of `app` (None while it has no unit to elect)."""
        return self.apps[app].leader

    def relation(self, app: str, endpoint: str) -> RelationTruth:
        """The (first) relation of `app` on `endpoint`."""
        for rel in self.relations.values():
            if rel.endpoints.get(app) == endpoint:
                return rel
        raise KeyError(f"{app} has no relation on {endpoint}")

    # --- membership ------------------------------------------------------------------------

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

    def _leave_scope(self, unit: str, rel: RelationTruth) -> None:
        """`unit` leaves `rel`'s scope: every remaining member that knew it gets departed.

        Rules: unit removal; peer removal on Juju 4 (there a peer relation is never left: the
        others keep listing the unit and get no departed).
        """
        if self.juju == "4" and rel.is_peer:
            return
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

    def _collect_garbage(self) -> None:
        """Forget removed units' bags once no unit still sees them (their departed hooks ran)."""
        for rel in list(self.relations.values()):
            for unit in list(rel.unit_bags):
                truth = self.units[unit]
                if truth.removed and not any(unit in v for v in rel.views.values()):
                    del rel.unit_bags[unit]
                    rel.views.pop(unit, None)
                    rel.known.pop(unit, None)
                    rel.attached.discard(unit)

    def _resign_leadership(self, unit: str) -> None:
        """A removed leader's lease ends: Juju elects another unit (rule: leadership)."""
        app = self.apps[app_of(unit)]
        if app.leader == unit:
            app.leader = None
            self._elect(app.name)

    def _elect(self, app: str) -> None:
        members = self.members(app)
        if not members:
            return
        chosen = members[0] if self.election == "lowest" else self.rng.choice(members)
        self._appoint_leader(chosen)

    def _appoint_leader(self, unit: str) -> None:
        """Leadership moves to `unit`; only it gets leader-elected (rule: leadership)."""
        app = self.apps[app_of(unit)]
        if app.leader == unit:
            return
        app.leader = unit
        self.enqueue(unit, "leader_elected", cause="set_leader")
        self.log(f"set_leader {unit}")
