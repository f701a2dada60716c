"""Local files of the etcd backend, shared by the hook side and the background worker.

Everything lives under ``<base_dir>/etcd/``; every JSON file carries ``"version": 1``.

- ``config.json``: ``{"version": 1, "endpoints": ["10.0.0.1:2379"], "prefix": P, "owner": O,
  "server_ca": <path>, "cert": <path>, "key": <path>}``. The PEM files sit next to it
  (``server-ca.pem``, ``client-cert.pem``, ``client-key.pem``; the key has mode 0600).
  Written by the hook side from the provider's answer once it passed validation; endpoints are
  checked again on every read (`_contract.check_endpoints`), so a bad one never reaches a client.
- ``provider-problem.json``: ``{"version": 1, "problem": "..."}``, why the provider's answer
  was refused (absent when it was accepted or has not come yet); ``state`` reports it.
- ``work.json``: ``{"version": 1, "pending": n, "head": op_id | null}``, the work hint the hook
  writes after every change of this unit's queue, under ``queue.lock``.
- ``result.json``: ``{"version": 1, "token": t, "op": op_id | null, "result": "release" | ...}``,
  what the ``rollingops_lock_granted`` hook did with grant ``t``.
- ``worker-status.json``: ``{"version": 1, "holding": t | null, "failed": false,
  "consecutive_failures": 0, "paused": "..." | null}``, kept by the worker, read by ``state``
  and ``paused_reason`` (``paused``: the etcd pause key as the waiting worker last saw it).
- ``pause-mark.json``: ``{"version": 1}``, present while etcd may hold the application's pause
  key although the peer app databag may not say so (a put whose hook then failed, or a new
  leader's doubt about what its predecessor left); see ``_controls``.
- ``worker.lock``: held with ``flock`` by the live worker for its whole life; holds its PID.
- ``queue.lock``: serialises "hook writes work.json" against "worker decides to exit".

Writers replace files atomically (temporary file in the same directory, fsync, rename), so a
reader never sees half a file. Readers return ``None`` for a missing file and raise
:class:`RollingOpsDecodingError` for a file that does not parse or has an unknown version (the
caller reports not ready and never overwrites it).

Liveness without PIDs in relation data::

    if not worker_alive(base_dir):
        ...start the worker...
    stop_worker(base_dir, timeout=10)   # SIGTERM only while the worker holds its flock

The exit race is closed by ``queue.lock``: the hook writes ``work.json`` under it and only then
checks :func:`worker_alive`; the worker decides to exit under it and releases ``worker.lock``
before ``queue.lock``. A request racing with an exiting worker always sees "no worker" and
starts one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import pathlib
import select
import signal
import tempfile
from collections.abc import Generator
from typing import IO, Any

from ._contract import check_endpoints
from ._models import RollingOpsDecodingError, RollingOpsFileSystemError, is_json_object

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WORK_FILE = "work.json"
RESULT_FILE = "result.json"
STATUS_FILE = "worker-status.json"
PROBLEM_FILE = "provider-problem.json"
PAUSE_MARK_FILE = "pause-mark.json"
WORKER_LOCK_FILE = "worker.lock"
QUEUE_LOCK_FILE = "queue.lock"
SERVER_CA_FILE = "server-ca.pem"
CLIENT_CERT_FILE = "client-cert.pem"
CLIENT_KEY_FILE = "client-key.pem"

# Results a rollingops_lock_granted hook may report in result.json.
RESULTS = frozenset(
    {
        "release",
        "retry-release",
        "retry-hold",
        "dropped",
        "missing-callback",
        "no-op",
        "not-granted",
    }
)


def etcd_dir(base_dir: str | os.PathLike[str]) -> pathlib.Path:
    """Return ``<base_dir>/etcd`` (not created)."""
    return pathlib.Path(base_dir) / "etcd"


def _ensure_dir(base_dir: str | os.PathLike[str]) -> pathlib.Path:
    path = etcd_dir(base_dir)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise RollingOpsFileSystemError(f"cannot create {path}: {e}") from e
    return path


def atomic_write(path: pathlib.Path, data: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (temp file in the same dir, fsync, rename)."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise RollingOpsFileSystemError(f"cannot write {path}: {e}") from e


def write_json(path: pathlib.Path, data: dict[str, Any], mode: int = 0o644) -> None:
    """Write ``{"version": 1, **data}`` to ``path`` atomically."""
    atomic_write(path, json.dumps({"version": FORMAT_VERSION, **data}, sort_keys=True), mode)


def read_json(path: pathlib.Path) -> dict[str, Any] | None:
    """Read a version-1 JSON file; ``None`` if missing, :class:`RollingOpsDecodingError` if bad."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RollingOpsFileSystemError(f"cannot read {path}: {e}") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RollingOpsDecodingError(f"{path} is not valid JSON: {e}") from e
    if not is_json_object(data):
        raise RollingOpsDecodingError(f"{path} does not hold a JSON object")
    if data.get("version") != FORMAT_VERSION:
        raise RollingOpsDecodingError(f"{path} has unknown format version {data.get('version')!r}")
    return data


def remove(path: pathlib.Path) -> None:
    """Delete ``path`` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _require(data: dict[str, Any], path: pathlib.Path, key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RollingOpsDecodingError(f"{path}: field {key!r} is missing or malformed")
    return value


# --- config.json ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EtcdConfig:
    """Where and how this unit talks to etcd (``config.json`` plus the PEM files)."""

    endpoints: tuple[str, ...]  # "host:port"
    prefix: str  # P, ends with "/"
    owner: str  # O = "<model-uuid>.<unit name with / replaced by ->"
    server_ca: str  # path of the server CA PEM
    cert: str  # path of the client certificate PEM
    key: str  # path of the client key PEM (mode 0600)


def write_config(
    base_dir: str | os.PathLike[str],
    *,
    endpoints: list[str] | tuple[str, ...],
    prefix: str,
    owner: str,
    server_ca_pem: str,
    cert_pem: str,
    key_pem: str,
) -> EtcdConfig:
    """Write the PEM files and ``config.json`` (key 0600); return the resulting config.

    Raises RollingOpsDecodingError (`_contract.ProviderDataError`) for a bad endpoint.
    """
    endpoints = check_endpoints(list(endpoints))
    if not prefix.endswith("/"):
        raise ValueError(f"prefix must end with '/': {prefix!r}")
    path = _ensure_dir(base_dir)
    atomic_write(path / SERVER_CA_FILE, server_ca_pem)
    atomic_write(path / CLIENT_CERT_FILE, cert_pem)
    atomic_write(path / CLIENT_KEY_FILE, key_pem, mode=0o600)
    config = EtcdConfig(
        endpoints=tuple(endpoints),
        prefix=prefix,
        owner=owner,
        server_ca=str(path / SERVER_CA_FILE),
        cert=str(path / CLIENT_CERT_FILE),
        key=str(path / CLIENT_KEY_FILE),
    )
    data = dataclasses.asdict(config)
    data["endpoints"] = list(config.endpoints)
    write_json(path / CONFIG_FILE, data)
    return config


def read_config(base_dir: str | os.PathLike[str]) -> EtcdConfig | None:
    """Return the local etcd config; ``None`` if absent; raise if malformed or a PEM is gone."""
    path = etcd_dir(base_dir) / CONFIG_FILE
    data = read_json(path)
    if data is None:
        return None
    endpoints = _require(data, path, "endpoints", list)
    try:
        endpoints = check_endpoints(endpoints)
    except RollingOpsDecodingError as error:
        raise RollingOpsDecodingError(f"{path}: {error}") from None
    config = EtcdConfig(
        endpoints=tuple(endpoints),
        prefix=_require(data, path, "prefix", str),
        owner=_require(data, path, "owner", str),
        server_ca=_require(data, path, "server_ca", str),
        cert=_require(data, path, "cert", str),
        key=_require(data, path, "key", str),
    )
    for pem in (config.server_ca, config.cert, config.key):
        if not os.path.isfile(pem):
            raise RollingOpsDecodingError(f"{path}: {pem} does not exist")
    return config


def delete_config(base_dir: str | os.PathLike[str]) -> None:
    """Remove ``config.json`` and the PEM files (relation broken, answer gone or refused)."""
    path = etcd_dir(base_dir)
    for name in (CONFIG_FILE, SERVER_CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE):
        remove(path / name)


def write_problem(base_dir: str | os.PathLike[str], problem: str | None) -> None:
    """Record why the provider's answer was refused; ``None`` removes the record."""
    if problem is None:
        remove(etcd_dir(base_dir) / PROBLEM_FILE)
        return
    write_json(_ensure_dir(base_dir) / PROBLEM_FILE, {"problem": problem})


def read_problem(base_dir: str | os.PathLike[str]) -> str | None:
    """Why the provider's answer was refused, ``None`` when no refusal is recorded."""
    path = etcd_dir(base_dir) / PROBLEM_FILE
    data = read_json(path)
    return None if data is None else _require(data, path, "problem", str)


def mark_pause(base_dir: str | os.PathLike[str]) -> None:
    """Record that etcd may hold our pause key (written before the key is put)."""
    write_json(_ensure_dir(base_dir) / PAUSE_MARK_FILE, {})


def pause_marked(base_dir: str | os.PathLike[str]) -> bool:
    """Whether ``pause-mark.json`` exists (one stat; its content is not read)."""
    return (etcd_dir(base_dir) / PAUSE_MARK_FILE).exists()


def clear_pause_mark(base_dir: str | os.PathLike[str]) -> None:
    """Forget the pause mark (the key was deleted, or another unit is in charge of it)."""
    remove(etcd_dir(base_dir) / PAUSE_MARK_FILE)


# --- work.json --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorkHint:
    """How much work this unit's queue holds (``work.json``)."""

    pending: int
    head: int | None
    slots: int = 1  # max_parallel: how many slots of the etcd semaphore the worker may take
    halt_after: int | None = None  # halt_after_failures, for the roll record (None: never)


@contextlib.contextmanager
def queue_lock(base_dir: str | os.PathLike[str]) -> Generator[None, None, None]:
    """Hold ``queue.lock`` (blocking ``flock``: the holder keeps it for a few file operations)."""
    path = _ensure_dir(base_dir) / QUEUE_LOCK_FILE
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_work(
    base_dir: str | os.PathLike[str],
    pending: int,
    head: int | None,
    slots: int = 1,
    halt_after: int | None = None,
) -> None:
    """Write ``work.json``; call it while holding :func:`queue_lock`."""
    data = {"pending": pending, "head": head, "slots": slots, "halt_after": halt_after}
    write_json(etcd_dir(base_dir) / WORK_FILE, data)


def read_work(base_dir: str | os.PathLike[str]) -> WorkHint | None:
    """Return the work hint, ``None`` if absent."""
    path = etcd_dir(base_dir) / WORK_FILE
    data = read_json(path)
    if data is None:
        return None
    pending = _require(data, path, "pending", int)
    head = data.get("head")
    if head is not None and (not isinstance(head, int) or isinstance(head, bool)):
        raise RollingOpsDecodingError(f"{path}: field 'head' is malformed")
    slots = data.get("slots", 1)  # absent in a file of an older version: one slot
    if not isinstance(slots, int) or isinstance(slots, bool) or slots < 1:
        raise RollingOpsDecodingError(f"{path}: field 'slots' is malformed")
    halt_after = data.get("halt_after")  # absent in a file of an older version: never
    if halt_after is not None and (
        not isinstance(halt_after, int) or isinstance(halt_after, bool) or halt_after < 1
    ):
        raise RollingOpsDecodingError(f"{path}: field 'halt_after' is malformed")
    return WorkHint(pending=pending, head=head, slots=slots, halt_after=halt_after)


# --- result.json ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LockResult:
    """What the ``rollingops_lock_granted`` hook did with grant ``token`` (``result.json``)."""

    token: int
    op: int | None
    result: str  # one of RESULTS


def write_result(
    base_dir: str | os.PathLike[str], token: int, op: int | None, result: str
) -> None:
    """Write ``result.json`` (hook side, from a framework ``commit`` handler)."""
    if result not in RESULTS:
        raise ValueError(f"unknown result {result!r}")
    write_json(_ensure_dir(base_dir) / RESULT_FILE, {"token": token, "op": op, "result": result})


def read_result(base_dir: str | os.PathLike[str]) -> LockResult | None:
    """Return the last hook result, ``None`` if absent."""
    path = etcd_dir(base_dir) / RESULT_FILE
    data = read_json(path)
    if data is None:
        return None
    op = data.get("op")
    if op is not None and (not isinstance(op, int) or isinstance(op, bool)):
        raise RollingOpsDecodingError(f"{path}: field 'op' is malformed")
    result = _require(data, path, "result", str)
    if result not in RESULTS:
        raise RollingOpsDecodingError(f"{path}: unknown result {result!r}")
    return LockResult(token=_require(data, path, "token", int), op=op, result=result)


def clear_result(base_dir: str | os.PathLike[str]) -> None:
    """Delete ``result.json`` (the worker does it before each dispatch)."""
    remove(etcd_dir(base_dir) / RESULT_FILE)


# --- worker-status.json -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorkerStatus:
    """The worker's own view (``worker-status.json``).

    ``paused``: the value of the application's etcd pause key (the leader's ``"paused"`` or a
    halt reason) as the worker's last failed acquire attempt read it; None once it acquires or
    an attempt finds the key gone (the key's deletion wakes every waiter, so a `resume` clears
    it within one transaction). Optional in the file (absent: None).
    """

    holding: int | None = None
    failed: bool = False
    consecutive_failures: int = 0
    paused: str | None = None


def write_worker_status(base_dir: str | os.PathLike[str], status: WorkerStatus) -> None:
    """Write ``worker-status.json`` (worker side)."""
    write_json(_ensure_dir(base_dir) / STATUS_FILE, dataclasses.asdict(status))


def read_worker_status(base_dir: str | os.PathLike[str]) -> WorkerStatus | None:
    """Return the worker status, ``None`` if absent."""
    path = etcd_dir(base_dir) / STATUS_FILE
    data = read_json(path)
    if data is None:
        return None
    holding = data.get("holding")
    if holding is not None and (not isinstance(holding, int) or isinstance(holding, bool)):
        raise RollingOpsDecodingError(f"{path}: field 'holding' is malformed")
    paused = data.get("paused")
    if paused is not None and not isinstance(paused, str):
        raise RollingOpsDecodingError(f"{path}: field 'paused' is malformed")
    return WorkerStatus(
        holding=holding,
        failed=_require(data, path, "failed", bool),
        consecutive_failures=_require(data, path, "consecutive_failures", int),
        paused=paused,
    )


def clear_worker_status(base_dir: str | os.PathLike[str]) -> None:
    """Delete ``worker-status.json`` (e.g. when falling back to peer, to forget a failed mark)."""
    remove(etcd_dir(base_dir) / STATUS_FILE)


# --- worker liveness (flock) ------------------------------------------------------------------


def hold_worker_lock(base_dir: str | os.PathLike[str]) -> IO[str] | None:
    """Worker side: take ``worker.lock`` without blocking and write our PID into it.

    Returns the open file (keep it open for the worker's life; closing it releases the lock), or
    ``None`` if another worker holds it.
    """
    path = _ensure_dir(base_dir) / WORKER_LOCK_FILE
    f = open(path, "a+")  # noqa: SIM115 - lives as long as the worker
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise RollingOpsFileSystemError(f"cannot lock {path}: {e}") from e
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _flock_held(path: pathlib.Path) -> bool:
    try:
        f = open(path)  # noqa: SIM115
    except FileNotFoundError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def worker_alive(base_dir: str | os.PathLike[str]) -> bool:
    """Return True while some process holds ``worker.lock`` (the kernel drops it at death)."""
    return _flock_held(etcd_dir(base_dir) / WORKER_LOCK_FILE)


def _read_pid(path: pathlib.Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def signal_worker(base_dir: str | os.PathLike[str], sig: int = signal.SIGTERM) -> int | None:
    """Send ``sig`` to the live worker; return a pidfd for that process, or ``None`` if none.

    The PID is read from inside the locked file and used only while the flock is held: the pidfd
    is opened first and the lock and PID re-checked after, so a recycled PID is never signalled.
    The caller closes the returned pidfd (or passes it to :func:`stop_worker`).
    """
    path = etcd_dir(base_dir) / WORKER_LOCK_FILE
    pid = _read_pid(path)
    if pid is None or pid == os.getpid():
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    if not _flock_held(path) or _read_pid(path) != pid:
        os.close(pidfd)
        return None
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        os.close(pidfd)
        return None
    return pidfd


def stop_worker(base_dir: str | os.PathLike[str], timeout: float = 10.0) -> bool:
    """SIGTERM the live worker and wait (up to ``timeout`` s) for it to exit.

    Returns True when no worker is alive afterwards. The wait is on the process's pidfd becoming
    readable (the kernel's exit notification), not a polling loop. The worker releases its etcd
    lock and lease on SIGTERM and abandons a ``juju-exec`` waiting for this hook's machine lock.
    """
    pidfd = signal_worker(base_dir, signal.SIGTERM)
    if pidfd is not None:
        try:
            select.select([pidfd], [], [], timeout)
        finally:
            os.close(pidfd)
    return not worker_alive(base_dir)
