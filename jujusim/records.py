"""The simulator's records: what an armed fault, a run in flight and a timer look like.

Also the exceptions its callers catch. No behaviour lives here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ops import testing

from .queues import Item
from .runner import RunResult


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
        """Copy what a run on `state` may write, before it runs."""
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
    action: Callable[[], object]
