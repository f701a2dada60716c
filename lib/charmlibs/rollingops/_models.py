"""Types, exceptions and the peer-relation wire format (v1) of charmlibs.rollingops.

Everything here is cheap to import: plain enums, dataclasses and hand-written parsers (no pydantic
models at import time, so `import charmlibs.rollingops` stays close to a bare `import ops`). Each
parser validates strictly and raises `RollingOpsDecodingError` naming what was wrong; callers log
and skip the bad item, never the whole databag.

Relation values come from other units, so they are bounded before they are decoded: `load_json`
refuses a value over `MAX_VALUE_CHARS` characters or nested deeper than `MAX_JSON_DEPTH` before
`json.loads` sees it (its parser recurses once per level), and refuses NaN and Infinity;
`parse_int` refuses anything but at most 19 ASCII digits before `int()` sees it, and every integer
must lie in 0..`MAX_INT` (etcd's int64 revisions), so arithmetic and `str()` on it stay cheap.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime
import enum
import json
import re
from collections.abc import Mapping
from typing import Any, TypeGuard, cast

# Wire versions: unit databags are still at 1; the app databag went to 2 with fencing epochs.
UNIT_WIRE_VERSION = "1"
APP_WIRE_VERSION = "2"
APP_WIRE_VERSIONS_READ = ("1", "2")  # a version 1 app databag reads as epoch 0, is rewritten

# Peer relation keys (unit databag, written by that unit only).
KEY_VERSION = "rollingops-version"
KEY_QUEUE = "rollingops-queue"
KEY_SEQ = "rollingops-seq"
KEY_INTENT = "rollingops-intent"
KEY_DONE = "rollingops-done"
KEY_BACKEND = "rollingops-backend"
KEY_ETCD_CLEANUP = "rollingops-etcd-cleanup"
# Peer relation keys (application databag, written by the leader only).
KEY_TOKEN = "rollingops-token"  # noqa: S105 - databag key names, not secrets
KEY_GRANT = "rollingops-grant"
KEY_ORDER = "rollingops-order"
KEY_MODE = "rollingops-mode"
KEY_CLIENT_SECRET_ID = "rollingops-client-secret-id"  # noqa: S105
KEY_ETCD_REQUEST = "rollingops-etcd-request"  # our etcd_client request object (salt kept here)
KEY_EPOCH = "rollingops-epoch"
KEY_MORE_GRANTS = "rollingops-more-grants"  # grants beyond the first while max_parallel > 1

# Bounds on what another unit wrote (see the module docstring).
MAX_VALUE_CHARS = 256 * 1024  # a queue of over a thousand ops; reads stay well under 0.1 s
MAX_JSON_DEPTH = 32
MAX_INT = (1 << 63) - 1

# A fencing token packs (epoch, sequence) into one integer: epoch in the high bits.
TOKEN_SEQUENCE_BITS = 40  # sequences (peer counter, etcd create_revision) stay below 2**40
MAX_EPOCH = MAX_INT >> TOKEN_SEQUENCE_BITS  # 2**23 - 1: every token fits in 63 bits


def make_token(epoch: int, sequence: int) -> int:
    """The fencing token of grant `sequence` in `epoch`: ordered by epoch, then by sequence.

    Raises ValueError when `sequence` does not fit (an etcd revision past 2**40), when `epoch`
    is above MAX_EPOCH, or when either is negative.
    """
    if not 0 <= epoch <= MAX_EPOCH or not 0 <= sequence < 1 << TOKEN_SEQUENCE_BITS:
        raise ValueError(f"cannot pack epoch {epoch}, sequence {sequence} into a fencing token")
    return epoch << TOKEN_SEQUENCE_BITS | sequence


def split_token(token: int) -> tuple[int, int]:
    """`(epoch, sequence)` of a fencing token (the inverse of `make_token`)."""
    return token >> TOKEN_SEQUENCE_BITS, token & ((1 << TOKEN_SEQUENCE_BITS) - 1)


class _StrEnum(str, enum.Enum):
    """A str-valued enum whose str() is its value (enum.StrEnum exists only from Python 3.11)."""

    def __str__(self) -> str:
        return str(self.value)


class OperationResult(_StrEnum):
    """What a callback returns: release the lock, or retry (giving it up, or keeping it)."""

    RELEASE = "release"
    RETRY_RELEASE = "retry-release"
    RETRY_HOLD = "retry-hold"


class ProcessingBackend(_StrEnum):
    """Where this unit's requests are scheduled."""

    PEER = "peer"
    ETCD = "etcd"


class RollingOpsStatus(_StrEnum):
    """This unit's position with respect to the lock."""

    NOT_READY = "not-ready"
    WAITING = "waiting"
    GRANTED = "granted"
    IDLE = "idle"


class Intent(_StrEnum):
    """What a unit asks the scheduler for (derived from its queue and last result)."""

    IDLE = "idle"
    REQUEST = "request"
    RETRY_RELEASE = "retry-release"
    RETRY_HOLD = "retry-hold"


# `done.result` values besides the three OperationResults.
DONE_DROPPED = "dropped"
DONE_MISSING_CALLBACK = "missing-callback"
DONE_NO_OP = "no-op"
DONE_NOT_GRANTED = "not-granted"
DONE_RESULTS = frozenset(
    [*(r.value for r in OperationResult), DONE_DROPPED, DONE_MISSING_CALLBACK, DONE_NO_OP]
)


@dataclasses.dataclass(frozen=True)
class RollingOpsState:
    """`RollingOpsManager.state`: this unit's lock status and the backend serving it.

    `etcd_problem` says why this unit cannot use etcd although the etcd relation exists (the
    provider's answer was refused: bad endpoints, a PEM that does not parse, an unreadable
    secret...); None when etcd is usable, not related, or its answer has not come yet.
    `malformed` describes the relation values the library ignored because they do not parse, are
    out of range or too big (the app's and this unit's; on the leader every unit's): show it in
    your status.
    """

    status: RollingOpsStatus
    processing_backend: ProcessingBackend
    etcd_problem: str | None = None
    malformed: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BusyUnits:
    """`RollingOpsManager.busy_units()`: the units of this application with work queued or running.

    `unknown` says why the answer may be incomplete (etcd could not be read, a unit's data is in a
    version this unit cannot read); `busy` is then True, so a caller that only checks `busy`
    stays on the safe side. Show `unknown` to the operator.
    """

    units: tuple[str, ...] = ()
    unknown: str | None = None

    @property
    def busy(self) -> bool:
        """Some unit has work queued or running, or we cannot tell."""
        return bool(self.units) or self.unknown is not None


@dataclasses.dataclass(frozen=True)
class LockGrant:
    """The grant a callback runs under. `token` is the fencing token.

    Tokens of one application lock strictly increase from one holder to the next, whatever the
    backend (see the package docstring): compare them as plain integers.
    """

    backend: ProcessingBackend
    token: int
    op_id: str | None = None
    callback_id: str | None = None
    attempt: int = 0

    @property
    def epoch(self) -> int:
        """The backend epoch of the grant (raised at every backend switch), for humans."""
        return split_token(self.token)[0]

    @property
    def sequence(self) -> int:
        """The grant's place in its epoch (peer counter or etcd create_revision), for humans."""
        return split_token(self.token)[1]


class SyncLockBackend(abc.ABC):
    """A charm-supplied lock for `acquire_sync_lock` when etcd is not available."""

    @abc.abstractmethod
    def acquire(self, timeout: int | None) -> None:
        """Block until the lock is held; raise `TimeoutError` after `timeout` seconds."""

    @abc.abstractmethod
    def release(self) -> None:
        """Release the lock taken by `acquire`."""


class RollingOpsError(Exception):
    """Base class of every error raised by charmlibs.rollingops."""


class RollingOpsNoRelationError(RollingOpsError):
    """The peer relation does not exist (yet)."""


class RollingOpsInvalidLockRequestError(RollingOpsError):
    """A lock request is invalid (unknown callback, bad kwargs or max_retry)."""


class RollingOpsDecodingError(RollingOpsError):
    """Stored or relation data could not be decoded."""


class RollingOpsFileSystemError(RollingOpsError):
    """A local file under base_dir could not be read or written."""


class RollingOpsInvalidSecretContentError(RollingOpsError):
    """The etcd client-certificate secret lacks a field or holds bad data."""


class RollingOpsLibMissingError(RollingOpsError):
    """The background worker cannot be launched (its module is not importable)."""


class RollingOpsSyncLockError(RollingOpsError):
    """No sync lock backend could take the lock."""


class RollingOpsControlError(RollingOpsError):
    """An operator control (pause, resume) cannot be applied here or now; the message says why."""


class RollingOpsEtcdctlError(RollingOpsError):
    """Any failure talking to etcd, whatever the client."""


class RollingOpsEtcdNotConfiguredError(RollingOpsEtcdctlError):
    """There is no local etcd configuration yet."""


def canonical_json(value: Any) -> str:
    """Compact, key-sorted JSON: equal values give equal strings (used for dedup and writes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def printable(text: str, limit: int) -> str:
    """`text` fit for a status or a log line: control characters as "?", cut to `limit`.

    For text another application can write (etcd values under a shared prefix): a newline or
    an escape sequence must not reach `juju status`, nor a megabyte of it.
    """
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[: limit + 1])
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def short(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to about `limit` characters, for logs and messages about bad data."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# A JSON string (an unterminated one runs to the end; `"?` keeps the scan linear) or a bracket.
_JSON_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def load_json(raw: str) -> Any:
    """`json.loads` for relation data: raises ValueError when `raw` is too big or too deep.

    Size and depth are checked before decoding, so no input can make the decoder recurse
    (RecursionError) or run long; NaN and Infinity are refused (they do not round-trip).
    """
    if len(raw) > MAX_VALUE_CHARS:
        raise ValueError(f"{len(raw)} characters, more than {MAX_VALUE_CHARS}")
    if raw.count("[") + raw.count("{") > MAX_JSON_DEPTH:  # else it cannot be too deep
        depth = 0
        for match in _JSON_STRING_OR_BRACKET.finditer(raw):
            token = match.group()
            if token in ("[", "{"):
                depth += 1
                if depth > MAX_JSON_DEPTH:
                    raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
            elif token in ("]", "}"):
                depth -= 1
    return json.loads(raw, parse_constant=_reject_constant)


def is_json_object(value: object) -> TypeGuard[dict[str, Any]]:
    """Whether a decoded JSON value is an object (a dict: JSON object keys are strings)."""
    return isinstance(value, dict)


def is_str_dict(value: object) -> TypeGuard[dict[str, Any]]:
    """Whether `value` is a dict whose keys are all strings (e.g. a caller's kwargs)."""
    return isinstance(value, dict) and all(
        isinstance(key, str) for key in cast("dict[object, object]", value)
    )


def is_str_list(value: object) -> TypeGuard[list[str]]:
    """Whether `value` is a list of strings."""
    return isinstance(value, list) and all(
        isinstance(item, str) for item in cast("list[object]", value)
    )


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_INT:
        raise RollingOpsDecodingError(
            f"{what} must be an integer in {minimum}..{MAX_INT}, got {short(value)}"
        )
    return value


def now_iso() -> str:
    """UTC timestamp for humans (`requested_at`); never compared by the library."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass
class Operation:
    """One queued request: `{"id","callback_id","kwargs","max_retry","attempt","requested_at"}`."""

    id: int
    callback_id: str
    kwargs: dict[str, Any]
    max_retry: int | None
    attempt: int = 0
    requested_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def same_request(self, callback_id: str, kwargs: dict[str, Any]) -> bool:
        """Whether a new request would duplicate this op (same callback, equal kwargs)."""
        return self.callback_id == callback_id and canonical_json(self.kwargs) == canonical_json(
            kwargs
        )

    @property
    def exhausted(self) -> bool:
        """Whether the op has used all of its `1 + max_retry` executions."""
        return self.max_retry is not None and self.attempt >= 1 + self.max_retry

    @classmethod
    def from_dict(cls, raw: Any) -> Operation:
        if not isinstance(raw, Mapping):
            raise RollingOpsDecodingError(f"an operation must be a JSON object, got {short(raw)}")
        raw = cast("Mapping[str, object]", raw)  # only ever read with string keys
        callback_id = raw.get("callback_id")
        if not isinstance(callback_id, str) or not callback_id:
            raise RollingOpsDecodingError(f"bad callback_id in {short(raw)}")
        kwargs = raw.get("kwargs", {})
        if not is_str_dict(kwargs):
            raise RollingOpsDecodingError(f"kwargs must be a JSON object in {short(raw)}")
        max_retry = raw.get("max_retry")
        requested_at = raw.get("requested_at", "")
        return cls(
            id=_int(raw.get("id"), "op id", 1),
            callback_id=callback_id,
            kwargs=dict(kwargs),
            max_retry=None if max_retry is None else _int(max_retry, "max_retry"),
            attempt=_int(raw.get("attempt", 0), "attempt"),
            requested_at=requested_at if isinstance(requested_at, str) else "",
        )


def validate_request(kwargs: Any, max_retry: Any) -> dict[str, Any]:
    """Check a request's kwargs and max_retry; return a JSON-clean copy of kwargs.

    Raises ValueError with the reason (the manager wraps it in the public exception).
    """
    if kwargs is None:
        kwargs = {}
    if not is_str_dict(kwargs):
        if not isinstance(kwargs, dict):
            raise ValueError(f"kwargs must be a dict, got {type(kwargs).__name__}")
        raise ValueError("kwargs keys must be strings")
    if max_retry is not None and (
        isinstance(max_retry, bool) or not isinstance(max_retry, int) or max_retry < 0
    ):
        raise ValueError(f"max_retry must be None or an integer >= 0, got {max_retry!r}")
    try:
        encoded = canonical_json(kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"kwargs are not JSON-serialisable: {error}") from None
    try:
        decoded = load_json(encoded)  # what every reader of the queue will accept
    except ValueError as error:
        raise ValueError(f"kwargs are too big for relation data: {error}") from None
    if decoded != kwargs:  # tuples, float edge cases...: refuse what would not round-trip
        raise ValueError("kwargs do not survive a JSON round trip unchanged")
    return decoded


def parse_queue(raw: str | None) -> tuple[list[Operation], list[str]]:
    """Decode a `rollingops-queue` value: the valid ops, and one message per skipped entry."""
    if not raw:
        return [], []
    try:
        items = load_json(raw)
    except ValueError as error:
        return [], [f"queue is not usable JSON ({error})"]
    if not isinstance(items, list):
        return [], [f"queue is not a JSON array: {short(raw)}"]
    items = cast("list[object]", items)
    ops: list[Operation] = []
    errors: list[str] = []
    seen: set[int] = set()
    for item in items:
        try:
            op = Operation.from_dict(item)
        except RollingOpsDecodingError as error:
            errors.append(f"skipped queue entry: {error}")
            continue
        if op.id in seen:
            errors.append(f"skipped duplicate queue entry id {op.id}")
            continue
        seen.add(op.id)
        ops.append(op)
    return ops, errors


def encode_queue(ops: list[Operation]) -> str:
    return canonical_json([op.to_dict() for op in ops])


@dataclasses.dataclass(frozen=True)
class Done:
    """`rollingops-done`: the unit finished grant `token` (op `op`) with `result`."""

    token: int
    op: int | None
    result: str

    def encode(self) -> str:
        return canonical_json(dataclasses.asdict(self))

    @classmethod
    def decode(cls, raw: str) -> Done:
        try:
            data = load_json(raw)
        except ValueError as error:
            raise RollingOpsDecodingError(f"done is not usable JSON: {error}") from None
        if not is_json_object(data):
            raise RollingOpsDecodingError(f"done is not a JSON object: {short(raw)}")
        result = data.get("result")
        if result not in DONE_RESULTS:
            raise RollingOpsDecodingError(f"unknown done result {short(result)}")
        op = data.get("op")
        return cls(
            token=_int(data.get("token"), "done token"),
            op=None if op is None else _int(op, "done op"),
            result=result,
        )


@dataclasses.dataclass(frozen=True)
class Grant:
    """`rollingops-grant`: unit `unit` holds the peer lock under fencing token `token`."""

    unit: str
    token: int
    op: int | None

    def encode(self) -> str:
        return canonical_json(dataclasses.asdict(self))

    @classmethod
    def decode(cls, raw: str) -> Grant:
        try:
            data = load_json(raw)
        except ValueError as error:
            raise RollingOpsDecodingError(f"grant is not usable JSON: {error}") from None
        if not is_json_object(data) or not isinstance(data.get("unit"), str):
            raise RollingOpsDecodingError(f"bad grant {short(raw)}")
        op = data.get("op")
        return cls(
            unit=data["unit"],
            token=_int(data.get("token"), "grant token", 1),
            op=None if op is None else _int(op, "grant op"),
        )


def parse_order(raw: str | None) -> list[str] | None:
    """Decode `rollingops-order`; None when absent (the leader rebuilds it).

    Raises RollingOpsDecodingError when malformed (the caller logs it; the leader rebuilds it).
    """
    if not raw:
        return None
    try:
        data = load_json(raw)
    except ValueError as error:
        raise RollingOpsDecodingError(f"order is not usable JSON: {error}") from None
    if not is_str_list(data):
        raise RollingOpsDecodingError(f"order is not a JSON array of unit names: {short(raw)}")
    return list(dict.fromkeys(data))


def is_wire_version(raw: str | None) -> bool:
    """Whether `raw` is a wire version at all (a small number), ours or another one."""
    return raw is not None and 0 < len(raw) <= 4 and raw.isascii() and raw.isdigit()


def parse_int(raw: str | None, default: int = 0) -> int:
    """Decode an integer field in 0..MAX_INT; raises RollingOpsDecodingError when malformed.

    The length is checked before `int()` runs: Python refuses to convert strings of more than
    4300 digits, and no valid value has more than 19.
    """
    if raw is None or raw == "":
        return default
    if len(raw) > len(str(MAX_INT)) or not (raw.isascii() and raw.isdigit()):
        raise RollingOpsDecodingError(f"not an integer of at most 19 digits: {short(raw)}")
    value = int(raw)
    if value > MAX_INT:
        raise RollingOpsDecodingError(f"integer above {MAX_INT}: {short(raw)}")
    return value
