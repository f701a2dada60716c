"""The simulator's stand-in for `juju-exec` (rules: custom events through juju-exec; no juju-exec).

A library wakes its unit later by spawning, detached,

    subprocess.Popen([juju_exec, "-u", unit,
                      "[VAR=value ...] JUJU_DISPATCH_PATH=hooks/<event> <charm dir>/dispatch"])

During a run we put a fake `juju-exec` on PATH (so `shutil.which("juju-exec")` finds one) and
intercept `subprocess.Popen` calls whose argv[0] is named juju-exec: the request (unit, event, env
assignments) is recorded and the simulator queues the custom event when the spawning hook commits.
Every other Popen call goes to the real one. The fake executable itself fails loudly if anything
ever runs it, since that would mean a call escaped the interception.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pathlib
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator

_FAKE_DIR = pathlib.Path(tempfile.mkdtemp(prefix="sim-juju-exec-"))
atexit.register(shutil.rmtree, _FAKE_DIR, ignore_errors=True)
_FAKE = _FAKE_DIR / "juju-exec"
_FAKE.write_text(
    "#!/bin/sh\n"
    "echo 'juju-exec (simulator stand-in): this call escaped interception' >&2\n"
    "exit 97\n"
)
_FAKE.chmod(0o755)

Record = Callable[[str, str, dict[str, str]], None]


class MalformedJujuExec(Exception):
    """A juju-exec argv the simulator cannot turn into a dispatch (a library bug)."""


def parse(argv: list[str]) -> tuple[str, str, dict[str, str]]:
    """Turn a juju-exec argv into (unit, event, env assignments).

    ['juju-exec', '-u', 'app/0', 'T=7 JUJU_DISPATCH_PATH=hooks/ev /c/dispatch'] -> ('app/0', 'ev',
    {'T': '7'}).
    """
    args = [str(a) for a in argv[1:]]
    if "-u" not in args or args.index("-u") + 1 >= len(args):
        raise MalformedJujuExec(f"no -u <unit> in {argv!r}")
    at = args.index("-u")
    unit = args[at + 1]
    words = shlex.split(" ".join(args[at + 2 :]))
    env: dict[str, str] = {}
    event = None
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key.replace("_", "").isalnum():
            break  # the command itself (…/dispatch)
        if key == "JUJU_DISPATCH_PATH":
            if not value.startswith("hooks/"):
                raise MalformedJujuExec(f"JUJU_DISPATCH_PATH must be hooks/<event>: {argv!r}")
            event = value[len("hooks/") :].replace("-", "_")
        else:
            env[key] = value
    if not event:
        raise MalformedJujuExec(f"no JUJU_DISPATCH_PATH=hooks/<event> in {argv!r}")
    return unit, event, env


class _FakeProcess:
    """What the caller gets back: a process that has been started (and, later, succeeded)."""

    pid = 0
    returncode: int | None = None
    stdin = stdout = stderr = None

    def __init__(self, argv: list[str]):
        self.args = argv

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self.returncode = 0
        return 0

    def communicate(self, input=None, timeout=None):
        self.returncode = 0
        return (None, None)

    def kill(self) -> None:
        pass

    terminate = kill

    def __enter__(self) -> _FakeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@contextlib.contextmanager
def intercept(record: Record) -> Iterator[None]:
    """Route juju-exec spawns to `record(unit, event, env)` for the duration of the block."""
    real_popen = subprocess.Popen
    path = os.environ.get("PATH", "")

    def popen(args, *rest, **kwargs):
        argv = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
        if argv and os.path.basename(argv[0]) == "juju-exec":
            record(*parse(argv))
            return _FakeProcess(argv)
        return real_popen(args, *rest, **kwargs)

    subprocess.Popen = popen  # type: ignore[assignment, misc]
    os.environ["PATH"] = f"{_FAKE_DIR}{os.pathsep}{path}"
    try:
        yield
    finally:
        subprocess.Popen = real_popen  # type: ignore[misc]
        os.environ["PATH"] = path
