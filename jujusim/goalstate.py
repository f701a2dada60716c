"""The simulator's stand-in for the `goal-state` hook tool (rule: goal-state).

`goal-state --format=json` prints the units of the calling unit's application that Juju still
has, each with a status: the workload status, `error`, or `dying` once its removal has begun;
a unit whose removal has completed is absent. During a run we intercept `subprocess.Popen`
calls whose argv[0] is named goal-state and answer from the truth as of the run's start (the
run's view). The `relations` part is left empty: nothing here reads it. A fake `goal-state` on
PATH fails loudly if anything runs it, since that would mean a call escaped the interception.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Any

from .jujuexec import _FakeProcess

_FAKE_DIR = pathlib.Path(tempfile.mkdtemp(prefix="sim-goal-state-"))
atexit.register(shutil.rmtree, _FAKE_DIR, ignore_errors=True)
_FAKE = _FAKE_DIR / "goal-state"
_FAKE.write_text(
    "#!/bin/sh\n"
    "echo 'goal-state (simulator stand-in): this call escaped interception' >&2\n"
    "exit 97\n"
)
_FAKE.chmod(0o755)

GOAL_STATUSES = ("allocating", "active", "waiting", "blocked", "error", "dying")
SINCE = "2026-01-01T00:00:00Z"


def answer(units: dict[str, str]) -> str:
    """The JSON `goal-state --format=json` prints for `units` (name -> goal status)."""
    body: dict[str, Any] = {
        "units": {name: {"status": status, "since": SINCE} for name, status in units.items()},
        "relations": {},
    }
    return json.dumps(body)


class _Answered(_FakeProcess):
    """A finished `goal-state` process: its output is the answer given when it was started."""

    returncode = 0

    def __init__(self, argv: list[str], stdout: str, text: bool):
        super().__init__(argv)
        self._out: str | bytes = stdout if text else stdout.encode()

    def communicate(self, input=None, timeout=None):
        return (self._out, "" if isinstance(self._out, str) else b"")


@contextlib.contextmanager
def intercept(units: dict[str, str]) -> Iterator[None]:
    """Answer `goal-state` calls with `units` (name -> goal status) for the block's duration."""
    real_popen = subprocess.Popen
    path = os.environ.get("PATH", "")
    stdout = answer(units)

    def popen(args, *rest, **kwargs):
        argv = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
        if argv and os.path.basename(argv[0]) == "goal-state":
            text = bool(
                kwargs.get("text") or kwargs.get("universal_newlines") or kwargs.get("encoding")
            )
            return _Answered(argv, stdout, text)
        return real_popen(args, *rest, **kwargs)

    subprocess.Popen = popen  # type: ignore[assignment, misc]
    os.environ["PATH"] = f"{_FAKE_DIR}{os.pathsep}{path}"
    try:
        yield
    finally:
        subprocess.Popen = real_popen  # type: ignore[misc]
        os.environ["PATH"] = path
