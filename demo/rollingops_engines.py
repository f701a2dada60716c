"""The `rollingops-peer` and `rollingops-etcd` engines of the simulator (see engines.py).

Both drive the demo charm's `restart engine=rollingops` (charmlibs.rollingops):

- `rollingops-peer`: no etcd relation, so the library runs its peer-relation backend;
- `rollingops-etcd`: the application is integrated with a stand-in etcd provider
  (etcd_provider.py), so the library switches to its etcd backend; etcd itself is the
  in-memory `FakeEtcd` and each unit's worker process a `WorkerActor` (etcd_world.py).
  Faults on top of the simulator's generic ones: an etcd outage [t1, t2), a worker killed (its
  lease expires `LEASE_TTL_TICKS` later), the etcd relation removed mid-roll (and, half the
  time, integrated again a little later: a new relation id, so our leader must grant its mTLS
  secret again or the stand-in provider fails its hook), and the etcd cluster replaced mid-roll
  (relation removed, a new cluster whose revisions restart from 1, integrated again a few ticks
  later). Juju's periodic update-status (rule: periodic and config hooks), the library's trigger
  for restarting a dead worker and noticing a failed one, is modelled by one update-status tick
  after each such fault has played out.

Invariants: one lock domain across both backends. A unit "holds the grant"
(I2, I3) when the peer grant names it, or when it runs on the etcd backend and the etcd lock key
names it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from typing import Any

from charmlibs.rollingops._controls import PAUSED_BY_LEADER

from jujusim.protocols import Actor
from jujusim.runner import CharmSpec
from jujusim.simulator import Simulator
from jujusim.truth import Bags

from .etcd_provider import SPEC_DIR as PROVIDER_DIR
from .etcd_provider import EtcdProviderCharm
from .etcd_world import EtcdWorld, routing
from .fakes import DemoFakes

APP = "coordinated-ops"
PEER = "rollingops"
PROVIDER_APP = "etcd"
LEASE_TTL_TICKS = 15  # a 60 s lease against hooks of ~1-4 ticks: 1 tick is ~4 s
INTEGRATE_TRIES = 30  # ticks the operator keeps trying `juju integrate` while the old one dies
RETURN_TRIES = 60  # ticks the second-wave restart waits for the return to etcd
_ACTIVE: list[EtcdWorld] = []  # the world of the simulator being run (holds_grant reads it)


def _json(raw: str | None) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def peer_holds_grant(bags: Bags, unit: str) -> bool:
    """The peer app databag grants the lock to `unit` (rollingops-grant or -more-grants)."""
    app = bags.app(PEER)
    grants = [_json(app.get("rollingops-grant"))]
    more = _json(app.get("rollingops-more-grants"))
    grants += more if isinstance(more, list) else []
    return any(isinstance(grant, dict) and grant.get("unit") == unit for grant in grants)


def etcd_holds_grant(bags: Bags, unit: str) -> bool:
    """Peer grant, or: `unit` runs on the etcd backend and a slot of the etcd lock names it now."""
    if peer_holds_grant(bags, unit):
        return True
    if bags.unit(PEER, unit).get("rollingops-backend") != "etcd" or not _ACTIVE:
        return False
    return unit in _ACTIVE[-1].holders()


def world_of(sim: Simulator) -> EtcdWorld:
    """The simulator's EtcdWorld (a background actor), created on first need."""
    for actor in sim.actors:
        if isinstance(actor, EtcdWorld):
            world = actor
            break
    else:
        world = EtcdWorld(sim, LEASE_TTL_TICKS)
        sim.actors.append(world)
    world.sim = sim
    if not _ACTIVE or _ACTIVE[-1] is not world:
        _ACTIVE[:] = [world]
    return world


def etcd_actors(sim: Simulator) -> list[Actor]:
    """engines.Engine.actors: the etcd world, unless the simulator already has one."""
    had = any(isinstance(actor, EtcdWorld) for actor in sim.actors)
    world = world_of(sim)
    if had:
        return []
    sim.actors.remove(world)  # the soak appends what this returns
    return [world]


def etcd_setup(sim: Simulator) -> None:
    """Deploy the etcd provider and integrate it (before the deployment settles)."""
    provider = CharmSpec.from_dir(EtcdProviderCharm, PROVIDER_DIR)
    sim.deploy(PROVIDER_APP, provider, units=1)
    sim.integrate(APP, "etcd", PROVIDER_APP, "etcd-client")


def etcd_relation(sim: Simulator) -> int | None:
    """The live etcd relation: the newest one the operator has not removed.

    `remove_relation` empties `known`; a relation every unit still in it has broken is gone too,
    even when the simulator still keeps it (it collects a relation when its last unit breaks it,
    and misses a unit removed after that).
    """
    for rel in sorted(sim.relations.values(), key=lambda r: -r.id):
        if rel.endpoints.get(APP) != "etcd" or not rel.known:
            continue
        staying = {unit for unit in rel.attached if not sim.units[unit].removed}
        if not (rel.broken and staying <= rel.broken):
            return rel.id
    return None


def etcd_faults(sim: Simulator, units: list[str]) -> list[str]:
    """Arm etcd faults on `sim` (its RNG decides): outage, worker death, relation removal."""
    rng = sim.rng
    world = world_of(sim)
    horizon = 6 * len(units) + 4
    armed: list[str] = []
    settle_at: list[int] = []
    if rng.random() < 0.5:
        t1 = sim.now + rng.randint(0, horizon)
        t2 = t1 + rng.choice(
            [1, 2, 4, LEASE_TTL_TICKS // 2, LEASE_TTL_TICKS + 3, 3 * LEASE_TTL_TICKS]
        )
        world.outage(t1, t2)
        armed.append(f"etcd outage [{t1}, {t2})")
        settle_at.append(t2 + LEASE_TTL_TICKS + 1)
    if rng.random() < 0.5:
        at, unit = sim.now + rng.randint(0, horizon), rng.choice(units)
        sim.add_timer(at, f"kill worker {unit}", lambda u=unit: world_of(sim).kill_worker(u))
        armed.append(f"kill worker {unit} at {at}")
        settle_at.append(at + LEASE_TTL_TICKS + 1)
    if rng.random() < 0.2:
        at = sim.now + rng.randint(0, horizon)
        sim.add_timer(at, "remove etcd relation", lambda: _remove_etcd_relation(sim))
        armed.append(f"remove etcd relation at {at}")
        settle_at.append(at + 2 * len(units) + 2)
        if rng.random() < 0.5:
            again = at + rng.randint(1, horizon)
            sim.add_timer(again, "integrate etcd again", lambda: etcd_integrate(sim))
            armed.append(f"integrate etcd again at {again}")
            settle_at.append(again + 2 * len(units) + 2)
    if rng.random() < 0.2:
        at = sim.now + rng.randint(0, horizon)
        back = at + rng.randint(1, 2 * len(units) + 2)
        sim.add_timer(at, "replace etcd cluster", lambda: replace_etcd_cluster(sim))
        sim.add_timer(back, "integrate the new etcd", lambda: etcd_integrate(sim))
        unit, old = rng.choice(units), etcd_relation(sim)
        sim.add_timer(
            back + 1,
            f"restart {unit} on the new etcd",
            lambda: request_on_etcd(sim, unit, old),
        )
        armed.append(f"etcd cluster replaced at {at}, integrated at {back}, {unit} again")
        settle_at.append(back + 2 * len(units) + 2)
    # the periodic update-status Juju runs anyway (rule: periodic and config hooks)
    for at in settle_at:
        sim.add_timer(at, "update_status", lambda: sim.update_status(APP))
        sim.add_timer(at + 4 * len(units), "update_status", lambda: sim.update_status(APP))
    return armed


def _remove_etcd_relation(sim: Simulator) -> None:
    rel = etcd_relation(sim)
    if rel is not None:
        sim.remove_relation(rel)


def replace_etcd_cluster(sim: Simulator) -> None:
    """The operator removes the etcd relation; a new etcd cluster takes the old one's place."""
    _remove_etcd_relation(sim)
    world_of(sim).replace_cluster()


def request_on_etcd(sim: Simulator, unit: str, old: int | None, tries: int = RETURN_TRIES) -> None:
    """Restart `unit` once more when the application runs on a new etcd relation (not `old`).

    Without it the new cluster would serve nothing: the application returns to etcd only once
    every queue is drained. Waits up to `tries` ticks for the return; gives up quietly then.
    """
    truth = sim.units[unit]
    if truth.departing or truth.removed:
        return
    mode = Bags.from_truth(sim.relations, APP).app(PEER).get("rollingops-mode")
    if etcd_relation(sim) not in (None, old) and mode == "etcd":
        sim.request(unit, "restart", "restart", engine="rollingops")
    elif tries > 1:
        sim.add_timer(
            sim.now + 1,
            f"restart {unit} on the new etcd",
            lambda: request_on_etcd(sim, unit, old, tries - 1),
        )


def etcd_integrate(sim: Simulator, tries: int = INTEGRATE_TRIES) -> None:
    """`juju integrate` with the (new) etcd cluster once the old relation is gone.

    Juju refuses a second relation between the same endpoints while the removed one is still
    dying (some unit has not run its relation-broken yet, e.g. a unit in error): the operator
    tries again a tick later, `tries` times at most.
    """
    if etcd_relation(sim) is None and not _etcd_dying(sim):
        sim.integrate(APP, "etcd", PROVIDER_APP, "etcd-client")
    elif tries > 1:
        sim.add_timer(
            sim.now + 1, "integrate the new etcd", lambda: etcd_integrate(sim, tries - 1)
        )


def _etcd_dying(sim: Simulator) -> bool:
    """A removed etcd relation not yet broken by a unit still in it (Juju refuses a new one)."""
    for rel in sim.relations.values():
        if rel.endpoints.get(APP) == "etcd" and not rel.known:
            staying = {unit for unit in rel.attached if not sim.units[unit].removed}
            if not staying <= rel.broken:
                return True
    return False


class RollingOpsEtcdFakes(DemoFakes):
    """DemoFakes plus the etcd world's routing (client, worker start, liveness, stop).

    A fork copies each unit's local files (base_dir/etcd/config.json, the PEMs...) along with its
    truth, since they are unit state the library reads.
    """

    def attach(self, sim: Simulator) -> DemoFakes:
        super().attach(sim)
        root = self._tmp / f"seed-{sim.seed}"
        forked = bool(sim.steps) and sim.steps[0][0] == "fork"
        if not forked:  # a new deployment: it starts with no local files
            shutil.rmtree(root, ignore_errors=True)
            self._base_root = root
        elif getattr(self, "_base_root", None) not in (None, root):
            shutil.rmtree(root, ignore_errors=True)
            if self._base_root.is_dir():
                shutil.copytree(self._base_root, root, symlinks=True)
        return self

    @contextlib.contextmanager
    def installed(self) -> Iterator[DemoFakes]:
        """DemoFakes' patches plus the routing of etcd calls to the served simulator's world."""
        with super().installed(), routing(lambda: world_of(self.sim)):
            yield self


def paused(sim: Simulator) -> str | None:
    """Why the rolling operation is paused (None: it is not).

    From the committed app databag, or a halt the etcd workers put in etcd.
    """
    reason = Bags.from_truth(sim.relations, APP).app(PEER).get("rollingops-paused")
    return reason or etcd_halt(sim)


def etcd_halt(sim: Simulator) -> str | None:
    """The halt reason a worker put in the current etcd cluster for our application, if any."""
    world = next((actor for actor in sim.actors if isinstance(actor, EtcdWorld)), None)
    if world is None:
        return None
    for key, kv in world.fake.keys.items():
        halted = key.split("/")[-1].endswith(f".{APP}") and kv.value != PAUSED_BY_LEADER.encode()
        if "/paused/" in key and halted:
            return kv.value.decode()
    return None


def resume_if_halted(sim: Simulator) -> None:
    """engines.Engine.unstick: the operator resumes a paused (or halted) roll on the leader."""
    if paused(sim):
        sim.run_action(f"{APP}/leader", "resume")


def control_faults(sim: Simulator, units: list[str]) -> list[str]:
    """The operator's controls among the faults: a pause on the leader, a resume later.

    Leader changes and failing operations (which halt the roll) are among the generic faults;
    a roll still paused at the end is resumed by `resume_if_halted`.
    """
    rng = sim.rng
    horizon = 6 * len(units) + 4
    if rng.random() >= 0.5:
        return []
    t1 = sim.now + rng.randint(0, horizon)
    t2 = t1 + rng.randint(1, horizon)
    sim.add_timer(t1, "pause", lambda: sim.run_action(f"{APP}/leader", "pause"))
    sim.add_timer(t2, "resume", lambda: sim.run_action(f"{APP}/leader", "resume"))
    return [f"pause at {t1}, resume at {t2}"]


def etcd_control_faults(sim: Simulator, units: list[str]) -> list[str]:
    """Etcd's faults plus the operator's controls."""
    return etcd_faults(sim, units) + control_faults(sim, units)
