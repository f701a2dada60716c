"""The restart concern: the `restart` action, run one unit at a time by a coordination engine.

The package, one module per piece:

- here: what every engine shares: the `Engine` interface, `EngineNotReady`, and `run_restart`,
  the critical section (restart the service, check it is healthy, hold for `delay`);
- `restart.policy`: `Restarts`, the object the charm builds: the engines by name, the action, the
  statuses, and the rules the disruptive operations share (docs/one-lock.md);
- `restart.v0`, `restart.rollingops`, `restart.coordinator`: one engine each. An engine decides
  *when* this unit may restart; `run_restart` is *what* happens once it may.

`OperationLock` is the one lock as the other concerns see it (the rollingops engine implements
it): the upgrade step and the NFS remount queue there, behind and ahead of restarts.
"""

from __future__ import annotations

import logging
import pathlib
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import journal
import workload

if TYPE_CHECKING:
    import ops

logger = logging.getLogger(__name__)

JournalDirs = Callable[[], Sequence[pathlib.Path]]
"""Where the operation journal goes besides the unit's own file (the NFS share when mounted)."""


class EngineNotReady(Exception):
    """The engine cannot take a request yet; the message tells the operator what to do."""


class Engine(Protocol):
    """What the charm needs from a restart engine."""

    name: str

    def request(self, delay: int) -> str:
        """Queue a restart of this unit; return a message for the action result."""
        ...

    def in_flight(self) -> bool:
        """Whether any unit of the application has a restart pending or running in this engine."""
        ...

    def quiet(self) -> bool:
        """True when this unit knows from its stored state that nothing is in flight.

        Reads no relation data: statuses of an idle unit ask this first. False means "maybe".
        """
        ...

    def unit_status(self) -> ops.StatusBase | None:
        """This unit's status as far as this engine is concerned, or None when idle."""
        ...


class OperationLock(Protocol):
    """The charm's lock for every disruptive operation, as a concern uses it.

    A concern registers its callback in its `__init__`, then queues requests; the callback runs
    in a later hook, while this unit holds the lock (returning None releases it).
    """

    def register(self, operation: str, callback: Callable[..., Any]) -> None:
        """Run `callback(**kwargs)` for each queued `operation` once this unit holds the lock."""
        ...

    def queue(self, operation: str, **kwargs: object) -> None:
        """Queue `operation`; raise EngineNotReady when it cannot be queued yet."""
        ...

    def queued(self, operation: str) -> bool:
        """Whether this unit has `operation` queued or running."""
        ...

    def grant(self) -> tuple[int | None, str | None]:
        """(fencing token, backend) of the grant the running callback holds."""
        ...


def hold_lock_for(seconds: float) -> None:
    """Keep the lock for the operator-requested `delay` after the service is healthy again."""
    if seconds > 0:
        threading.Event().wait(seconds)


def run_restart(
    unit: str,
    *,
    engine: str,
    delay: int,
    dirs: Sequence[pathlib.Path],
    token: int | None = None,
    backend: str | None = None,
) -> bool:
    """The critical section: restart the service, check it is healthy, hold for `delay` seconds.

    Returns False (and logs why) when the service did not come back; the journal records the
    operation as failed and the charm's status, derived from /health, shows it. The caller releases
    its lock either way: a failed restart must not wedge the other units. `backend` (the lock
    backend that granted this run, when the engine has several) goes into the journal entry;
    `dirs` are the extra journal directories.
    """
    try:
        with journal.operation(unit, "restart", engine, token, dirs=list(dirs)) as entry:
            if backend is not None:
                entry["backend"] = backend
            logger.info("restarting the demo service (engine %s, token %s)", engine, token)
            workload.restart()
            if workload.health() is None:
                raise workload.WorkloadError("the service restarted but does not answer /health")
            hold_lock_for(delay)
    except workload.WorkloadError as error:
        logger.error("restart failed (engine %s): %s", engine, error)
        return False
    return True
