"""The per-unit background worker of the etcd backend.

A hook starts it at the end of a dispatch when this unit is etcd-managed, has pending work and no
worker is alive::

    python -m charmlibs.rollingops._worker --base-dir /var/lib/rollingops --unit app/0
        --charm-dir /var/lib/juju/agents/unit-app-0/charm       (one command line)

(``sys.executable -m``, with ``PYTHONPATH`` from the hook's ``sys.path``, in a new session and
without ``JUJU_CONTEXT_ID``.) What it does, with no sleeps and no polling:

1. take ``worker.lock`` (exit at once if another worker has it) and write its PID inside;
2. grant a lease (kept alive by a thread), take a ticket, wait for the lock on an etcd watch;
   while it waits, ``worker-status.json`` says whether the application's pause key held it
   back and with what value (``paused``: a halt reason names the failed units), as each failed
   attempt read it; the hooks show that in the statuses (no etcd read in a hook);
3. run ``juju-exec -u <unit> "JUJU_DISPATCH_PATH=hooks/rollingops_lock_granted
   ROLLINGOPS_LOCK_TOKEN=<token> <charm_dir>/dispatch"`` and wait for it: it returns when the
   hook has run (it queues on the unit's machine lock like any hook);
4. read ``result.json`` for that token: ``retry-hold`` keeps the lock and dispatches again;
   anything else releases it, recording the result in the application's roll record in the
   same etcd transaction (halting the roll after ``halt_after`` failures; both from
   ``work.json``, see ``EtcdLock.release_recorded``). A failed dispatch (non-zero exit, no or
   another token's result, ``not-granted``) releases too; after 3 in a row the worker marks
   itself failed in ``worker-status.json``, dispatches ``rollingops_etcd_failed`` and exits;
5. under ``queue.lock``, exit when ``work.json`` says nothing is pending (revoking the lease and
   dropping ``worker.lock`` before ``queue.lock``), else take a new ticket (back of the line).

SIGTERM (sent by a hook through :func:`._files.stop_worker`) abandons a ``juju-exec`` still
waiting for the hook lock, releases the etcd lock, revokes the lease and exits.

The worker never dies unmarked: any unexpected exception (bad local config, a bug) is logged,
``worker-status.json`` gets ``failed: true`` and ``rollingops_etcd_failed`` is dispatched, exactly
as after repeated etcd failures, so the unit falls back to the peer backend.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import IO, Any

from . import _files
from ._etcd_client import EtcdError
from ._etcd_lock import LEASE_TTL, EtcdLock, Lease
from ._models import RollingOpsError

logger = logging.getLogger("charmlibs.rollingops.worker")

LOCK_GRANTED_EVENT = "rollingops_lock_granted"
ETCD_FAILED_EVENT = "rollingops_etcd_failed"
TOKEN_ENV = "ROLLINGOPS_LOCK_TOKEN"  # noqa: S105 - an env var name, not a secret
TRACE_ENV = "ROLLINGOPS_WORKER_TRACE"
MAX_FAILURES = 3
FAILED_RESULTS = frozenset({"not-granted"})


class WorkerStopped(BaseException):
    """Raised in the main thread by the SIGTERM handler."""


def find_juju_exec() -> str | None:
    """Return ``juju-exec`` from PATH, else ``/usr/bin/juju-exec`` if present, else ``None``."""
    found = shutil.which("juju-exec")
    if found:
        return found
    return "/usr/bin/juju-exec" if os.access("/usr/bin/juju-exec", os.X_OK) else None


def dispatch_argv(
    juju_exec: str, unit: str, charm_dir: str, event: str, token: int | None = None
) -> list[str]:
    """Return the ``juju-exec`` argv that dispatches custom ``event`` on ``unit``."""
    env = f"JUJU_DISPATCH_PATH=hooks/{event}"
    if token is not None:
        env += f" {TOKEN_ENV}={token}"
    return [juju_exec, "-u", unit, f"{env} {charm_dir}/dispatch"]


def worker_argv(base_dir: str, unit: str, charm_dir: str) -> list[str]:
    """Return the argv a hook uses to start this worker (``sys.executable -m ...``)."""
    return [
        sys.executable,
        "-m",
        __name__,
        "--base-dir",
        str(base_dir),
        "--unit",
        unit,
        "--charm-dir",
        str(charm_dir),
    ]


def _on_sigterm(signum: int, frame: object) -> None:
    raise WorkerStopped()


class Worker:
    """One run of the worker; :meth:`run` returns the process exit code."""

    def __init__(
        self,
        base_dir: str,
        unit: str,
        charm_dir: str,
        *,
        lease_ttl: int = LEASE_TTL,
        juju_exec: str | None = None,
    ):
        self.base_dir = base_dir
        self.unit = unit
        self.charm_dir = charm_dir
        self.lease_ttl = lease_ttl
        self.juju_exec = juju_exec
        self.lock: EtcdLock | None = None
        self.lease: Lease | None = None
        self.holding: int | None = None
        self.failures = 0
        self.paused: str | None = None  # the pause key as the last failed acquire read it
        self._lock_file: IO[str] | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._trace_path = os.environ.get(TRACE_ENV)
        self._env = {k: v for k, v in os.environ.items() if k != "JUJU_CONTEXT_ID"}

    # -- entry point --

    def run(self) -> int:
        """Do the work; return 0 on a clean exit, 1 when the worker marked itself failed."""
        self._lock_file = _files.hold_worker_lock(self.base_dir)
        if self._lock_file is None:
            logger.info("another worker holds %s; exiting", _files.WORKER_LOCK_FILE)
            return 0
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return self._run()
        except WorkerStopped:
            logger.info("SIGTERM: stopping")
            return 0
        except Exception as e:  # never die unmarked: mark failed and ask for the fallback
            logger.exception("worker crashed")
            return self._give_up(f"unexpected {e.__class__.__name__}: {e}")
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # no second stop during clean-up
            self._cleanup()
            signal.signal(signal.SIGTERM, previous)

    def _run(self) -> int:
        self.juju_exec = self.juju_exec or find_juju_exec()
        if self.juju_exec is None:
            logger.error("juju-exec not found; the etcd backend cannot dispatch hooks")
            self._write_status(failed=True)
            return 1
        try:
            config = _files.read_config(self.base_dir)
        except RollingOpsError as e:
            return self._give_up(f"unusable local etcd config: {e}")
        if config is None:
            return self._give_up("no local etcd config")
        self.lock = EtcdLock.from_config(config, self.unit)
        self._write_status()
        logger.info("worker for %s started (owner %s)", self.unit, config.owner)
        while True:
            try:
                if not self._step():
                    return 0
            except EtcdError as e:
                self.failures += 1
                logger.error("etcd failure %s/%s: %s", self.failures, MAX_FAILURES, e)
                with contextlib.suppress(EtcdError):
                    self._release()
            if self.failures >= MAX_FAILURES:
                return self._give_up(f"{self.failures} consecutive failures")
            self._write_status()

    # -- one turn --

    def _step(self) -> bool:
        """Serve one grant; return False once there is no more work (the worker has exited)."""
        assert self.lock is not None
        if self.lease is None or self.lease.lost.is_set():
            self.lease = Lease(self.lock.client, self.lease_ttl)
            self.lease.grant()
        slots = self._exit_if_idle()
        if not slots:
            return False
        token = self.lock.acquire(self.lease, slots=slots, on_wait=self._note_pause)
        self.holding, self.paused = token, None
        self._trace("acquired", token)
        self._write_status()
        while True:
            result = self._dispatch(token)
            if result != "retry-hold" or self.lease.lost.is_set():
                break
            self.failures = 0
            logger.info("retry-hold: keeping the lock (token %s)", token)
        self._release(result, recorded=True)
        if result is None or result in FAILED_RESULTS:
            self.failures += 1
            logger.warning("dispatch failed (%s/%s)", self.failures, MAX_FAILURES)
        else:
            self.failures = 0
        return True

    def _note_pause(self, paused: str | None) -> None:
        """Before each wait: record a change of the pause key's value in worker-status.json."""
        if paused != self.paused:
            self.paused = paused
            logger.info("waiting on a paused lock: %s", paused or "no longer paused")
            try:  # only what the statuses show: a failed write must not stop the worker
                self._write_status()
            except (OSError, RollingOpsError) as error:
                logger.warning("worker status not written: %s", error)

    def _exit_if_idle(self) -> int:
        """Under ``queue.lock``: if no work is pending, clean up and drop ``worker.lock``.

        Returns 0 when it exited, else the number of lock slots to compete for (max_parallel,
        as the unit's last hook wrote it: a change applies from the next acquisition).
        """
        with _files.queue_lock(self.base_dir):
            try:
                work = _files.read_work(self.base_dir)
            except RollingOpsError as e:
                logger.error("cannot read the work hint (treated as no work): %s", e)
                work = None
            if work is not None and work.pending > 0:
                return work.slots
            logger.info("no pending work; exiting")
            self.paused = None
            self._revoke_lease()
            self._write_status()
            self._close_lock_file()  # before queue.lock: a racing request sees "no worker"
            return 0

    def _dispatch(self, token: int) -> str | None:
        """Run the lock-granted hook for ``token``; return its result, ``None`` if it failed."""
        assert self.juju_exec is not None
        _files.clear_result(self.base_dir)
        argv = dispatch_argv(self.juju_exec, self.unit, self.charm_dir, LOCK_GRANTED_EVENT, token)
        self._trace("dispatch", token)
        self._child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=self._env)
        code = self._child.wait()
        self._child = None
        self._trace("dispatched", token)
        if code != 0:
            logger.warning("juju-exec exited with %s for token %s", code, token)
            return None
        try:
            result = _files.read_result(self.base_dir)
        except RollingOpsError as e:
            logger.warning("unreadable result for token %s: %s", token, e)
            return None
        if result is None or result.token != token:
            logger.warning("no result for token %s (found %s)", token, result)
            return None
        logger.info("token %s: op %s -> %s", token, result.op, result.result)
        return result.result

    def _release(self, result: str | None = None, *, recorded: bool = False) -> None:
        """Release the slot; `recorded`: after a dispatch, recording `result` (roll record)."""
        if self.holding is None or self.lock is None:
            return
        token, self.holding = self.holding, None
        if recorded:
            work = self._work()
            more = work is not None and work.pending > 0
            halt_after = work.halt_after if work is not None else None
            self.lock.release_recorded(token, result, more_work=more, halt_after=halt_after)
        else:
            self.lock.release(token)
        self._trace("released", token)

    def _work(self) -> _files.WorkHint | None:
        """The work hint as the last hook wrote it (None when absent or unreadable)."""
        try:
            return _files.read_work(self.base_dir)
        except RollingOpsError as e:
            logger.error("cannot read the work hint: %s", e)
            return None

    # -- failure and clean-up --

    def _give_up(self, why: str) -> int:
        """Mark failed, clean up, and ask the charm (``rollingops_etcd_failed``) to fall back."""
        logger.error("worker failed: %s", why)
        self._write_status(failed=True)
        self._cleanup()
        if self.juju_exec is not None:
            # worker.lock is already released, so that hook's stop_worker() finds no worker to
            # wait for and waiting for it here cannot deadlock.
            argv = dispatch_argv(self.juju_exec, self.unit, self.charm_dir, ETCD_FAILED_EVENT)
            code = subprocess.call(argv, stdin=subprocess.DEVNULL, env=self._env)
            if code != 0:
                logger.error("dispatching %s failed with %s", ETCD_FAILED_EVENT, code)
        return 1

    def _cleanup(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.poll() is None:
            logger.info("abandoning juju-exec (pid %s)", child.pid)
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        try:
            self._release()
        except EtcdError as e:
            logger.warning("could not release the lock (it expires with the lease): %s", e)
        self._revoke_lease()
        self.paused = None  # an exited worker waits for nothing (the next one reads anew)
        if self._lock_file is not None:
            with contextlib.suppress(RollingOpsError):
                self._write_status(failed=self._failed_mark())
            self._close_lock_file()
        if self.lock is not None:
            self.lock.close()

    def _failed_mark(self) -> bool:
        with contextlib.suppress(RollingOpsError):
            status = _files.read_worker_status(self.base_dir)
            return bool(status and status.failed)
        return False

    def _revoke_lease(self) -> None:
        lease, self.lease = self.lease, None
        if lease is None:
            return
        try:
            lease.revoke()
        except EtcdError as e:
            logger.warning("could not revoke the lease (it expires by itself): %s", e)

    def _close_lock_file(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _write_status(self, *, failed: bool = False) -> None:
        status = _files.WorkerStatus(
            holding=self.holding,
            failed=failed,
            consecutive_failures=self.failures,
            paused=self.paused,
        )
        _files.write_worker_status(self.base_dir, status)

    def _trace(self, event: str, token: int) -> None:
        """Append a timing record when ``ROLLINGOPS_WORKER_TRACE`` names a file (benchmarks)."""
        if not self._trace_path:
            return
        record: dict[str, Any] = {
            "unit": self.unit,
            "event": event,
            "token": token,
            "t": time.monotonic(),
        }
        with open(self._trace_path, "a") as f:
            f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one worker."""
    parser = argparse.ArgumentParser(description="rolling-ops etcd worker")
    parser.add_argument("--base-dir", required=True)
    parser.add_argument("--unit", required=True)
    parser.add_argument("--charm-dir", required=True)
    parser.add_argument("--lease-ttl", type=int, default=LEASE_TTL, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(levelname)s worker[{os.getpid()}] %(message)s",
    )
    return Worker(args.base_dir, args.unit, args.charm_dir, lease_ttl=args.lease_ttl).run()


if __name__ == "__main__":
    sys.exit(main())
