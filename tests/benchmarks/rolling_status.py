"""`rolling-status` on a simulated deployment of many units: one hook, no relation write.

    python -m tests.benchmarks.rolling_status --json [--units 50] [--queued 6] [--backend etcd]

The target of issue 19: on 50 units, with a roll in flight, the `rolling-status` action answers
in one hook execution and writes no relation data (so it wakes no other unit). This checks it on
the simulator (jujusim), where every unit runs its own hooks under Juju's rules:

1. deploy `--units` units and settle (every peer join runs, as on a real controller);
2. put a roll in flight (peer backend, or `--backend etcd`): one unit restarts with a `delay`
   so long that its critical section's hook is still running (the holder), then `--queued`
   other units ask for a restart, one after another, in an order that is not the unit
   numbers' order; every other hook runs to the end, so the leader has granted the holder
   and queued the others;
3. run `rolling-status` on a non-leader, then on the leader, and for each: count the hook
   executions from the request until the answer (1), compare every relation databag of the
   model (content and version) before and after (equal), check that nothing new was queued on
   any unit, and that the results name the holder and the queue in grant order.

The deployment is the demo charm's one lock alone (`OneLockCharm`): the charm's real rollingops
engine (src/restart/rollingops.py) with its operator controls (src/restart/controls.py, whose
handler is the charm's `rolling-status`) on the `rollingops` peer relation, and a `restart`
action that queues on it. The whole demo charm has five peer relations: at 50 units their joins
alone are 24,500 hooks (minutes of CPU here), four fifths of them on relations `rolling-status`
never reads; tests/simulation/test_rolling_status.py runs the same check on the whole demo charm
at a few units. Measured here (CPU, one process, a shared 2-core machine): 50 units on the peer
backend settle in 5,101 hooks (20-21 s) and the roll takes 688 more (3 s); on etcd (`--backend
etcd`: the stand-in provider, fake etcd, one simulated worker per unit) 7,956 hooks (45 s) and
the roll 8 more. Each `rolling-status` hook costs 4-8 ms. The last line is JSON; the exit status
is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from typing import Any

import ops

from demo import rollingops_engines
from demo.fakes import DemoFakes, demo_spec
from demo.rollingops_engines import RollingOpsEtcdFakes
from jujusim.runner import CharmSpec
from jujusim.scheduler import RoundRobin, drain
from jujusim.simulator import Simulator
from tests.benchmarks import _setup  # noqa: F401  (puts lib/ and src/ on sys.path)

APP = "coordinated-ops"
PEER = "rollingops"
HOLD_TICKS = 3600  # the holder's restart `delay` (the action's maximum): outlasts the check
CONTROL_ACTIONS = ("restart", "rolling-status", "pause", "resume")


class OneLockCharm(ops.CharmBase):
    """The demo charm's one lock alone: its rollingops engine, controls and a `restart` action."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        from restart.rollingops import RollingOpsEngine  # src/: on sys.path once _setup ran

        self.lock = RollingOpsEngine(self, lambda: [])
        framework.observe(self.on.restart_action, self._on_restart_action)

    def _on_restart_action(self, event: ops.ActionEvent) -> None:
        event.set_results({"message": self.lock.request(int(event.params.get("delay", 0)))})


@functools.cache
def one_lock_spec() -> CharmSpec:
    """The demo charm's metadata, config and control actions, with the `rollingops` peers only."""
    full = demo_spec()
    meta = {
        **full.meta,
        "peers": {PEER: full.meta["peers"][PEER]},
        "requires": {"etcd": full.meta["requires"]["etcd"]},
    }
    actions = {name: full.actions[name] for name in CONTROL_ACTIONS}
    return CharmSpec(OneLockCharm, meta, actions, full.config)


def settle_around(sim: Simulator, holder: str, margin: int) -> None:
    """Run every hook that can run until only the holder's critical section is left running.

    That hook (a restart with `delay=HOLD_TICKS`) would end HOLD_TICKS later: it is never
    committed, as on a controller while the holder's restart takes its time. Once no other unit
    has a hook to run, the clock moves `margin` more ticks for the background workers (etcd's:
    their tickets) before it stops.
    """
    quiet_since = None
    while True:
        eligible = sim.eligible()
        for unit in eligible:
            sim.start(unit)
        if eligible:
            continue
        upcoming = sim.next_time()
        if upcoming is None:
            return
        running = sim.running.get(holder)
        if running is not None and running.end - running.start < HOLD_TICKS:
            running = None  # a short hook of the holder's, not its critical section
        others = [name for name, unit in sim.units.items() if name != holder and not unit.removed]
        busy = any(sim.queues[name] or name in sim.running for name in others)
        if running is None or busy:
            quiet_since = None
        else:
            quiet_since = sim.now if quiet_since is None else quiet_since
            if upcoming >= running.end or upcoming > quiet_since + margin:
                return
        sim.advance()


def roll_in_flight(spec: CharmSpec, units: int, queued: int, backend: str) -> dict[str, Any]:
    """Deploy `units` units of `spec` and leave a roll in flight: one holder, `queued` waiting.

    `backend` "etcd" integrates the stand-in etcd provider first (fake etcd, one simulated
    worker per unit: demo/rollingops_engines.py); "peer" leaves the library on its peer backend.

    Returns the simulator, its fakes, the holder, the queued units in the order they asked, a
    bystander (a non-leader with nothing queued) and the CPU seconds of each phase.
    """
    if units < queued + 3:
        raise ValueError(f"{units} units leave no bystander for {queued} queued units")
    sim = Simulator()
    fakes = (RollingOpsEtcdFakes if backend == "etcd" else DemoFakes)(sim)
    margin = rollingops_engines.LEASE_TTL_TICKS if backend == "etcd" else 0
    with fakes.installed():
        fakes.attach(sim)
        start = time.process_time()
        members = sim.deploy(APP, spec, units=units)
        if backend == "etcd":
            rollingops_engines.etcd_setup(sim)
        drain(sim, RoundRobin())
        settled, settle_hooks = time.process_time(), sim.hooks_run
        leader = sim.leader(APP)
        others = [unit for unit in members if unit != leader]
        holder = others[len(others) // 3]
        # The others ask in an order unlike the unit numbers: the last, then the first, ...
        candidates = [unit for unit in others if unit != holder]
        order = [
            candidates[-1 - i // 2] if i % 2 == 0 else candidates[i // 2] for i in range(queued)
        ]
        sim.run_action(holder, "restart", delay=HOLD_TICKS)
        settle_around(sim, holder, margin)
        for unit in order:
            sim.run_action(unit, "restart")
            settle_around(sim, holder, margin)
        rolled = time.process_time()
    bystander = next(unit for unit in candidates if unit not in order)
    return {
        "sim": sim,
        "fakes": fakes,
        "leader": leader,
        "holder": holder,
        "order": order,
        "bystander": bystander,
        "settle_hooks": settle_hooks,
        "settle_cpu_s": settled - start,
        "roll_hooks": sim.hooks_run - settle_hooks,
        "roll_cpu_s": rolled - settled,
    }


def _databags(sim: Simulator) -> dict[tuple[int, str, str], tuple[dict[str, str], int]]:
    """Every relation databag: (relation, 'app' or 'unit', owner) -> (data, version)."""
    out: dict[tuple[int, str, str], tuple[dict[str, str], int]] = {}
    for rel in sim.relations.values():
        for app, bag in rel.app_bags.items():
            out[(rel.id, "app", app)] = (dict(bag.data), bag.version)
        for unit, bag in rel.unit_bags.items():
            out[(rel.id, "unit", unit)] = (dict(bag.data), bag.version)
    return out


def ask_rolling_status(sim: Simulator, fakes: DemoFakes, unit: str) -> dict[str, Any]:
    """Run `rolling-status` on `unit`; return its results and what it cost and changed."""
    with fakes.installed():
        bags, hooks = _databags(sim), sim.hooks_run
        queued = {name: len(queue) for name, queue in sim.queues.items()}
        cpu = time.process_time()
        record = sim.run_action(unit, "rolling-status")
        while record.status == "pending":
            eligible = sim.eligible()
            for name in eligible:
                sim.start(name)
            if not eligible and not sim.advance():
                break
        cpu = time.process_time() - cpu
    changed = sorted(
        f"{kind} bag of {owner} on relation {rel}"
        for (rel, kind, owner), value in _databags(sim).items()
        if bags.get((rel, kind, owner)) != value
    )
    return {
        "unit": unit,
        "status": record.status,
        "results": dict(record.results),
        "hooks": sim.hooks_run - hooks,
        "changed_bags": changed,
        "newly_queued": {
            name: len(queue) - queued.get(name, 0)
            for name, queue in sim.queues.items()
            if len(queue) != queued.get(name, 0)
        },
        "cpu_s": cpu,
    }


def problems(answer: dict[str, Any], holder: str, order: list[str]) -> list[str]:
    """What is wrong with one `ask_rolling_status` answer (empty when it meets the target)."""
    found = []
    results = answer["results"]
    if answer["status"] != "completed":
        found.append(f"the action did not complete: {answer['status']}")
    if answer["hooks"] != 1:
        found.append(f"{answer['hooks']} hook executions, not 1")
    if answer["changed_bags"]:
        found.append(f"relation data written: {answer['changed_bags']}")
    if answer["newly_queued"]:
        found.append(f"hooks queued by the action: {answer['newly_queued']}")
    if results.get("holders") != holder:
        found.append(f"holders {results.get('holders')!r}, not {holder!r}")
    if results.get("queue") != ",".join(order):
        found.append(f"queue {results.get('queue')!r}, not the grant order {','.join(order)!r}")
    if results.get("remaining") != str(len(order) + 1):
        found.append(f"remaining {results.get('remaining')!r}, not {len(order) + 1}")
    return [f"{answer['unit']}: {problem}" for problem in found]


def check(spec: CharmSpec, units: int, queued: int, backend: str = "peer") -> dict[str, Any]:
    """The whole check; the figures, the two answers and `problems` (empty when it passes)."""
    roll = roll_in_flight(spec, units, queued, backend)
    sim, holder, order = roll["sim"], roll["holder"], roll["order"]
    answers = [
        ask_rolling_status(sim, roll["fakes"], roll["bystander"]),
        ask_rolling_status(sim, roll["fakes"], roll["leader"]),
    ]
    backends = {answer["results"].get("backend") for answer in answers}
    wrong = [f"answered from the {name} backend, not {backend}" for name in backends - {backend}]
    return {
        "units": units,
        "backend": backend,
        "queued": queued,
        "holder": holder,
        "order": order,
        "settle_hooks": roll["settle_hooks"],
        "settle_cpu_s": round(roll["settle_cpu_s"], 2),
        "roll_hooks": roll["roll_hooks"],
        "roll_cpu_s": round(roll["roll_cpu_s"], 2),
        "answers": answers,
        "problems": wrong
        + [problem for answer in answers for problem in problems(answer, holder, order)],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--units", type=int, default=50)
    parser.add_argument("--queued", type=int, default=6)
    parser.add_argument("--backend", choices=("peer", "etcd"), default="peer")
    parser.add_argument("--json", action="store_true", help="end with the JSON line (always on)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    cpu = time.process_time()
    outcome = check(one_lock_spec(), args.units, args.queued, args.backend)
    outcome["cpu_s"] = round(time.process_time() - cpu, 2)
    for answer in outcome["answers"]:
        print(
            f"rolling-status on {answer['unit']}: {answer['hooks']} hook, "
            f"{len(answer['changed_bags'])} databags changed, "
            f"{answer['cpu_s'] * 1000:.1f} ms CPU; holders={answer['results'].get('holders')} "
            f"queue={answer['results'].get('queue')}"
        )
        answer["cpu_s"] = round(answer["cpu_s"], 4)
        del answer["results"]["summary"]
    print(
        f"{args.units} units ({args.backend}): settled in {outcome['settle_hooks']} hooks, "
        f"{outcome['settle_cpu_s']} s CPU; roll in flight in {outcome['roll_hooks']} hooks, "
        f"{outcome['roll_cpu_s']} s CPU; "
        + ("OK" if not outcome["problems"] else f"FAILED: {outcome['problems']}")
    )
    print(json.dumps(outcome, sort_keys=True, default=str))
    return 1 if outcome["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
