"""Run real rolling-ops worker processes against a real etcd, with a stand-in ``juju-exec``.

What is real: etcd (mTLS), the worker processes (``sys.executable -m
charmlibs.rollingops._worker`` from a copy of the package that lives under ``<tree>/lib`` only),
their leases, tickets, watches and lock. What stands in: ``juju-exec`` (there is no Juju agent
here). The stand-in is a small script on the workers' PATH that does what the agent plus the
``rollingops_lock_granted`` hook would do:

- serialise dispatches of one unit on ``<charm_dir>/machine.lock`` (the machine hook lock);
- run the fence check against etcd (``EtcdLock.holds(token)``) and append a record
  ``{"unit", "event", "token", "fenced", "start", "end"}`` to ``<charm_dir>/dispatches.jsonl``;
- consume one op: the next entry of ``results`` in ``<charm_dir>/fake-hook.json`` (default
  ``release``), decrement ``work.json``'s ``pending`` unless the result keeps the op
  (``retry-*``), and write ``result.json`` for the token, exactly as the hook's commit would;
- optionally exit non-zero (``"exit_code"``) or block (``"block": true``) to model failures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys

from charmlibs.rollingops import _files

from tests.functional.etcd_server import EtcdServer

REPO = pathlib.Path(__file__).resolve().parents[2]

FAKE_JUJU_EXEC = r'''#!{python}
"""Stand-in for juju-exec: see tests/functional/worker_harness.py."""
import fcntl, json, os, pathlib, sys, threading, time

args = sys.argv[1:]
assert args[0] == "-u", args
unit, command = args[1], args[2]
words = command.split()
env = dict(w.split("=", 1) for w in words[:-1])
charm_dir = pathlib.Path(words[-1]).parent
settings = json.loads((charm_dir / "fake-hook.json").read_text())
sys.path[:0] = settings["sys_path"]
from charmlibs.rollingops import _files
from charmlibs.rollingops._etcd_lock import EtcdLock

event = env["JUJU_DISPATCH_PATH"].split("/", 1)[1]
with open(charm_dir / "machine.lock", "a") as machine_lock:
    fcntl.flock(machine_lock, fcntl.LOCK_EX)
    start = time.monotonic()
    record = {{"unit": unit, "event": event, "start": start}}
    if event == "rollingops_lock_granted":
        token = int(env["ROLLINGOPS_LOCK_TOKEN"])
        record["token"] = token
        base_dir = settings["base_dir"]
        config = _files.read_config(base_dir)
        lock = EtcdLock.from_config(config, unit)
        fenced = lock.holds(token)
        lock.close()
        record["fenced"] = fenced
        if settings.get("block"):
            record["end"] = None
            with open(charm_dir / "dispatches.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            with open(charm_dir / "started.fifo", "w") as fifo:  # wakes the test
                fifo.write("started\n")
            threading.Event().wait()  # hold the lock until killed
        log = charm_dir / "dispatches.jsonl"
        n = len(log.read_text().splitlines()) if log.exists() else 0
        results = settings.get("results", [])
        result = results[n] if n < len(results) else "release"
        if not fenced:
            result = "not-granted"
        if settings.get("exit_code"):
            record["end"] = time.monotonic()
            record["result"] = "exit"
            with open(charm_dir / "dispatches.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            sys.exit(settings["exit_code"])
        with _files.queue_lock(base_dir):
            work = _files.read_work(base_dir)
            head = work.head if work else None
            if result in ("release", "dropped") and work is not None and work.pending > 0:
                _files.write_work(
                    base_dir, work.pending - 1, (head or 0) + 1, work.slots, work.halt_after
                )
        _files.write_result(base_dir, token, head, result)
        record["result"] = result
    record["end"] = time.monotonic()
    with open(charm_dir / "dispatches.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
'''

SITECUSTOMIZE_NO_SLEEP = '''"""Worker processes: time.sleep raises (the library never sleeps)."""
import time


def _no_sleep(seconds):
    raise AssertionError(f"time.sleep({seconds}) called on the happy path")


time.sleep = _no_sleep
'''


def make_lib_only_tree(root: pathlib.Path) -> pathlib.Path:
    """Copy the package to ``root/tree/lib/charmlibs/rollingops``; return ``root/tree/lib``."""
    lib = root / "tree" / "lib"
    if not lib.exists():
        shutil.copytree(
            REPO / "lib" / "charmlibs" / "rollingops",
            lib / "charmlibs" / "rollingops",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return lib


def install_fake_juju_exec(root: pathlib.Path) -> pathlib.Path:
    """Write the stand-in ``juju-exec`` into ``root/bin``; return that directory."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "juju-exec"
    script.write_text(FAKE_JUJU_EXEC.format(python=sys.executable))
    script.chmod(0o755)
    return bin_dir


@dataclasses.dataclass
class FakeUnit:
    """One unit's directories and its worker process."""

    name: str
    base_dir: pathlib.Path
    charm_dir: pathlib.Path
    owner: str
    process: subprocess.Popen[bytes] | None = None

    def dispatches(self) -> list[dict]:
        """Records of the stand-in hook runs of this unit, in order."""
        path = self.charm_dir / "dispatches.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def wait_blocked_hook(self, timeout: float = 60) -> None:
        """Block until this unit's stand-in hook (``block=True``) runs; ``TimeoutError`` if not."""
        fd = os.open(self.charm_dir / "started.fifo", os.O_RDONLY | os.O_NONBLOCK)
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
            if not readable:
                raise TimeoutError("the stand-in hook did not start")
        finally:
            os.close(fd)

    def set_work(self, pending: int, halt_after: int | None = None) -> None:
        """Write the work hint as the hook side would (under queue.lock)."""
        with _files.queue_lock(self.base_dir):
            _files.write_work(self.base_dir, pending, 1 if pending else None, 1, halt_after)


class WorkerHarness:
    """Units sharing one lock prefix on one etcd; start their workers as real processes."""

    def __init__(self, root: pathlib.Path, server: EtcdServer, prefix: str):
        self.root = root
        self.server = server
        self.prefix = prefix
        self.lib = make_lib_only_tree(root)
        self.bin_dir = install_fake_juju_exec(root)
        self.no_sleep_dir = root / "no-sleep"
        self.no_sleep_dir.mkdir(exist_ok=True)
        (self.no_sleep_dir / "sitecustomize.py").write_text(SITECUSTOMIZE_NO_SLEEP)
        self.trace = root / "trace.jsonl"
        self.units: list[FakeUnit] = []

    def add_unit(
        self, name: str, *, pending: int, halt_after: int | None = None, **hook_settings: object
    ) -> FakeUnit:
        """Create a unit with local etcd config and ``pending`` ops (``halt_after``: work.json).

        ``hook_settings`` go to the stand-in hook (``results``, ``exit_code``, ``block``).
        """
        slug = name.replace("/", "-")
        unit = FakeUnit(
            name=name,
            base_dir=self.root / slug / "base",
            charm_dir=self.root / slug / "charm",
            owner=f"model-uuid.{slug}",
        )
        unit.charm_dir.mkdir(parents=True)
        os.mkfifo(unit.charm_dir / "started.fifo")
        server = self.server
        _files.write_config(
            unit.base_dir,
            endpoints=[server.endpoint],
            prefix=self.prefix,
            owner=unit.owner,
            server_ca_pem=pathlib.Path(server.server_ca).read_text(),
            cert_pem=pathlib.Path(server.client_cert).read_text(),
            key_pem=pathlib.Path(server.client_key).read_text(),
        )
        unit.set_work(pending, halt_after)
        settings = {
            "base_dir": str(unit.base_dir),
            "sys_path": [str(self.lib)],
            **hook_settings,
        }
        (unit.charm_dir / "fake-hook.json").write_text(json.dumps(settings))
        self.units.append(unit)
        return unit

    def start_worker(
        self, unit: FakeUnit, *, lease_ttl: int | None = None, forbid_sleep: bool = True
    ) -> subprocess.Popen[bytes]:
        """Launch the worker as the hook does: ``sys.executable -m``, lib-only PYTHONPATH."""
        python_path = [str(self.lib)]
        if forbid_sleep:
            python_path.insert(0, str(self.no_sleep_dir))
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "JUJU_CONTEXT_ID")},
            "PYTHONPATH": os.pathsep.join(python_path),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "ROLLINGOPS_WORKER_TRACE": str(self.trace),
        }
        argv = [
            sys.executable,
            "-m",
            "charmlibs.rollingops._worker",
            "--base-dir",
            str(unit.base_dir),
            "--unit",
            unit.name,
            "--charm-dir",
            str(unit.charm_dir),
        ]
        if lease_ttl is not None:
            argv += ["--lease-ttl", str(lease_ttl)]
        log = open(unit.base_dir / "worker.log", "ab")  # noqa: SIM115 - owned by the process
        unit.process = subprocess.Popen(
            argv,
            cwd=self.root,  # not the repository: nothing importable from the working directory
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return unit.process

    def trace_records(self) -> list[dict]:
        """The workers' timing records (acquired, dispatch, dispatched, released)."""
        if not self.trace.exists():
            return []
        return [json.loads(line) for line in self.trace.read_text().splitlines() if line]

    def stop_all(self) -> None:
        """Kill every worker still running (its whole session, stand-in hooks included)."""
        for unit in self.units:
            process = unit.process
            if process is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
