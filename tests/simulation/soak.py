"""Soak: many seeded schedules of a rolling operation on every unit, with faults, checked.

    python -m tests.simulation.soak --engine v0 --units 5 --seeds 1000 --faults all --jobs 2 --json

Each schedule forks a settled N-unit deployment of the demo charm, requests the engine's operation
on every unit, optionally arms a random mix of faults (failed hooks at entry / inside the critical
section / before return, leadership moves, unit removal graceful or abrupt, a unit added, extra
update-status ticks, orphaned or delayed juju-exec wake-ups), runs a seeded random schedule to
quiescence and checks I1-I5 (invariants.py). Schedules cycle through the combinations of
`leader_sees_own_app_writes` (on/off), hook retry (none/backoff) and the Juju version's unit
removal (3.6, or 4 with juju/juju#23326: a removed unit stays in its peers' relation and they get
no relation-departed; docs/juju-rules.md) chosen on the command line;
with retry none, a unit left in error is a legitimate stuck state: exclusion is checked as it is,
then every errored unit is resolved (retry) and the schedule must finish.

The last line of output is one JSON object (figures for tests/benchmarks and reports). A failing
schedule prints its seed, its violations and the readable script of its steps to stderr.

A long soak can outlive its session: with `--record FILE` every finished schedule is appended to
FILE (JSON lines, after one line naming the soak's options and code), and a later run with the
same options and FILE runs only the schedules not yet there; the summary covers every recorded
schedule. Its `seconds` and `hooks_executed` count this run only; `schedule_seconds` adds up the
schedules' own times over every run; `resumed` says how many came from FILE, and a failure among
them is printed again (seed, switches, checks). A record names the git trees of the code it ran
and is resumed only on the same: it refuses uncommitted changes to that code.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from demo.engines import ENGINES, Engine
from demo.fakes import DemoFakes
from jujusim.accounting import account
from jujusim.invariants import Recorder
from jujusim.scheduler import RoundRobin, SeededRandom, drain
from jujusim.script import format_script
from jujusim.simulator import Simulator

MAX_STEPS = 100_000
MAX_RESOLVE_ROUNDS = 32  # each retry consumes one injected failure; no schedule injects more
MAX_UPDATE_STATUS_TICKS = 3


def _move_leadership(sim: Simulator, unit: str) -> None:
    """Juju elects only live units: a timed leader change to a unit removed since is void."""
    truth = sim.units[unit]
    if not (truth.departing or truth.removed):
        sim.set_leader(unit)


def arm_faults(sim: Simulator, engine: Engine, units: list[str]) -> list[str]:
    """Arm a random mix of faults on `sim` (its RNG decides); return their descriptions."""
    rng = sim.rng
    horizon = 6 * len(units) + 4
    armed = []
    if rng.random() < 0.7:
        unit = rng.choice(units)
        point = rng.choice(["entry", "in_critical_section", "before_return"])
        match = rng.choice([None, "relation_changed", "restart", "process_locks"])
        nth = rng.randint(1, 3)
        sim.fail_hook(unit, match=match, nth=nth, point=point)
        armed.append(f"fail_hook {unit} {match} nth={nth} {point}")
    if rng.random() < 0.4:
        at, unit = sim.now + rng.randint(0, horizon), rng.choice(units)
        sim.add_timer(at, f"set_leader {unit}", lambda u=unit: _move_leadership(sim, u))
        armed.append(f"set_leader {unit} at {at}")
    if rng.random() < 0.3 and len(units) > 1:
        at, unit, graceful = (
            sim.now + rng.randint(0, horizon),
            rng.choice(units),
            rng.random() < 0.5,
        )
        sim.add_timer(at, f"remove_unit {unit}", lambda u=unit, g=graceful: sim.remove_unit(u, g))
        armed.append(f"remove_unit {unit} graceful={graceful} at {at}")
    if rng.random() < 0.2:
        at = sim.now + rng.randint(0, horizon)
        sim.add_timer(at, "add_unit", lambda: sim.add_unit(engine.app))
        armed.append(f"add_unit at {at}")
    if rng.random() < 0.3:
        at = sim.now + rng.randint(0, horizon)
        sim.add_timer(at, "update_status", lambda: sim.update_status(engine.app))
        armed.append(f"update_status at {at}")
    if rng.random() < 0.2:
        sim.orphan_worker = True
        armed.append("orphan_worker")
    armed += engine.faults(sim, units)
    for event in engine.custom_delay:
        sim.custom_delay[event] = engine.custom_delay[event] + rng.randint(0, 3)
    return armed


def finish(
    sim: Simulator,
    scheduler: Any,
    recorder: Recorder,
    app: str,
    unstick: Callable[[Simulator], Any] | None = None,
) -> tuple[bool, int]:
    """Run `sim` to quiescence the way an operator and Juju would; return (resolved?, ticks).

    With retry none a unit in error is a legitimate stuck state: exclusion so far is checked by
    the recorder already; the operator resolves it (retrying the hook) until it recovers. Juju
    then keeps firing update-status (every 5 min by default): a request whose only wake-up was
    lost (a failed juju-exec dispatch is never retried) is picked up by the next tick. Up to
    MAX_UPDATE_STATUS_TICKS ticks are fired while a request is unserved, or while a removed unit
    still holds a grant (on Juju 4 no relation-departed comes: the leader's next hook frees it, and
    update-status is the hook that surely comes); the count is reported.
    `unstick(sim)` is what the operator does too while a request is unserved (the engine's:
    rollingops resumes a roll halted after failures).
    """
    stuck_seen = False
    ticks = 0
    while True:
        drain(sim, scheduler, MAX_STEPS)
        for _ in range(MAX_RESOLVE_ROUNDS):
            stuck = sim.stuck_units()
            if not stuck:
                break
            stuck_seen = True
            for unit in stuck:
                sim.resolve(unit, retry=True)
            drain(sim, scheduler, MAX_STEPS)
        waiting = recorder.liveness_failures() or recorder.ghost_holders()
        if ticks == MAX_UPDATE_STATUS_TICKS or not waiting:
            return stuck_seen, ticks
        ticks += 1
        if unstick is not None:
            unstick(sim)
        sim.update_status(app)


def run_schedule(
    base: Simulator, fakes: DemoFakes, engine: Engine, seed: int, retry: str, faults: bool
) -> dict[str, Any]:
    """One schedule on a fork of the settled deployment `base`; returns its checks and figures."""
    sim = base.fork(seed, retry=retry)
    fakes.attach(sim)
    recorder = Recorder(sim, k=engine.k, holds_grant=engine.holds_grant, domains=engine.domains)
    sim.actors.extend(engine.actors(sim))
    mark = sim.last_seq
    units = sim.members(engine.app)
    armed = arm_faults(sim, engine, units) if faults else []
    for unit in units:
        engine.request(sim, unit)
    stuck_seen, ticks = finish(sim, SeededRandom(), recorder, engine.app, engine.unstick)
    violations = recorder.violations + recorder.ghost_holders()
    liveness = recorder.liveness_failures()
    uncaught = recorder.uncaught()
    figures = account(sim, recorder, since=mark)
    return {
        "seed": seed,
        "retry": retry,
        "leader_sees_own_app_writes": sim.leader_sees_own_app_writes,
        "juju": sim.juju,
        "faults": armed,
        "stuck_resolved": stuck_seen,
        "update_status_ticks": ticks,
        "violations": violations,
        "liveness": liveness,
        "uncaught": uncaught,
        "hooks": sim.hooks_run - base.hooks_run,
        "figures": figures,
        "sim": sim,
    }


def settle(engine: Engine, units: int, fakes: DemoFakes, **switches: Any) -> Simulator:
    """Deploy `units` units of the engine's charm and run to quiescence (round-robin)."""
    sim = Simulator(**switches)
    fakes.attach(sim)
    sim.deploy(engine.app, engine.charm(), units=units)
    engine.setup(sim)
    drain(sim, RoundRobin(), MAX_STEPS)
    if sim.errors:
        raise RuntimeError(f"deployment did not settle cleanly: {sim.errors[:3]}")
    return sim


def _p50(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _failed(result: dict[str, Any]) -> bool:
    return bool(result["violations"] or result["liveness"] or result["uncaught"])


def _combos(args: argparse.Namespace) -> list[tuple[tuple[bool, str], str]]:
    """((leader_sees_own_app_writes, juju version), retry) per schedule, in turn."""
    switch_values = {"on": [True], "off": [False], "both": [True, False]}[args.leader_sees_own]
    retry_values = {"none": ["none"], "backoff": ["backoff"], "both": ["none", "backoff"]}[
        args.retry
    ]
    juju_values = {"3.6": ["3.6"], "4": ["4"], "both": ["3.6", "4"]}[args.juju]
    settled = list(itertools.product(switch_values, juju_values))
    return [(base, retry) for retry in retry_values for base in settled]


def run_seeds(args: argparse.Namespace, indices: list[int]) -> tuple[list[dict[str, Any]], int]:
    """Run the schedules `indices` (positions in --seeds); return their results and hooks run.

    Schedule i uses seed start_seed + i and the i-th combination in turn, whichever process runs
    it, so a schedule replays alone with --start-seed and --seeds 1 and the combination's
    --leader-sees-own/--retry/--juju. With --record each result is also appended to the record
    as soon as it is known.
    """
    engine = ENGINES[args.engine]
    combos = _combos(args)
    results: list[dict[str, Any]] = []
    hooks = 0
    progress = Progress(len(indices))
    fakes = engine.fakes(Simulator())
    with fakes.installed():
        for switch in sorted({switch for switch, _ in combos}, reverse=True):
            mine = [i for i in indices if combos[i % len(combos)][0] == switch]
            if not mine:
                continue
            own, juju = switch
            base = settle(engine, args.units, fakes, leader_sees_own_app_writes=own, juju=juju)
            hooks += base.hooks_run
            for index in mine:
                retry = combos[index % len(combos)][1]
                began = time.perf_counter()
                result = run_schedule(
                    base, fakes, engine, args.start_seed + index, retry, args.faults == "all"
                )
                result["seconds"] = round(time.perf_counter() - began, 3)
                hooks += result["hooks"]
                if _failed(result):
                    report_failure(result)
                result.pop("sim")
                result["index"] = index
                if args.record:
                    _append_record(args.record, result)
                results.append(result)
                progress.done(_failed(result))
    return results, hooks


class Progress:
    """A stderr line per tenth of a process's schedules (10 or more): a long soak shows life."""

    def __init__(self, total: int) -> None:
        self.total, self.finished, self.failed = total, 0, 0
        self.step = total // 10
        self.started = time.perf_counter()

    def done(self, failed: bool) -> None:
        self.finished += 1
        self.failed += failed
        if self.step and self.finished % self.step == 0:
            elapsed = time.perf_counter() - self.started
            print(
                f"soak pid {os.getpid()}: {self.finished}/{self.total} schedules, "
                f"{self.failed} failing, {elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )


def _run_share(job: tuple[argparse.Namespace, list[int]]) -> tuple[list[dict[str, Any]], int]:
    return run_seeds(*job)


RECORD_OPTIONS = ("engine", "units", "faults", "leader_sees_own", "retry", "juju", "start_seed")
"""The options that decide which schedule an index is: a record is resumed only with the same."""

SOAKED_CODE = ("lib", "src", "demo", "jujusim")
"""The directories whose code a soak runs: a record names their git trees."""


REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def code_identity(root: pathlib.Path = REPO_ROOT) -> str:
    """The git tree ids of SOAKED_CODE at HEAD; SystemExit if any has uncommitted changes.

    A record is only worth what the code it ran was, so a soak is recorded on committed code only
    and its resume must run the same trees. Outside a git checkout: "unknown".
    """

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *argv], capture_output=True, text=True, check=True
        ).stdout

    try:
        dirty = git("status", "--porcelain", "--", *SOAKED_CODE)
        trees = git("rev-parse", *(f"HEAD:{name}" for name in SOAKED_CODE)).split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if dirty:
        raise SystemExit(
            f"--record needs committed code; uncommitted changes in {', '.join(SOAKED_CODE)}:\n"
            + dirty
        )
    return " ".join(f"{name}={tree[:12]}" for name, tree in zip(SOAKED_CODE, trees, strict=True))


def _record_header(args: argparse.Namespace) -> dict[str, Any]:
    options = {name: getattr(args, name) for name in RECORD_OPTIONS}
    return {"soak": options, "code": code_identity()}


def read_record(args: argparse.Namespace) -> dict[int, dict[str, Any]]:
    """The schedules already in --record (by index), after checking it records this soak.

    A missing file is created with the header. A file that is not a record, or records other
    options or other code, is refused (SystemExit saying what differs). A last line cut short by
    a killed run is dropped: that schedule runs again.
    """
    path = pathlib.Path(args.record)
    header = _record_header(args)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        pass
    else:
        _write_line(fd, json.dumps(header, sort_keys=True))
        return {}
    lines = path.read_text().splitlines(keepends=True)
    try:
        found = json.loads(lines[0])
    except (IndexError, ValueError):
        raise SystemExit(f"{path} is not a soak record: give another --record file") from None
    if found != header:
        raise SystemExit(f"{path} records another soak:\n  {found}\nthis one is\n  {header}")
    if not lines[-1].endswith("\n"):
        with path.open("a") as record:
            record.write("\n")  # the cut line stays alone; the next result starts afresh
    done: dict[int, dict[str, Any]] = {}
    for line in lines[1:]:
        try:
            result = json.loads(line)
        except ValueError:
            continue  # a line cut short by a killed run
        done[result["index"]] = result
    return done


def _write_line(fd: int, text: str) -> None:
    """Write `text` and a newline to `fd`, all of it, and close it."""
    data = (text + "\n").encode()
    try:
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def _append_record(path: str, result: dict[str, Any]) -> None:
    """Append one schedule's result as one line (several --jobs append to the same file).

    O_APPEND puts each write at the end, so lines of several processes do not overwrite each
    other; a line this size goes out in one write.
    """
    _write_line(os.open(path, os.O_WRONLY | os.O_APPEND), json.dumps(result, sort_keys=True))


def report_recorded_failure(result: dict[str, Any]) -> None:
    """A failed schedule from the record: its seed, switches and checks (replay it for more)."""
    print(
        "--- recorded:" + _schedule_line(result)[3:],
        *result["violations"],
        *result["liveness"],
        *result["uncaught"][:5],
        sep="\n",
        file=sys.stderr,
    )


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Run every schedule, in --jobs processes (one per core is the fastest); summarise."""
    started = time.perf_counter()
    recorded = read_record(args) if args.record else {}
    indices = [i for i in range(args.seeds) if i not in recorded]
    jobs = max(1, min(args.jobs, len(indices)))
    results: list[dict[str, Any]] = []
    hooks = 0
    if jobs == 1 and indices:
        results, hooks = run_seeds(args, indices)
    elif indices:
        shares = [(args, indices[j::jobs]) for j in range(jobs)]
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            outputs = pool.map(_run_share, shares)
        results = [result for share, _ in outputs for result in share]
        hooks = sum(share_hooks for _, share_hooks in outputs)
    resumed = [result for index, result in recorded.items() if index < args.seeds]
    for result in resumed:
        if _failed(result):
            report_recorded_failure(result)
    results += resumed
    elapsed = time.perf_counter() - started
    per_combo: dict[str, dict[str, int]] = {}
    for result in sorted(results, key=lambda r: r["seed"]):
        key = (
            f"leader_sees_own={'on' if result['leader_sees_own_app_writes'] else 'off'},"
            f"retry={result['retry']},juju={result['juju']}"
        )
        counts = per_combo.setdefault(key, {"schedules": 0, "bad": 0})
        counts["schedules"] += 1
        if _failed(result):
            counts["bad"] += 1
    figures = [r["figures"] for r in results]
    return {
        "engine": args.engine,
        "units": args.units,
        "seeds": args.seeds,
        "faults": args.faults,
        "jobs": jobs,
        "schedules": len(results),
        "resumed": len(resumed),
        "violations": sum(len(r["violations"]) for r in results),
        "liveness_failures": sum(len(r["liveness"]) for r in results),
        "uncaught_errors": sum(len(r["uncaught"]) for r in results),
        "stuck_then_resolved": sum(1 for r in results if r["stuck_resolved"]),
        "served_after_update_status": sum(1 for r in results if r["update_status_ticks"]),
        "combinations": per_combo,
        "hooks_total_p50": _p50([f["hooks_total"] for f in figures]),
        "hooks_per_unit_max": max((f["hooks_per_unit_max"] for f in figures), default=0),
        "handoff_hooks_p50": _p50([f["handoff_hooks_p50"] for f in figures]),
        "makespan_ratio_p50": _round(_p50([f["makespan_ratio"] for f in figures])),
        "hooks_executed": hooks,
        "seconds": round(elapsed, 1),
        "schedule_seconds": round(sum(r.get("seconds", 0) for r in results), 1),
        "hooks_per_second": round(hooks / elapsed, 1) if elapsed else None,
    }


def _schedule_line(result: dict[str, Any]) -> str:
    """`--- seed S retry=R leader_sees_own_app_writes=B juju=V`: what replays the schedule."""
    return (
        f"--- seed {result['seed']} retry={result['retry']} "
        f"leader_sees_own_app_writes={result['leader_sees_own_app_writes']} "
        f"juju={result['juju']}"
    )


def report_failure(result: dict[str, Any]) -> None:
    sim: Simulator = result["sim"]
    lines = [
        _schedule_line(result),
        f"faults: {result['faults']}",
        *result["violations"],
        *result["liveness"],
        *result["uncaught"][:5],
        "script:",
        format_script(sim.steps),
        "trace tail:",
        *sim.trace[-30:],
    ]
    print("\n".join(lines), file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--engine", choices=sorted(ENGINES), default="v0")
    parser.add_argument("--units", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--start-seed", type=int, default=0)
    parser.add_argument("--faults", choices=["none", "all"], default="all")
    parser.add_argument("--leader-sees-own", choices=["on", "off", "both"], default="both")
    parser.add_argument("--retry", choices=["none", "backoff", "both"], default="both")
    parser.add_argument(
        "--juju",
        choices=["3.6", "4", "both"],
        default="both",
        help="unit removal as Juju 3.6 does it, as Juju 4 does it (juju/juju#23326), or both",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes to spread the schedules over (one per core)"
    )
    parser.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    parser.add_argument(
        "--record",
        metavar="FILE",
        help="append each schedule's result to FILE and skip those already there (resume)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = soak(args)
    if not args.json:
        for key, value in summary.items():
            print(f"{key:22} {value}")
    print(json.dumps(summary, sort_keys=True))
    bad = summary["violations"] + summary["liveness_failures"] + summary["uncaught_errors"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
