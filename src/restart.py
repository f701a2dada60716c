"""The restart operation, shared by every coordination engine.

An engine decides *when* this unit may restart; `run_restart` is *what* happens once it may: the
critical section. Each engine lives in its own module (restart_v0.py, ...) and implements `Engine`.
"""

from __future__ import annotations

import logging
import pathlib
import threading
from typing import TYPE_CHECKING, Protocol

import journal
import workload

if TYPE_CHECKING:
    import ops

logger = logging.getLogger(__name__)


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

    def unit_status(self) -> ops.StatusBase | None:
        """This unit's status as far as this engine is concerned, or None when idle."""
        ...


def hold_lock_for(seconds: float) -> None:
    """Keep the lock for the operator-requested `delay` after the service is healthy again."""
    if seconds > 0:
        threading.Event().wait(seconds)


def journal_dirs(charm: ops.CharmBase) -> list[pathlib.Path]:
    """Extra journal directories: the charm's `journal_dirs()` (the NFS share when mounted)."""
    provider = getattr(charm, "journal_dirs", None)
    return list(provider()) if provider else []


def run_restart(
    charm: ops.CharmBase,
    *,
    engine: str,
    delay: int,
    token: int | None = None,
    backend: str | None = None,
) -> bool:
    """The critical section: restart the service, check it is healthy, hold for `delay` seconds.

    Returns False (and logs why) when the service did not come back; the journal records the
    operation as failed and the charm's status, derived from /health, shows it. The caller releases
    its lock either way: a failed restart must not wedge the other units. `backend` (the lock
    backend that granted this run, when the engine has several) goes into the journal entry.
    """
    try:
        with journal.operation(
            charm.unit.name, "restart", engine, token, dirs=journal_dirs(charm)
        ) as entry:
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
