"""The protobuf wire format of the few etcd v3 messages the rolling-ops lock uses (no protoc).

etcd's gRPC API (package ``etcdserverpb``, key-values from ``mvccpb``) is protobuf over HTTP/2.
:mod:`._etcd_client` hands grpc raw bytes; this module turns messages into those bytes and back.
A message is a ``dict`` in protobuf's JSON mapping, the shape etcd's JSON gateway also used:
field names of the ``.proto``, ``bytes`` as base64 strings, enums by name, 64-bit integers as
``int`` (decimal strings are accepted on input). Fields at their default value are left out, as
proto3 does on the wire. For example::

    encode("RangeRequest", {"key": "L2E=", "limit": 1})   # key "/a" (field 1), limit 1 (field 3)
    decode("RangeResponse", raw)  # -> {"header": {"revision": 7}, "kvs": [...], "count": 1}

Field numbers and enum values follow etcd's API reference (``rpc.proto``, ``kv.proto``); only the
fields we use are declared. Unknown fields in a reply are skipped (a newer etcd may add some);
anything that does not parse raises :class:`ProtoError` (a ``ValueError``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Any

# Wire types.
VARINT = 0
FIXED64 = 1
LENGTH = 2
FIXED32 = 5

# Field kinds. An enum kind is the dict of its value names.
BYTES = "bytes"
STRING = "string"
INT64 = "int64"
UINT64 = "uint64"
BOOL = "bool"

_MASK64 = (1 << 64) - 1


class ProtoError(ValueError):
    """A message could not be encoded or a reply could not be decoded."""


def _enum(*names: str) -> dict[str, int]:
    return {name: number for number, name in enumerate(names)}


SORT_ORDER = _enum("NONE", "ASCEND", "DESCEND")
SORT_TARGET = _enum("KEY", "VERSION", "CREATE", "MOD", "VALUE")
COMPARE_RESULT = _enum("EQUAL", "GREATER", "LESS", "NOT_EQUAL")
COMPARE_TARGET = _enum("VERSION", "CREATE", "MOD", "VALUE", "LEASE")
FILTER_TYPE = _enum("NOPUT", "NODELETE")
EVENT_TYPE = _enum("PUT", "DELETE")

# A field's kind: a scalar kind above, a message name of SCHEMA, or an enum (name -> number).
Kind = str | dict[str, int]
# message name -> field name -> (number, kind or enum or message name, repeated)
Field = tuple[int, Kind, bool]
SCHEMA: dict[str, dict[str, Field]] = {
    "ResponseHeader": {
        "cluster_id": (1, UINT64, False),
        "member_id": (2, UINT64, False),
        "revision": (3, INT64, False),
        "raft_term": (4, UINT64, False),
    },
    "KeyValue": {
        "key": (1, BYTES, False),
        "create_revision": (2, INT64, False),
        "mod_revision": (3, INT64, False),
        "version": (4, INT64, False),
        "value": (5, BYTES, False),
        "lease": (6, INT64, False),
    },
    "RangeRequest": {
        "key": (1, BYTES, False),
        "range_end": (2, BYTES, False),
        "limit": (3, INT64, False),
        "revision": (4, INT64, False),
        "sort_order": (5, SORT_ORDER, False),
        "sort_target": (6, SORT_TARGET, False),
        "serializable": (7, BOOL, False),
        "keys_only": (8, BOOL, False),
        "count_only": (9, BOOL, False),
    },
    "RangeResponse": {
        "header": (1, "ResponseHeader", False),
        "kvs": (2, "KeyValue", True),
        "more": (3, BOOL, False),
        "count": (4, INT64, False),
    },
    "PutRequest": {
        "key": (1, BYTES, False),
        "value": (2, BYTES, False),
        "lease": (3, INT64, False),
        "prev_kv": (4, BOOL, False),
    },
    "PutResponse": {"header": (1, "ResponseHeader", False)},
    "DeleteRangeRequest": {
        "key": (1, BYTES, False),
        "range_end": (2, BYTES, False),
        "prev_kv": (3, BOOL, False),
    },
    "DeleteRangeResponse": {
        "header": (1, "ResponseHeader", False),
        "deleted": (2, INT64, False),
    },
    "RequestOp": {
        "request_range": (1, "RangeRequest", False),
        "request_put": (2, "PutRequest", False),
        "request_delete_range": (3, "DeleteRangeRequest", False),
    },
    "ResponseOp": {
        "response_range": (1, "RangeResponse", False),
        "response_put": (2, "PutResponse", False),
        "response_delete_range": (3, "DeleteRangeResponse", False),
    },
    "Compare": {
        "result": (1, COMPARE_RESULT, False),
        "target": (2, COMPARE_TARGET, False),
        "key": (3, BYTES, False),
        "version": (4, INT64, False),
        "create_revision": (5, INT64, False),
        "mod_revision": (6, INT64, False),
        "value": (7, BYTES, False),
        "lease": (8, INT64, False),
        "range_end": (64, BYTES, False),
    },
    "TxnRequest": {
        "compare": (1, "Compare", True),
        "success": (2, "RequestOp", True),
        "failure": (3, "RequestOp", True),
    },
    "TxnResponse": {
        "header": (1, "ResponseHeader", False),
        "succeeded": (2, BOOL, False),
        "responses": (3, "ResponseOp", True),
    },
    "LeaseGrantRequest": {"TTL": (1, INT64, False), "ID": (2, INT64, False)},
    "LeaseGrantResponse": {
        "header": (1, "ResponseHeader", False),
        "ID": (2, INT64, False),
        "TTL": (3, INT64, False),
        "error": (4, STRING, False),
    },
    "LeaseRevokeRequest": {"ID": (1, INT64, False)},
    "LeaseRevokeResponse": {"header": (1, "ResponseHeader", False)},
    "LeaseKeepAliveRequest": {"ID": (1, INT64, False)},
    "LeaseKeepAliveResponse": {
        "header": (1, "ResponseHeader", False),
        "ID": (2, INT64, False),
        "TTL": (3, INT64, False),
    },
    "WatchRequest": {"create_request": (1, "WatchCreateRequest", False)},
    "WatchCreateRequest": {
        "key": (1, BYTES, False),
        "range_end": (2, BYTES, False),
        "start_revision": (3, INT64, False),
        "progress_notify": (4, BOOL, False),
        "filters": (5, FILTER_TYPE, True),
        "prev_kv": (6, BOOL, False),
    },
    "WatchResponse": {
        "header": (1, "ResponseHeader", False),
        "watch_id": (2, INT64, False),
        "created": (3, BOOL, False),
        "canceled": (4, BOOL, False),
        "compact_revision": (5, INT64, False),
        "cancel_reason": (6, STRING, False),
        "fragment": (7, BOOL, False),
        "events": (11, "Event", True),
    },
    "Event": {
        "type": (1, EVENT_TYPE, False),
        "kv": (2, "KeyValue", False),
        "prev_kv": (3, "KeyValue", False),
    },
}

# --- encoding ---------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= _MASK64  # negative int64: ten bytes of two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _scalar(kind: Kind, value: Any, where: str) -> int | bytes:
    """Return the varint value or the length-delimited payload of one scalar."""
    try:
        if isinstance(kind, dict):
            return value if isinstance(value, int) else kind[value]
        if kind == BYTES:
            return base64.b64decode(value, validate=True)
        if kind == STRING:
            return str(value).encode()
        if kind == BOOL:
            return int(bool(value))
        return int(value)  # int64 / uint64: int or decimal string
    except (KeyError, ValueError, TypeError, binascii.Error) as e:
        raise ProtoError(f"bad value {value!r} for {where}: {e}") from e


def encode(message: str, data: dict[str, Any]) -> bytes:
    """Encode ``data`` (JSON mapping) as the protobuf ``message`` of :data:`SCHEMA`."""
    fields = SCHEMA[message]
    out = bytearray()
    for name, value in data.items():
        if name not in fields:
            raise ProtoError(f"{message} has no field {name!r}")
        number, kind, repeated = fields[name]
        values = value if repeated else [value]
        if isinstance(kind, str) and kind in SCHEMA:
            for item in values:
                payload = encode(kind, item)
                out += _tag(number, LENGTH) + _varint(len(payload)) + payload
            continue
        scalars = [_scalar(kind, item, f"{message}.{name}") for item in values]
        if repeated:  # packed, as proto3 writes repeated numbers
            packed = bytearray()
            for item in scalars:
                packed += _varint(item) if isinstance(item, int) else b""
            if packed:
                out += _tag(number, LENGTH) + _varint(len(packed)) + packed
            continue
        scalar = scalars[0]
        if isinstance(scalar, bytes):
            if scalar:
                out += _tag(number, LENGTH) + _varint(len(scalar)) + scalar
        elif scalar:
            out += _tag(number, VARINT) + _varint(scalar)
    return bytes(out)


# --- decoding ---------------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        if shift >= 64:
            raise ProtoError("varint longer than 10 bytes")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result & _MASK64, pos


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(number, wire_type, value)``: an int for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ProtoError("field number 0")
        if wire_type == VARINT:
            value, pos = _read_varint(buf, pos)
            yield number, wire_type, value
            continue
        if wire_type == LENGTH:
            size, pos = _read_varint(buf, pos)
        elif wire_type in (FIXED64, FIXED32):
            size = 8 if wire_type == FIXED64 else 4
        else:
            raise ProtoError(f"unsupported wire type {wire_type}")
        if pos + size > len(buf):
            raise ProtoError("truncated field")
        yield number, wire_type, buf[pos : pos + size]
        pos += size


def _scalar_out(kind: Kind, raw: int | bytes, where: str) -> Any:
    if kind in (BYTES, STRING):
        if not isinstance(raw, bytes):
            raise ProtoError(f"{where}: expected a length-delimited field")
        if kind == BYTES:
            return base64.b64encode(raw).decode("ascii")
        try:
            return raw.decode()
        except UnicodeDecodeError as e:
            raise ProtoError(f"{where}: invalid UTF-8") from e
    if not isinstance(raw, int):
        raise ProtoError(f"{where}: expected a varint")
    if kind == INT64:
        return raw - (1 << 64) if raw >> 63 else raw
    if kind == BOOL:
        return bool(raw)
    if isinstance(kind, dict):
        names = {number: name for name, number in kind.items()}
        return names.get(raw, raw)
    return raw  # uint64


def decode(message: str, buf: bytes) -> dict[str, Any]:
    """Decode the protobuf ``message`` in ``buf`` into its JSON mapping (:class:`ProtoError`)."""
    # grpc is untyped: it hands the deserializer whatever its transport produced.
    if not isinstance(buf, bytes):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ProtoError(f"{message}: expected bytes, got {type(buf).__name__}")
    by_number = {spec[0]: (name, spec) for name, spec in SCHEMA[message].items()}
    out: dict[str, Any] = {}
    for number, wire_type, raw in _fields(buf):
        if number not in by_number:
            continue  # a field we do not use
        name, (_, kind, repeated) = by_number[number]
        where = f"{message}.{name}"
        if isinstance(kind, str) and kind in SCHEMA:
            if not isinstance(raw, bytes):
                raise ProtoError(f"{where}: expected a message")
            value = decode(kind, raw)
        elif repeated and wire_type == LENGTH and not isinstance(kind, str):
            # packed repeated numbers (enums here)
            packed: list[Any] = []
            pos = 0
            assert isinstance(raw, bytes)
            while pos < len(raw):
                item, pos = _read_varint(raw, pos)
                packed.append(_scalar_out(kind, item, where))
            out.setdefault(name, []).extend(packed)
            continue
        else:
            value = _scalar_out(kind, raw, where)
        if repeated:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value  # last one wins, as in protobuf
    return out
