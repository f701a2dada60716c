"""`tox -e demo`: watch the real charm run a rolling restart on five simulated units.

No Juju controller needed. The multi-unit simulator (jujusim) plays the Juju
controller and unit agents: it keeps the relation data, leadership and event queues and delivers
hooks the way Juju does (docs/juju-rules.md). The charm code is the real charm: src/charm.py
and the libraries in lib/, run through ops.testing, one copy per unit. Only the demo service is
simulated (an in-memory service per unit; see harness.py).

    python -m demo        # 5 units, rolling restart, engine rollingops
    python -m demo --units 3 --engine v0 --fault holder-removed
    python -m demo --operation upgrade --fault hook-failure --seed 7
    python -m demo --compare --fault holder-removed   # every engine, same schedule and fault

It prints, as it goes, a `juju status`-like table each time a unit enters its critical section
(and when a fault strikes), then a timeline (one row per unit), the hook count and the checks
(never two units restarting at once; every request served). It writes the timeline as an SVG
picture and prints its path. Exit status 0 when every check passed.

Time is logical: one tick is one hook; a restart takes a few ticks more (fakes.RESTART_TICKS).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import math
import pathlib
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import Any, TextIO

from jujusim.accounting import account
from jujusim.scheduler import RoundRobin, SeededRandom
from jujusim.simulator import ActionRejected
from jujusim.truth import Bags, app_of

from . import rollingops_engines
from .engines import with_max_parallel
from .fakes import RESTART_TICKS
from .harness import APP, UPGRADE_TARGET, Crash, DemoHarness, demo_engines, lock_holder
from .svg import Interval, Lane, Mark, Picture, render, token_label

ENGINES = ("rollingops", "rollingops-peer", "v0", "coordinator")
ENGINE_TEXT = {
    "rollingops": "charmlibs.rollingops, etcd backend",
    "rollingops-peer": "charmlibs.rollingops, peer-relation backend (no etcd relation)",
    "v0": "charms.rolling_ops.v0.rollingops, peer-relation lock",
    "coordinator": "charms.coordinated_ops.v0.coordinator, Serial (first come first served)",
}
ENGINE_HOW = {
    "rollingops": "each unit's background worker takes a lease-backed lock key in etcd and "
    "dispatches the unit's rollingops-lock-granted hook: 2 hooks per restart, no peer-relation "
    "traffic; any etcd failure moves the application to the peer backend",
    "rollingops-peer": "the leader grants in the peer application bag, first come first "
    "served, one fencing token per grant; every grant and release wakes every unit",
    "v0": "the Charmhub library's API and relation data: the leader writes `granted` for one "
    "unit at a time in the peer application bag",
    "coordinator": "units request named locks in their peer unit bag, the leader grants in "
    "request order; a unit releases at the end of the hook in which it saw its grant",
}
ENGINE_TITLE = {
    "rollingops": "rollingops on etcd (in-memory fake etcd)",
    "rollingops-peer": "rollingops on its peer backend",
}
OPERATIONS = ("restart", "upgrade")
FAULTS = (
    "none",
    "leader-removed",
    "holder-removed",
    "hook-failure",
    "etcd-outage",
    "etcd-replaced",
)
ETCD_FAULTS = ("etcd-outage", "etcd-replaced")
COMPARED_FAULTS = ("none", "leader-removed", "holder-removed", "hook-failure")  # every engine
OUTAGE_TICKS = 20  # longer than the rollingops lease (LEASE_TTL_TICKS) on logical time
REPLACE_TICKS = 6  # from removing the etcd relation to integrating the new cluster
REPLACE_WAIT_TICKS = 60  # how long the demo waits for the application to return to etcd
RESOLVE_AFTER = 4  # ticks the "operator" takes to notice a unit in error and run `juju resolved`
MAX_STEPS = 50_000
DEFAULT_SVG = pathlib.Path(__file__).resolve().parents[1] / "build" / "demo-timeline.svg"


@dataclasses.dataclass
class Options:
    units: int = 5
    engine: str = "rollingops"
    operation: str = "restart"
    fault: str = "none"
    seed: int | None = None
    svg: pathlib.Path = DEFAULT_SVG
    compare: bool = False
    max_parallel: int = 1


def faults_for(engine: str, operation: str = "restart") -> tuple[str, ...]:
    """The faults that apply to an engine: the etcd ones need etcd (rollingops, restart)."""
    etcd = operation == "restart" and engine == "rollingops"
    return tuple(f for f in FAULTS if f != "none" and (etcd or f not in ETCD_FAULTS))


def _help_epilog() -> str:
    lines = ["engines (--engine; which library coordinates the restart):"]
    for engine in ENGINES:
        lines.append(f"  {engine:<16} {ENGINE_TEXT[engine]}:")
        lines += textwrap.wrap(ENGINE_HOW[engine], 79, initial_indent=" " * 19,
                               subsequent_indent=" " * 19)  # fmt: skip
    lines += ["", "faults (--fault; one per run):"]
    for fault in FAULTS[1:]:
        applies = "rollingops only (needs etcd)" if fault in ETCD_FAULTS else "every engine"
        lines.append(f"  {fault:<16} {FAULT_TEXT[fault]} [{applies}]")
    lines += [
        "",
        "--compare runs the same schedule and fault on every engine and prints, per engine,",
        "the hooks, makespan and lock handoffs, and what it did about the fault; without",
        f"--fault it compares under {', '.join(COMPARED_FAULTS)}.",
        "--operation upgrade uses the upgrade library's own coordination (--engine ignored).",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="tox -e demo --",
        description="A simulated Juju deployment of the real coordinated-ops charm.",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--units", type=int, default=5, help="number of units (default 5)")
    parser.add_argument(
        "--engine", choices=ENGINES, default="rollingops",
        help="which library coordinates the restart (see below; default rollingops)",
    )  # fmt: skip
    parser.add_argument("--operation", choices=OPERATIONS, default="restart")
    parser.add_argument(
        "--fault", choices=FAULTS, default="none",
        help="inject one fault (see below for which engines it applies to)",
    )  # fmt: skip
    parser.add_argument(
        "--compare", action="store_true",
        help="run every engine on the same schedule and fault, side by side",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=None,
        help="interleave the units' hooks at random with this seed (default: round-robin)",
    )  # fmt: skip
    parser.add_argument(
        "--max-parallel", type=int, default=1, metavar="K",
        help="rollingops: up to K units restart at once (config max-parallel; default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--svg",
        type=pathlib.Path,
        default=DEFAULT_SVG,
        help=f"picture path (default {DEFAULT_SVG})",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.units <= 26:
        parser.error("--units must be between 1 and 26")
    if args.fault in ("leader-removed", "holder-removed", "hook-failure") and args.units < 2:
        parser.error(f"--fault {args.fault} needs at least 2 units")
    if args.compare and args.units < 2:
        parser.error("--compare needs at least 2 units")
    if args.compare and args.operation != "restart":
        parser.error("--compare compares the restart engines: use it with --operation restart")
    if not 1 <= args.max_parallel <= args.units:
        parser.error("--max-parallel must be between 1 and --units")
    if args.max_parallel > 1 and (args.operation, args.engine[:10]) != ("restart", "rollingops"):
        parser.error("--max-parallel needs a rollingops engine and --operation restart")
    if args.max_parallel > 1 and args.compare:
        parser.error("--compare runs every engine at --max-parallel 1")
    return Options(
        args.units,
        args.engine,
        args.operation,
        args.fault,
        args.seed,
        args.svg,
        args.compare,
        args.max_parallel,
    )


class Glyphs:
    """Timeline characters: Unicode when the terminal takes it, ASCII otherwise."""

    def __init__(self, stream: TextIO):
        encoding = (getattr(stream, "encoding", None) or "ascii").lower()
        fancy = encoding.replace("-", "") in ("utf8", "utf16", "utf32")
        self.busy, self.wait, self.fault, self.gone, self.note, self.outage, self.idle = (
            ("█", "·", "✗", "⊘", "→", "░", " ") if fancy else ("#", ".", "X", "/", "->", "~", " ")
        )


class Demo:
    """One demo run: deploy, request the operation on every unit, watch, report."""

    def __init__(self, options: Options, out: TextIO = sys.stdout):
        self.o = options
        self.out = out
        self.glyphs = Glyphs(out)
        self.marks: list[Mark] = []
        self.requested_at: dict[str, int] = {}
        self.leader_history: list[tuple[int, str | None]] = []
        self.fault_armed = False
        self.removed_at: dict[str, int] = {}
        self.outages: list[tuple[int, int]] = []
        self.backends: dict[str, str | None] = {}
        self.errors_seen: set[str] = set()
        self.halted: str | None = None  # why the rollingops roll paused itself, once seen
        self.crashes_seen: list[Crash] = []
        self.crashes_told: list[Crash] = []
        self._intervals_seen = 0
        self.fault_at: int | None = None  # when the fault struck
        self.stats: dict[str, Any] = {}  # the accounting of the run (report)
        self.problems: list[str] = []  # the failed checks (report)
        self.sections: list[Any] = []  # the critical sections, by start (report)

    def units(self) -> list[str]:
        """Every unit the demo's application ever had, in id order (removed ones included)."""
        return [u for u in self.sim.units if app_of(u) == APP]

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # --- the run ------------------------------------------------------------------------------

    def run(self) -> int:
        o = self.o
        if o.fault in ETCD_FAULTS and (o.operation, o.engine) != ("restart", "rollingops"):
            self.say(
                f"--fault {o.fault} needs etcd: use it with the default engine (rollingops, "
                "on its etcd backend) and --operation restart."
            )
            return 2
        started = time.monotonic()
        self.header()
        engine = demo_engines()["upgrade" if o.operation == "upgrade" else o.engine]
        if o.max_parallel > 1:
            engine = with_max_parallel(engine, o.max_parallel)
        with DemoHarness(engine, seed=o.seed or 0) as harness:
            self.h = harness
            self.sim = harness.sim
            self.scheduler = SeededRandom() if o.seed is not None else RoundRobin()
            deploy_hooks = self.deploy()
            since = max(self.sim.runs, default=0)
            t_request = self.sim.now
            if not self.request():
                return 1
            self.watch()
            code = self.report(since, t_request, deploy_hooks)
        self.say(f"Wall time: {time.monotonic() - started:.1f} s")
        return code

    def header(self) -> None:
        o = self.o
        what = (
            f"a restart requested on every unit, engine {o.engine} ({ENGINE_TEXT[o.engine]})"
            if o.operation == "restart"
            else f"a workload upgrade to {UPGRADE_TARGET} (charms.data_platform_libs.v0.upgrade)"
        )
        self.say("coordinated-ops demo: the real charm on a simulated Juju controller")
        self.say("  The controller, unit agents and hook delivery are simulated (jujusim);")
        self.say("  the charm code is the real charm (src/, lib/), one copy per unit.")
        self.say(f"  Units: {o.units}. Operation: {what}.")
        if o.operation == "restart":
            for line in textwrap.wrap(f"How: {ENGINE_HOW[o.engine]}.", 94):
                self.say(f"  {line}")
            faults = ", ".join(faults_for(o.engine))
            self.say(f"  Faults that apply to this engine (--fault): {faults}.")
        if o.operation == "restart" and o.engine == "rollingops":
            self.say("  etcd: an in-memory fake etcd on logical time (demo/fake_etcd.py)")
            self.say(
                "  behind a stand-in etcd provider charm, not a real etcd server; each unit's"
            )
            self.say("  rollingops worker process is simulated too (etcd_world.py).")
        if o.operation == "restart" and o.engine == "rollingops-peer":
            self.say("  rollingops runs on its peer backend: no etcd relation in this deployment.")
        if o.operation == "upgrade" and o.engine != "rollingops":
            self.say(f"  (--engine {o.engine} is ignored: upgrades have their own coordination)")
        schedule = f"seeded random, seed {o.seed}" if o.seed is not None else "round-robin"
        fault = "none" if o.fault == "none" else FAULT_TEXT[o.fault]
        self.say(f"  Schedule: {schedule}. Fault: {fault}.")
        self.say(
            f"  Time is logical: 1 tick = 1 hook; a restart takes {RESTART_TICKS} ticks more."
        )
        self.say("  Status tables show the statuses Juju has committed (a hook's own status shows")
        self.say("  once the hook ends); Lock is who holds the grant and who is inside it now.")
        self.say()

    def deploy(self) -> int:
        sim = self.sim
        self.say(f"$ juju deploy coordinated-ops -n {self.o.units}")
        self.h.deploy(self.o.units)
        for app in sim.apps:
            if app != APP:
                self.say(f"$ juju deploy {app}; juju integrate {APP} {app}   # stand-in charm")
        self.drive(observe=False)
        hooks = sim.hooks_run
        self.leader_history.append((sim.now, sim.leader(APP)))
        self.say(f"  deployed in {sim.now} ticks, {hooks} hooks")
        self.say()
        self.table("after deploy")
        return hooks

    def request(self) -> bool:
        sim, o = self.sim, self.o
        units = sim.members(APP)
        try:
            if o.operation == "restart":
                action = o.engine.split("-")[0]  # the action's engine (peer vs etcd: topology)
                self.say(f"$ juju run {' '.join(units)} restart engine={action}")
            else:
                leader = sim.leader(APP)
                self.say(f"$ juju run {APP}/leader upgrade version={UPGRADE_TARGET}   # {leader}")
            for unit in units:
                self.h.request(unit)
        except ActionRejected as error:
            self.say(f"  Juju rejected the action: {error}")
            return False
        for unit in units:
            self.requested_at[unit] = sim.now
            self.marks.append(Mark(sim.now, unit, "request", o.operation + " requested"))
        if o.fault == "hook-failure":
            victim = units[1]
            self.h.fail_next_critical_section(victim)
            self.say(f"  (fault armed: {victim}'s hook will crash inside its critical section)")
        self.say()
        return True

    # --- driving and watching ------------------------------------------------------------------

    def drive(self, observe: bool = True) -> None:
        steps = 0
        while self.sim.busy() and steps < MAX_STEPS:
            self.scheduler.step(self.sim)
            steps += 1
            if observe:
                self.observe()
        if steps >= MAX_STEPS:
            self.say(f"  !! no quiescence after {MAX_STEPS} steps (livelock?)")

    def watch(self) -> None:
        self.drive()
        self.say(f"t={self.sim.now}  quiescent: nothing queued, running or scheduled")
        self.table("final")

    def observe(self) -> None:
        """After each scheduler step: note faults, leadership, errors; print on news."""
        sim, h, g = self.sim, self.h, self.glyphs
        news: list[str] = []
        for crash in h.crashed[len(self.crashes_seen) :]:
            self.crashes_seen.append(crash)
            self.fault_at = crash.t if self.fault_at is None else self.fault_at
            self.marks.append(
                Mark(
                    crash.t, crash.unit, "crash", "crashed inside its critical section (injected)"
                )
            )
            news.append(f"{g.fault} fault: {crash.unit} crashed inside its critical section")
        for crash in self.crashes_seen:
            if crash.run.ok and crash not in self.crashes_told:
                self.crashes_told.append(crash)
                label = "the library caught the crash: lock released, operation queued again"
                self.marks.append(Mark(sim.now, crash.unit, "note", label))
                news.append(
                    f"{g.note} the library caught the crash: {crash.unit}'s hook ended cleanly, "
                    "the lock was released and the operation goes back in the queue"
                )
        leader = sim.leader(APP)
        if leader != self.leader_history[-1][1]:
            self.leader_history.append((sim.now, leader))
            self.marks.append(Mark(sim.now, leader or "", "leader", "elected leader"))
            news.append(f"{g.note} {leader} is the new leader")
        for unit, truth in sim.units.items():
            if (truth.departing or truth.removed) and unit not in self.removed_at:
                self.removed_at[unit] = sim.now
                self.marks.append(Mark(sim.now, unit, "removed", "unit removed"))
            if truth.error and unit not in self.errors_seen:
                self.errors_seen.add(unit)
                self.marks.append(
                    Mark(sim.now, unit, "error", f"{truth.error}; Juju discarded its writes")
                )
                news.append(
                    f"{g.fault} {unit} is in error ({truth.error}): Juju discarded its writes"
                )
                at = sim.now + RESOLVE_AFTER
                sim.add_timer(at, f"juju resolved {unit}", lambda u=unit: self.resolve(u))
        news += self.backend_changes()
        news += self.halt_news()
        intervals = h.recorder.intervals
        entered = intervals[self._intervals_seen :]
        self._intervals_seen = len(intervals)
        self.arm_timed_faults(len(intervals))
        for line in news:
            self.say(f"t={sim.now}  {line}")
        if entered:
            who = ", ".join(i.unit for i in entered)
            verb = "restarting" if self.o.operation == "restart" else "upgrading"
            self.say(f"t={sim.now}  {who} {verb} (inside the critical section)")
        if news or entered:
            self.table()

    def backend_changes(self) -> list[str]:
        """rollingops: which backend (etcd or peer) each unit says it processes on, if changed."""
        if self.h.engine.name not in ("rollingops-etcd", "rollingops-peer"):
            return []
        bags = Bags.from_truth(self.sim.relations, APP)
        news = []
        for unit in self.sim.members(APP):
            backend = bags.unit("rollingops", unit).get("rollingops-backend")
            before = self.backends.get(unit)
            self.backends[unit] = backend
            if before is not None and backend is not None and backend != before:
                note = f"now on the {backend} backend"
                self.marks.append(Mark(self.sim.now, unit, "note", note))
                news.append(f"{self.glyphs.note} {unit} is {note} (was {before})")
        return news

    def arm_timed_faults(self, sections: int) -> None:
        """Removals and the etcd outage strike while the second unit is in its section."""
        o, sim = self.o, self.sim
        if self.fault_armed or sections < min(2, o.units):
            return
        if o.fault not in ("leader-removed", "holder-removed", *ETCD_FAULTS):
            return
        self.fault_armed = True
        holder = self.h.recorder.intervals[-1].unit
        if o.fault == "leader-removed":
            leader = sim.leader(APP)
            if leader is not None:
                label = f"juju remove-unit {leader}   (the leader)"
                sim.add_timer(sim.now + 1, label, lambda: self.remove(leader, graceful=True))
        elif o.fault == "holder-removed":
            label = f"machine of {holder} lost   (the unit inside its critical section)"
            sim.add_timer(sim.now + 1, label, lambda: self.remove(holder, graceful=False))
        elif o.fault == "etcd-outage":
            self.etcd_outage(sim.now + 1, sim.now + 1 + OUTAGE_TICKS)
        else:
            self.etcd_replaced(sim.now + 1, sim.now + 1 + REPLACE_TICKS)

    def etcd_outage(self, t1: int, t2: int) -> None:
        """Make etcd unreachable during [t1, t2), longer than a lease: the lock's lease expires.

        Juju keeps running update-status every few minutes (rule: periodic and config hooks): the
        library's periodic chance to notice a dead worker or a lost etcd; the demo runs one of them
        after the outage, as the registry's own etcd faults do (one is enough to show the
        recovery).
        """
        sim = self.sim
        rollingops_engines.world_of(sim).outage(t1, t2)
        self.outages.append((t1, t2))
        self.fault_at = t1
        self.say(f"t={sim.now}  {self.glyphs.fault} fault: etcd will be unreachable t={t1}..{t2}")
        settle = t2 + rollingops_engines.LEASE_TTL_TICKS + 1
        sim.add_timer(settle, "update-status", lambda: self.update_status())

    def etcd_replaced(self, t1: int, t2: int) -> None:
        """Replace etcd: the relation goes at t1, a new cluster is integrated at t2.

        The new cluster is empty: its revisions (the etcd tokens) start again from 1.
        """
        sim = self.sim
        self.say(
            f"t={sim.now}  {self.glyphs.fault} fault: etcd replaced by a new cluster: relation "
            f"removed t={t1}, new cluster integrated t={t2}"
        )
        old = rollingops_engines.etcd_relation(sim)
        self.fault_at = t1
        sim.add_timer(
            t1,
            "juju remove-relation etcd; a new etcd cluster is deployed",
            lambda: rollingops_engines.replace_etcd_cluster(sim),
        )
        sim.add_timer(t2, "juju integrate (the new etcd)", lambda: self.integrate_etcd(old))

    def integrate_etcd(self, old: int | None) -> None:
        self.say(f"t={self.sim.now}  juju integrate {APP}:etcd with the new etcd cluster")
        rollingops_engines.etcd_integrate(self.sim)
        self.again_on_new_etcd(old, REPLACE_WAIT_TICKS)

    def again_on_new_etcd(self, old: int | None, tries: int) -> None:
        """Once the application runs on the new cluster, restart the first unit once more."""
        sim = self.sim
        relation = rollingops_engines.etcd_relation(sim)
        mode = Bags.from_truth(sim.relations, APP).app("rollingops").get("rollingops-mode")
        if relation in (None, old) or mode != "etcd":
            if tries > 1:
                label = "wait for the new etcd"
                sim.add_timer(sim.now + 1, label, lambda: self.again_on_new_etcd(old, tries - 1))
            return
        unit = self.units()[0]
        self.say(
            f"t={sim.now}  the application runs on the new etcd cluster: once more,\n"
            f"$ juju run {unit} restart engine=rollingops"
        )
        self.h.request(unit)
        self.marks.append(Mark(sim.now, unit, "request", "restart requested again"))

    def halt_news(self) -> list[str]:
        """A rollingops roll that paused itself (halt-after-failures): the operator resumes it."""
        why = (
            rollingops_engines.paused(self.sim) if self.o.engine.startswith("rollingops") else None
        )
        if why is None or why == self.halted:
            self.halted = why  # None again once the resume has committed
            return []
        self.halted = why
        at = self.sim.now + RESOLVE_AFTER
        self.sim.add_timer(at, "juju run resume", self.resume)
        return [f"{self.glyphs.fault} the roll paused itself: {why} (config halt-after-failures)"]

    def resume(self) -> None:
        self.say(
            f"t={self.sim.now}  $ juju run {APP}/leader resume   (the operator resumes the roll)"
        )
        leader = self.sim.leader(APP) or APP + "/0"
        self.marks.append(Mark(self.sim.now, leader, "resolved", "resume: the roll goes on"))
        self.sim.run_action(f"{APP}/leader", "resume")

    def update_status(self) -> None:
        self.say(f"t={self.sim.now}  (Juju's periodic update-status hook on every unit)")
        self.sim.update_status(APP)

    def remove(self, unit: str, graceful: bool) -> None:
        how = "juju remove-unit" if graceful else "its machine vanished (abrupt removal)"
        self.fault_at = self.sim.now if self.fault_at is None else self.fault_at
        self.say(f"t={self.sim.now}  {self.glyphs.fault} fault: {unit} removed: {how}")
        if not graceful and self.h.engine.name == "rollingops-etcd":
            ttl = rollingops_engines.LEASE_TTL_TICKS
            self.say(
                f"       (its etcd lock lives under its worker's lease: the others wait for that "
                f"lease to expire, {ttl} ticks)"
            )
        label = "juju remove-unit (the leader)" if graceful else "machine lost mid-operation"
        self.marks.append(Mark(self.sim.now, unit, "fault", label))
        self.sim.remove_unit(unit, graceful=graceful)

    def resolve(self, unit: str) -> None:
        self.say(f"t={self.sim.now}  $ juju resolved {unit}   (the operator retries the hook)")
        self.marks.append(
            Mark(self.sim.now, unit, "resolved", "juju resolved: the hook runs again")
        )
        self.sim.resolve(unit, retry=True)

    # --- the status table ----------------------------------------------------------------------

    def table(self, title: str = "") -> None:
        sim = self.sim
        holder, token = lock_holder(self.h)
        app = sim.apps[APP]
        inside = {i.unit for i in self.h.recorder.intervals if i.end is None}
        rows = [("Unit", "Workload", "Agent", "Lock", "Message")]
        for unit in self.units():
            truth = sim.units[unit]
            if truth.removed:
                continue
            name = unit + ("*" if app.leader == unit else "")
            if truth.error:
                workload, message = "error", truth.error
            else:
                workload, message = truth.unit_status.name, truth.unit_status.message
            running = sim.running.get(unit)
            agent = f"executing {running.item.event.replace('_', '-')}" if running else "idle"
            if truth.departing:
                agent = "departing"
            lock = ""
            if unit == holder:
                lock = "holds" + (f" {token_label(token)}" if token is not None else "")
                if self.o.operation == "upgrade":
                    lock = "its turn"
            if unit in inside:
                lock = (lock + ", " if lock else "") + (
                    "restarting" if self.o.operation == "restart" else "upgrading"
                )
            rows.append((name, workload, agent, lock, message))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        status = app.app_status
        app_line = f"App {APP}: {status.name}" + (f" ({status.message})" if status.message else "")
        if title:
            self.say(f"--- juju status ({title}, t={sim.now}) ---")
        self.say(app_line)
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.say("  " + "  ".join([*cells, row[4]]).rstrip())
        self.say()

    # --- the report ---------------------------------------------------------------------------

    def report(self, since: int, t_request: int, deploy_hooks: int) -> int:
        sim, h = self.sim, self.h
        for crash in h.crashed:
            if crash.section is not None:
                crash.section.committed = False  # its hook may have ended cleanly; the op did not
        intervals = sorted(h.recorder.intervals, key=lambda i: (i.start, i.unit))
        t_end = max([sim.now, *(i.end or sim.now for i in intervals)])
        self.timeline(t_request, t_end, intervals)
        stats = account(sim, h.recorder, since=since)
        counts = stats["hooks_per_unit"]
        per_unit = ", ".join(
            f"{u.rsplit('/', 1)[1]}: {n}" for u, n in counts.items() if app_of(u) == APP
        )
        others = ", ".join(f"{u}: {n}" for u, n in counts.items() if app_of(u) != APP)
        self.say(
            f"Hooks: {stats['hooks_total']} during the {self.o.operation} "
            f"(per unit {per_unit}" + (f"; stand-in {others}" if others else "") + "); "
            f"{deploy_hooks} for the deploy before it."
        )
        handoffs = stats["handoffs"]
        if handoffs:
            chain = [x["hooks"] for x in handoffs if x["hooks"] is not None]
            hooks = f", {min(chain)}-{max(chain)} hooks on the causal chain" if chain else ""
            self.say(
                f"Lock handoffs: {len(handoffs)}, median {stats['handoff_ticks_p50']} ticks "
                f"from one unit's exit to the next one's entry{hooks}."
            )
            self.say(
                f"Makespan: {stats['makespan']} ticks from the request to the last exit "
                f"(lower bound {stats['lower_bound']:.0f})."
            )
        self.say()
        problems = self.checks(intervals)
        self.stats, self.problems, self.sections = stats, problems, intervals
        picture = self.picture(t_request, t_end, intervals, stats)
        self.o.svg.parent.mkdir(parents=True, exist_ok=True)
        self.o.svg.write_text(picture)
        self.say(f"Picture of the timeline: {self.o.svg}")
        return 1 if problems else 0

    def _exclusion_text(self) -> str:
        k = self.h.engine.k
        if k == 1:
            return "never two units inside the critical section at once"
        return f"never more than {k} units inside the critical section at once"

    def _fencing_text(self) -> str:
        if self.h.engine.k == 1:
            return "each fencing token above those of every earlier holder"
        return "no fencing token shared by two units, none going down on a unit"

    def timeline(self, t0: int, t1: int, intervals: list) -> None:
        g = self.glyphs
        width = 72
        scale = max(1, math.ceil((t1 - t0 + 1) / width))
        columns = (t1 - t0) // scale + 1
        label_width = max(len(u) for u in self.units()) + 2
        verb = "restarting" if self.o.operation == "restart" else "upgrading"
        self.say(
            f"Timeline (t={t0}..{t1}, 1 column = {scale} tick{'s' if scale > 1 else ''}): "
            f"{g.busy} {verb} inside the lock   {g.wait} waiting for it   "
            f"{g.fault} fault   {g.gone} removed"
        )
        axis = [" "] * columns
        for col in range(0, columns, 10):
            text = str(t0 + col * scale)
            axis[col : col + len(text)] = text
        self.say(" " * label_width + "".join(axis).rstrip())
        for unit in self.units():
            row = [g.idle] * columns
            mine = [i for i in intervals if i.unit == unit]
            last = max((i.start for i in mine), default=self.removed_at.get(unit, t1 + 1))
            asked = self.requested_at.get(unit)
            if asked is not None:  # waiting for the lock until its last turn starts
                for t in range(asked, min(last, t1 + 1)):
                    row[(t - t0) // scale] = g.wait
            for i in mine:
                end = i.end if i.end is not None else t1
                for t in range(i.start, max(end, i.start + 1)):
                    row[(t - t0) // scale] = g.busy if i.committed else g.fault
            gone = self.removed_at.get(unit)
            if gone is not None:
                row[min((gone - t0) // scale, columns - 1)] = g.gone
            for mark in self.marks:
                if mark.unit == unit and mark.kind in ("crash", "error"):
                    row[(mark.t - t0) // scale] = g.fault
            leader = "*" if self.sim.apps[APP].leader == unit else ""
            notes = self.row_notes(unit, mine)
            self.say(f"{(unit + leader).ljust(label_width)}{''.join(row)}  {notes}".rstrip())
        for t_from, t_to in self.outages:
            row = [g.idle] * columns
            for t in range(max(t_from, t0), min(t_to, t1 + 1)):
                row[(t - t0) // scale] = g.outage
            note = f"etcd unreachable t={t_from}..{t_to}"
            self.say(f"{'etcd'.ljust(label_width)}{''.join(row)}  {note}")
        self.say("(* = leader at the end)")
        self.say()

    def row_notes(self, unit: str, mine: list) -> str:
        notes = []
        for i in mine:
            what = f"t={i.start}-{i.end}"
            if i.token is not None:
                what += f" {token_label(i.token)}"
            notes.append(what + ("" if i.committed else " (failed)"))
        if unit in self.removed_at:
            notes.append(f"removed t={self.removed_at[unit]}")
        return ", ".join(notes)

    def checks(self, intervals: list) -> list[str]:
        h, sim = self.h, self.sim
        exclusion = [v for v in h.recorder.violations if v.startswith("I1")]
        fencing = [v for v in h.recorder.violations if v.startswith("I6")]
        liveness = h.recorder.liveness_failures()
        stuck = [f"{u} left in error" for u in sim.stuck_units()]
        uncaught = h.recorder.uncaught()
        refused = [
            f"action {a.name} on {a.unit} failed: {a.message}"
            for a in sim.actions.values()
            if a.status == "failed"
        ]
        ok = "ok  " if self.glyphs.busy == "#" else "✓ "
        bad = "FAIL" if self.glyphs.busy == "#" else "✗ "
        served = sum(1 for i in intervals if i.committed)
        results = [
            (not exclusion, self._exclusion_text(), exclusion),
            (not fencing, self._fencing_text(), fencing),
            (not liveness, f"every request served ({served} operations completed)", liveness),
            (not stuck and not uncaught, "no unit left in error, no unexpected exception",
             stuck + uncaught),
            (not refused, "every action accepted", refused),
        ]  # fmt: skip
        self.say("Checks:")
        problems = []
        for passed, text, details in results:
            self.say(f"  {ok if passed else bad} {text}")
            for detail in details:
                self.say(f"       {detail}")
            problems += details
        self.say()
        return problems

    def picture(self, t0: int, t1: int, intervals: list, stats: dict[str, Any]) -> str:
        sim = self.sim
        lanes = []
        for unit in self.units():
            starts = [r.start for r in sim.runs.values() if r.unit == unit and r.start >= t0]
            lanes.append(
                Lane(unit, starts, self.requested_at.get(unit), self.removed_at.get(unit))
            )
        bars = [
            Interval(
                i.unit, i.start, i.end if i.end is not None else t1, bool(i.committed), i.token
            )
            for i in intervals
        ]
        o = self.o
        title = (
            f"coordinated-ops: rolling {o.operation} of {o.units} units"
            + (f", engine {o.engine}" if o.operation == "restart" else f" to {UPGRADE_TARGET}")
            + (f", fault {o.fault}" if o.fault != "none" else "")
        )
        detail = ENGINE_TITLE.get(o.engine) if o.operation == "restart" else None
        subtitle = "  ·  ".join(
            part
            for part in (
                "simulated Juju controller, real charm code",
                detail,
                f"{stats['hooks_total']} hooks, makespan {stats['makespan']} ticks",
            )
            if part
        )
        return render(
            Picture(
                title,
                subtitle,
                t0,
                t1,
                lanes,
                bars,
                self.marks,
                o.operation,
                self.leader_history,
                self.outages,
            )
        )

    # --- what the engine did about the fault (for --compare) ----------------------------------

    def fault_response(self) -> list[str]:
        """What happened after the fault struck, read from the run: who went next, and how."""
        o, sim = self.o, self.sim
        if o.fault == "none" or self.fault_at is None:
            return []
        struck = self.fault_at
        said = []
        for crash in self.crashes_seen[:1]:
            if crash.run.ok:
                said.append(
                    "the library caught the exception: the hook committed, the lock was "
                    "released and the restart queued again"
                )
            else:
                said.append(
                    f"the hook failed: {crash.unit} went into error and Juju discarded its "
                    "writes; `juju resolved` ran the hook again"
                )
        if o.fault == "leader-removed":
            elected = [(t, u) for t, u in self.leader_history if t >= struck and u]
            if elected:
                said.append(f"{elected[0][1]} became leader at t={elected[0][0]}")
        after = [i for i in self.sections if i.start >= struck and i.committed]
        if not after:
            said.append("no critical section started after the fault")
            return said
        nxt = after[0]
        run = sim.runs.get(nxt.hook)
        hook = run.item.event.replace("_", "-") if run else "?"
        ticks = nxt.start - struck
        said.append(
            f"next inside: {nxt.unit} at t={nxt.start}, {ticks} tick{'s' * (ticks != 1)} after "
            f"the fault, in its {hook} hook"
        )
        chain = self.chain_since(nxt.hook, struck)
        if len(chain) > 1:
            said.append("hooks that led there: " + " -> ".join(chain))
        return said

    def chain_since(self, seq: int, since: int) -> list[str]:
        """The causal chain of hooks that queued run `seq`, back to the first one after `since`."""
        chain = []
        run = self.sim.runs.get(seq)
        while run is not None and run.start >= since and len(chain) < 12:
            unit = run.unit.rsplit("/", 1)[1]
            chain.append(f"{unit}:{run.item.event.replace('_', '-')}")
            run = self.sim.runs.get(run.item.parent)
        return chain[::-1]


def compare(options: Options, out: TextIO = sys.stdout) -> int:
    """`--compare`: every engine on the same schedule and fault(s), side by side."""
    faults = [options.fault] if options.fault != "none" else list(COMPARED_FAULTS)
    schedule = f"seeded random, seed {options.seed}" if options.seed is not None else "round-robin"
    intro = (
        f"coordinated-ops demo, side by side: {options.units} units, a restart requested on "
        f"every unit, {schedule}. The controller is simulated (jujusim), the charm is the real "
        "charm, etcd an in-memory fake. hooks: every hook run from the request on (all units); "
        "makespan: ticks from the request to the last exit; handoffs: how many, and the median "
        "ticks from one unit's exit to the next one's entry. Under each engine: what it did "
        "about the fault, read from the run."
    )
    print("\n".join(textwrap.wrap(intro, 94)), file=out)
    code = 0
    for fault in faults:
        print(f"\n=== fault: {fault}" + (f" ({FAULT_TEXT[fault]})" if fault != "none" else ""),
              file=out)  # fmt: skip
        print(f"  {'engine':<16} {'hooks':>5} {'makespan':>8}  {'handoffs':<12} checks", file=out)
        for engine in ENGINES:
            if fault != "none" and fault not in faults_for(engine):
                print(f"  {engine:<16} {'-':>5} {'-':>8}  {'-':<12} n/a: needs etcd", file=out)
                continue
            run = dataclasses.replace(options, engine=engine, fault=fault, compare=False)
            run.svg = options.svg.with_name(f"{options.svg.stem}-{engine}-{fault}.svg")
            demo = Demo(run, out=io.StringIO())  # its own story is not shown here
            result = demo.run()
            code = max(code, result)
            stats = demo.stats
            median = stats.get("handoff_ticks_p50")
            handoffs = f"{len(stats.get('handoffs', []))}" + (
                f" ({median:g})" if median is not None else ""
            )
            checks = "ok" if result == 0 else "FAILED: " + "; ".join(demo.problems)[:60]
            print(
                f"  {engine:<16} {stats.get('hooks_total', '?'):>5} "
                f"{stats.get('makespan', '?'):>8}  {handoffs:<12} {checks}",
                file=out,
            )
            for line in demo.fault_response():
                for part in textwrap.wrap(line, 90, break_on_hyphens=False):
                    print(f"      {part}", file=out)
    print(f"\nPictures: {options.svg.parent}/{options.svg.stem}-<engine>-<fault>.svg", file=out)
    return code


FAULT_TEXT = {
    "leader-removed": "the leader is removed (juju remove-unit) mid-rollout",
    "holder-removed": "the machine of the unit inside its critical section vanishes",
    "hook-failure": "the second unit's hook crashes inside its critical section",
    "etcd-outage": "etcd becomes unreachable",
    "etcd-replaced": "the etcd cluster is replaced by a new one (revisions restart from 1)",
}


def quiet_logging() -> None:
    """The charm logs every hook; the demo prints its own story instead."""
    logging.disable(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    quiet_logging()
    if options.compare:
        return compare(options)
    return Demo(options).run()


if __name__ == "__main__":
    sys.exit(main())
