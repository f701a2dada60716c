"""The operation journal: one JSON line per disruptive operation.

Every restart, remount or upgrade step runs inside `operation(...)`, which records the unit, the
operation (`restart`, `remount`, `upgrade`: under the one lock they share one token sequence), the
engine that coordinated it, the fencing token when there is one, and the wall-clock start and end
(UTC, ISO 8601). The line goes to the unit's local journal and to every extra directory given — the
NFS share when one is mounted — so one file on the share shows every unit's intervals and anyone
can check that no two overlapped.

Tokens of one engine compare as plain integers: each holder's token is above those of every
earlier holder. For rollingops this holds across its etcd and peer backends and across etcd
clusters (the token packs an epoch, raised at each backend switch, above the sequence:
`charmlibs.rollingops.split_token` gives `(epoch, sequence)` back for humans).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import pathlib
import stat
from collections.abc import Generator, Sequence
from typing import Any, cast

import workload

logger = logging.getLogger(__name__)

JOURNAL_NAME = "coordinated-ops-journal.jsonl"

Entry = dict[str, Any]
"""One journal line: a JSON object (`unit`, `operation`, `engine`, `token`, `start`, `end`,
`result`, and what the operation added, e.g. `version`)."""


def local_path() -> pathlib.Path:
    """The unit's own journal file."""
    return workload.state_dir() / JOURNAL_NAME


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


@contextlib.contextmanager
def operation(
    unit: str,
    operation: str,
    engine: str,
    token: int | str | None = None,
    dirs: Sequence[pathlib.Path] = (),
) -> Generator[Entry, None, None]:
    """Record one operation; the body is the operation itself.

    The yielded entry may be extended by the body (e.g. `entry["version"] = "1.1.0"`). The line is
    written when the body ends, with `result` "ok" or "failed" (the exception still propagates),
    to the local journal and to each directory `dirs` holds then (a remount adds the new share).
    """
    entry: Entry = {"unit": unit, "operation": operation, "engine": engine, "token": token}
    entry["start"] = _now()
    result = "failed"
    try:
        yield entry
        result = "ok"
    finally:
        entry["end"] = _now()
        entry["result"] = result
        _append(entry, [local_path(), *(pathlib.Path(d) / JOURNAL_NAME for d in dirs)])


def _append(entry: Entry, paths: Sequence[pathlib.Path]) -> None:
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _append_line(path, line)
        except OSError as error:
            logger.warning("could not write the operation journal %s: %s", path, error)


def _append_line(path: pathlib.Path, line: bytes) -> None:
    """Append `line` to the regular file `path` and fsync it.

    The file may sit on a share other machines write to, so: O_NOFOLLOW (a symlink planted there
    must not make root append to a local file) and regular files only (a FIFO or a device is
    refused, never written or waited on). One write() on an O_APPEND file keeps lines of several
    units apart; if the file does not end with a newline (a write cut short, e.g. a full share),
    this line starts on a fresh one, so the cut line is lost alone and ours stays readable.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags, 0o644)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(f"{path} is not a regular file; not writing to it")
        if info.st_size and os.pread(fd, 1, info.st_size - 1) != b"\n":
            line = b"\n" + line
        written = os.write(fd, line)
        if written < len(line):
            logger.warning(
                "journal %s took %d of %d bytes (share full?); the next line starts afresh",
                path,
                written,
                len(line),
            )
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: pathlib.Path) -> list[Entry]:
    """All entries of a journal file, skipping (and logging) lines that are not JSON objects."""
    entries: list[Entry] = []
    try:
        lines = pathlib.Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    for number, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError:
            logger.warning("%s:%d is not JSON; skipped", path, number)
            continue
        if isinstance(entry, dict):
            entries.append(cast("Entry", entry))  # a JSON object's keys are strings
    return entries
