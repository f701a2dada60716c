"""What one hook costs: a cold `dispatch` of update-status, our charm against a bare ops charm.

Every Juju hook starts a fresh interpreter through the charm's `dispatch`, imports the charm and
its libraries, runs ops, calls hook tools and exits. This measures that wall time for:

- the coordinated-ops charm, assembled as packed (tests/dispatch/charmdir.py), installed and
  started first, so update-status sees a running, healthy service as on a real unit;
- a charm that only imports ops (`ops.main` of an empty CharmBase), same venv, same dispatch
  script, same stub hook tools — the floor any ops charm pays.

Each sample is one process (a "cold" dispatch: new interpreter, new imports; bytecode caches
exist, as on a unit after its first hook). The two charms are measured alternately so that
machine load affects both alike. Hook tools are the stubs of tests/dispatch, built like Juju's: a
small compiled client per call (tests/dispatch/hooktool_client.c) asking an agent thread of this
process, which loads (and on a change writes) the unit's JSON state file; about 1.5 ms a call on an
idle machine, where a real `jujuc` call takes a few ms. Their calls are counted.

    python -m tests.benchmarks.dispatch --json [--samples 15] [--venv DIR] [--source DIR]

The last line is JSON: {"charm_dispatch_s_median", "ops_only_s_median", "ratio", ...}; the
target is ratio <= 1.3. `charm_hook_tool_calls` counts the charm's hook tool calls (median) per
quiet hook kind, each a round trip to the unit agent on a real controller: `update-status`
(nothing in flight; target <= 4), `config-changed` (config unchanged) and `relation-changed`
(an application-level change of the `rollingops` peer relation with nothing to do, as the
leader gets for its own write); tests/unit/test_dispatch_calls.py asserts the first.
`ratio_without_hook_tools` takes out the stub tools' own cost (calls x the median of one
call), to separate the charm's Python work from this harness's tool latency;
`ratio_at_5ms_per_hook_tool` puts back 5 ms a call instead, a pessimistic real agent.
`hook_tool_stub` says which stub ran: "client" (compiled) or "python" (no C compiler here: a
Python start-up per call, tens of ms, so the ratio is not comparable).
`--venv` reuses a venv built earlier (else one is built, needs PyPI).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

from tests.dispatch import charmdir

OPS_ONLY_CHARM = '''#!/usr/bin/env python3
"""A charm that only imports ops: the cost floor of any ops charm."""

import ops


class OpsOnlyCharm(ops.CharmBase):
    """Observes nothing."""


if __name__ == "__main__":
    ops.main(OpsOnlyCharm)
'''


def _ops_only_source(directory: pathlib.Path) -> pathlib.Path:
    (directory / "src").mkdir(parents=True)
    (directory / "src" / "charm.py").write_text(OPS_ONLY_CHARM)
    (directory / "metadata.yaml").write_text("name: ops-only\nsummary: s\ndescription: d\n")
    return directory


def _lines(path: pathlib.Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


class Sample(NamedTuple):
    """One dispatch: wall seconds, CPU seconds of its processes, hook tool and juju-log calls."""

    wall_s: float
    cpu_s: float
    calls: int
    logs: int


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _time_dispatch(
    unit: charmdir.Unit, hook: str, extra_env: dict[str, str] | None = None
) -> Sample:
    """Measure one dispatch of `hook` (juju-log is a shell script, counted apart)."""
    calls, logs = unit.work / "calls.jsonl", unit.work / "juju-log.txt"
    calls_before, logs_before = _lines(calls), _lines(logs)
    cpu_before = _children_cpu_s()
    start = time.perf_counter()
    run = unit.dispatch(f"hooks/{hook}", extra_env)
    elapsed = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"{unit.unit}: {hook} exited {run.returncode}:\n{run.output}")
    return Sample(
        elapsed,
        _children_cpu_s() - cpu_before,
        _lines(calls) - calls_before,
        _lines(logs) - logs_before,
    )


QUIET_PEER = "rollingops"  # the peer relation of the default restart engine


def peer_changed_env(unit: charmdir.Unit, endpoint: str = QUIET_PEER) -> dict[str, str]:
    """The hook environment of an application-level relation-changed of a peer `endpoint`."""
    for relation_id, relation in unit.state()["relations"].items():
        if relation["endpoint"] == endpoint:
            return {
                "JUJU_RELATION": endpoint,
                "JUJU_RELATION_ID": f"{endpoint}:{relation_id}",
                "JUJU_REMOTE_APP": relation["remote-app"],
            }
    raise ValueError(f"no {endpoint} relation in {unit.unit}'s state")


def quiet_hooks(unit: charmdir.Unit) -> dict[str, tuple[str, dict[str, str] | None]]:
    """The quiet hook kinds whose hook tool calls are counted: name -> (hook, extra env)."""
    return {
        "update-status": ("update-status", None),
        "config-changed": ("config-changed", None),
        "relation-changed": (f"{QUIET_PEER}-relation-changed", peer_changed_env(unit)),
    }


def _import_cpu_s(unit: charmdir.Unit, module: str, samples: int) -> float:
    """Median CPU seconds of `python -c "import <module>"` with the charm's venv and paths."""
    python = unit.charm_dir / "venv" / "bin" / "python"
    env = {**unit.env, "PYTHONPATH": f"{unit.charm_dir}/lib:{unit.charm_dir}/src"}
    times = []
    for _ in range(samples):
        before = _children_cpu_s()
        subprocess.run([str(python), "-c", f"import {module}"], env=env, check=True)
        times.append(_children_cpu_s() - before)
    return statistics.median(times)


def _time_hook_tool(unit: charmdir.Unit, samples: int) -> float:
    """Median seconds of one stub hook tool call (`is-leader`), start-up included."""
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        subprocess.run(
            ["is-leader", "--format=json"], env=unit.env, capture_output=True, check=True
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ratio_at(
    call_s: float,
    charm_s: float,
    ops_s: float,
    charm_calls: list[int],
    ops_calls: list[int],
    measured_call_s: float,
) -> float:
    """The ratio had each hook tool call cost `call_s` instead of the measured one."""
    delta = call_s - measured_call_s
    charm = charm_s + statistics.median(charm_calls) * delta
    ops_only = ops_s + statistics.median(ops_calls) * delta
    return charm / max(ops_only, 1e-3)


def main(argv: list[str] | None = None) -> int:
    """Measure, print a summary, then the JSON line."""
    parser = argparse.ArgumentParser(description="Time a cold dispatch of update-status.")
    parser.add_argument("--json", action="store_true", help="end with the JSON line (always on)")
    parser.add_argument("--samples", type=int, default=15)
    parser.add_argument("--venv", type=pathlib.Path, help="reuse this charm venv")
    parser.add_argument(
        "--source",
        type=pathlib.Path,
        default=charmdir.ROOT,
        help="the charm's source tree (default: this repository; e.g. a copy with a change)",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="dispatch-bench-") as tmp:
        work = pathlib.Path(tmp)
        venv = args.venv or charmdir.build_venv(work / "venv", charmdir.ROOT / "requirements.txt")
        charm = charmdir.Unit(
            work / "charm-unit", venv, unit="coordinated-ops/0", source=args.source
        )
        ops_only = charmdir.Unit(
            work / "ops-only-unit",
            venv,
            unit="ops-only/0",
            source=_ops_only_source(work / "ops-only-source"),
        )
        try:
            for unit in (charm, ops_only):
                for hook in ("install", "start", "update-status"):  # warm: state, bytecode
                    _time_dispatch(unit, hook)
            charm_runs: list[Sample] = []
            ops_runs: list[Sample] = []
            for _ in range(args.samples):
                charm_runs.append(_time_dispatch(charm, "update-status"))
                ops_runs.append(_time_dispatch(ops_only, "update-status"))
            calls_per_kind = {"update-status": statistics.median(r.calls for r in charm_runs)}
            for kind, (hook, env) in quiet_hooks(charm).items():
                if kind not in calls_per_kind:
                    runs = [_time_dispatch(charm, hook, env) for _ in range(3)]
                    calls_per_kind[kind] = statistics.median(run.calls for run in runs)
            tool_s = _time_hook_tool(charm, args.samples)
            import_charm_cpu = _import_cpu_s(charm, "charm", args.samples)
            import_ops_cpu = _import_cpu_s(charm, "ops", args.samples)
        finally:
            charm.close()
            ops_only.close()

    def median(runs: list[Sample], field: str) -> float:
        return statistics.median(getattr(run, field) for run in runs)

    charm_median, ops_median = median(charm_runs, "wall_s"), median(ops_runs, "wall_s")
    charm_calls = [run.calls for run in charm_runs]
    ops_calls = [run.calls for run in ops_runs]
    result = {
        "charm_dispatch_s_median": round(charm_median, 4),
        "ops_only_s_median": round(ops_median, 4),
        "ratio": round(charm_median / ops_median, 3),
        "charm_dispatch_s_max": round(max(run.wall_s for run in charm_runs), 4),
        "ops_only_s_max": round(max(run.wall_s for run in ops_runs), 4),
        # CPU time of the dispatch's processes (charm and hook tool clients): less sensitive to
        # the machine's load than wall time.
        "charm_dispatch_cpu_s_median": round(median(charm_runs, "cpu_s"), 4),
        "ops_only_cpu_s_median": round(median(ops_runs, "cpu_s"), 4),
        "cpu_ratio": round(median(charm_runs, "cpu_s") / median(ops_runs, "cpu_s"), 3),
        "import_charm_cpu_s_median": round(import_charm_cpu, 4),
        "import_ops_cpu_s_median": round(import_ops_cpu, 4),
        "charm_hook_tool_calls": calls_per_kind,
        "charm_juju_log_calls": median(charm_runs, "logs"),
        "ops_only_hook_tool_calls": statistics.median(ops_calls),
        # The ratio's sensitivity to what one hook tool call costs (calls x one call's median
        # taken out, or replaced by 5 ms a call).
        "hook_tool_call_s_median": round(tool_s, 4),
        "ratio_without_hook_tools": round(
            _ratio_at(0.0, charm_median, ops_median, charm_calls, ops_calls, tool_s), 3
        ),
        "ratio_at_5ms_per_hook_tool": round(
            _ratio_at(0.005, charm_median, ops_median, charm_calls, ops_calls, tool_s), 3
        ),
        "hook_tool_stub": "client" if charm.hook_tool_client else "python",
        "samples": args.samples,
        "target_ratio": 1.3,
    }
    print(
        f"update-status dispatch, median of {args.samples}: coordinated-ops {charm_median:.3f} s "
        f"({calls_per_kind['update-status']} hook tool calls; per quiet hook kind "
        f"{calls_per_kind}), ops only {ops_median:.3f} s "
        f"({result['ops_only_hook_tool_calls']} calls), ratio {result['ratio']} (target <= 1.3); "
        f"one stub hook tool call {tool_s:.4f} s, ratio without hook tools "
        f"{result['ratio_without_hook_tools']}; CPU ratio {result['cpu_ratio']}; import CPU: "
        f"charm {import_charm_cpu:.3f} s, ops {import_ops_cpu:.3f} s"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
