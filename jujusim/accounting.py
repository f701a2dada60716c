"""Hook accounting: what a coordination protocol costs in hooks and in logical time.

- hooks per unit, per event kind, total, and how many made no relation write;
- handoffs: for each consecutive pair of critical sections, the causal chain of hooks from the
  previous holder's exit (the commit of the hook that ran it) to the next holder's entry hook,
  counted in hooks (the entry hook included; a peer-relation lock needs at least 2: the leader
  sees the release, the next holder sees the grant) and in ticks;
- makespan from the first request to the last exit, against the lower bound ceil(N/k)*op (op =
  the mean critical-section length, k the holders allowed at once): at most k sections overlap,
  and a handoff may cost no hook at all (an etcd worker dispatches the next holder's hook
  directly). A "handoff" pairs consecutive sections in start order; with k > 1 its ticks may be
  negative (the next section began before the previous one ended).
"""

from __future__ import annotations

import collections
import itertools
import statistics
from typing import Any

from .invariants import Recorder
from .simulator import Simulator

MAX_CHAIN = 200


def causal_hooks(sim: Simulator, from_seq: int, to_seq: int) -> int | None:
    """Hooks on the causal chain from run `from_seq` (excluded) to run `to_seq` (included)."""
    hops, seq = 0, to_seq
    while seq and hops < MAX_CHAIN:
        if seq == from_seq:
            return hops
        run = sim.runs.get(seq)
        if run is None:
            return None
        hops += 1
        seq = run.item.parent
    return None


def account(sim: Simulator, recorder: Recorder, since: int = 0) -> dict[str, Any]:
    """The accounting artefact of one schedule (JSON-ready); counts runs with seq > `since`."""
    runs = [r for r in sim.runs.values() if r.seq > since]
    per_kind = collections.Counter(r.item.event for r in runs)
    served = sorted(
        (i for i in recorder.intervals if i.committed and i.end is not None),
        key=lambda i: (i.start, i.unit),
    )
    handoffs = []
    for before, after in itertools.pairwise(served):
        assert before.end is not None
        handoffs.append(
            {
                "from": before.unit,
                "to": after.unit,
                "hooks": causal_hooks(sim, before.hook, after.hook),
                "ticks": after.start - before.end,
            }
        )
    first_request = min((t for _, _, t in recorder.requests), default=0)
    last_exit = max((i.end for i in served if i.end is not None), default=first_request)
    n = len(served)
    op = statistics.mean((i.end or 0) - i.start for i in served) if served else 0
    lower = -(-n // recorder.k) * op
    makespan = last_exit - first_request
    hook_counts = dict(sorted(collections.Counter(r.unit for r in runs).items()))
    chain = [h["hooks"] for h in handoffs if h["hooks"] is not None]
    return {
        "hooks_total": len(runs),
        "hooks_per_unit": hook_counts,
        "hooks_per_unit_max": max(hook_counts.values(), default=0),
        "hooks_per_kind": dict(sorted(per_kind.items())),
        "hooks_without_write": sum(1 for r in runs if not r.wrote),
        "handoffs": handoffs,
        "handoff_hooks_p50": statistics.median(chain) if chain else None,
        "handoff_ticks_p50": statistics.median(h["ticks"] for h in handoffs) if handoffs else None,
        "operations": n,
        "op_ticks_mean": op,
        "makespan": makespan,
        "lower_bound": lower,
        "makespan_ratio": round(makespan / lower, 3) if lower else None,
    }
