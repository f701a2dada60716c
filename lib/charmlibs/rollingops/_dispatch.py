"""Wake a unit up with a custom event: a detached `juju-exec` that dispatches it.

`juju-exec -u <unit> "JUJU_DISPATCH_PATH=hooks/<event> [VAR=value ...] <charm_dir>/dispatch"` runs
a full dispatch of `<event>` on the unit. It waits for the unit's machine hook lock, so a wake-up
spawned by a hook runs right after that hook has finished: no sleep is needed. The argv shape is
fixed (the project's simulator intercepts exactly this call).
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import subprocess

logger = logging.getLogger(__name__)

_FALLBACK_JUJU_EXEC = "/usr/bin/juju-exec"
_warned_missing = False


def juju_exec_path() -> str | None:
    """`juju-exec` on PATH, else /usr/bin/juju-exec if it exists, else None."""
    found = shutil.which("juju-exec")
    if found:
        return found
    return _FALLBACK_JUJU_EXEC if os.path.exists(_FALLBACK_JUJU_EXEC) else None


def dispatch_argv(
    juju_exec: str, unit: str, event: str, charm_dir: str, env: dict[str, str] | None = None
) -> list[str]:
    """The juju-exec command line that dispatches `event` on `unit`."""
    assignments = " ".join(f"{key}={value}" for key, value in (env or {}).items())
    command = f"JUJU_DISPATCH_PATH=hooks/{event} "
    if assignments:
        command += assignments + " "
    return [juju_exec, "-u", unit, command + f"{charm_dir}/dispatch"]


def spawn_wakeup(unit: str, event: str, charm_dir: str, log_dir: pathlib.Path) -> bool:
    """Start a detached juju-exec dispatching `event` on `unit`; do not wait for it.

    Returns False (after logging once per process) when juju-exec is absent or cannot start: the
    caller then relies on its other triggers (relation-changed, update-status).
    """
    global _warned_missing
    juju_exec = juju_exec_path()
    if juju_exec is None:
        if not _warned_missing:
            logger.warning("juju-exec not found: %s wake-ups rely on other hooks", event)
            _warned_missing = True
        return False
    env = {key: value for key, value in os.environ.items() if key != "JUJU_CONTEXT_ID"}
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "rollingops-wakeup.log", "a") as log:
            subprocess.Popen(
                dispatch_argv(juju_exec, unit, event, charm_dir),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
    except OSError as error:
        logger.warning("could not spawn the %s wake-up: %s", event, error)
        return False
    return True
