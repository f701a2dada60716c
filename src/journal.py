"""The operation journal: one JSON line per disruptive operation.

Every restart or upgrade runs inside `operation(...)`, which records the unit, the operation, the
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
from collections.abc import Iterator, Sequence

import workload

logger = logging.getLogger(__name__)

JOURNAL_NAME = "coordinated-ops-journal.jsonl"


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
) -> Iterator[dict]:
    """Record one operation; the body is the operation itself.

    The yielded entry may be extended by the body (e.g. `entry["version"] = "1.1.0"`). The line is
    written when the body ends, with `result` "ok" or "failed" (the exception still propagates).
    """
    entry: dict = {"unit": unit, "operation": operation, "engine": engine, "token": token}
    entry["start"] = _now()
    result = "failed"
    try:
        yield entry
        result = "ok"
    finally:
        entry["end"] = _now()
        entry["result"] = result
        _append(entry, [local_path(), *(pathlib.Path(d) / JOURNAL_NAME for d in dirs)])


def _append(entry: dict, paths: Sequence[pathlib.Path]) -> None:
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    for path in paths:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # One write() of a line on an O_APPEND file: lines of several units never interleave.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as error:
            logger.warning("could not write the operation journal %s: %s", path, error)


def read(path: pathlib.Path) -> list[dict]:
    """All entries of a journal file, skipping (and logging) lines that are not JSON objects."""
    entries = []
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
            entries.append(entry)
    return entries
