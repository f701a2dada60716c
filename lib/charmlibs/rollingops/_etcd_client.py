"""A small etcd v3 client over the gRPC-gateway JSON API, with mutual TLS and no dependencies.

etcd serves its v3 API as JSON on the client port (``POST /v3/kv/range``, ``/v3/kv/txn``,
``/v3/lease/grant``, ``/v3/watch`` ...; etcd 3.4 also answers under ``/v3beta/``, we use ``/v3/``).
Keys and values travel base64-encoded and 64-bit integers as strings. This module speaks exactly
the calls the rolling-ops lock needs, over ``http.client`` with an ``ssl`` context built from our
own files, so no environment variable (``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``, proxies) can
change whom we trust. Why in-house rather than etcd3gw: docs/adr/0001-etcd-client.md.

Example::

    client = EtcdClient(["10.0.0.5:2379"], ca_file="ca.pem", cert_file="c.pem", key_file="k.pem")
    rev = client.put("/app/x", "1")
    kv = client.get("/app/x")            # KeyValue(key="/app/x", value=b"1", create_revision=...)
    ok = client.txn([compare_create("/app/lock", "EQUAL", 0)], [op_put("/app/lock", "me")])
    with client.watch("/app/", prefix_end("/app/"), start_revision=rev + 1) as watch:
        response = watch.next(timeout=10)  # blocks until events arrive, or TimeoutError

Every failure raises :class:`EtcdError` (a ``RollingOpsEtcdctlError``). Transport failures
(:class:`EtcdConnectionError`) are retried on the next endpoint with bounded exponential backoff;
the calls the lock makes are idempotent, so a retry after a lost response is harmless.
Thread safety: unary calls share one kept-alive connection behind a lock; each watch has its own.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import json
import logging
import socket
import ssl
import threading
from collections.abc import Sequence
from typing import Any

from ._models import RollingOpsEtcdctlError

logger = logging.getLogger(__name__)

API = "/v3"


class EtcdError(RollingOpsEtcdctlError):
    """etcd could not be reached or answered with an error."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class EtcdConnectionError(EtcdError):
    """Transport failure (connection refused or reset, TLS failure, etcd unavailable)."""


class EtcdCompactedError(EtcdError):
    """A watch asked for revisions that etcd has compacted away."""

    def __init__(self, compact_revision: int):
        super().__init__(f"watch start revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


class WatchCancelledError(EtcdError):
    """:meth:`Watch.cancel` was called (from another thread) while waiting."""


# --- encoding helpers -------------------------------------------------------------------------


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def _int(value: Any) -> int:
    return int(value) if value else 0


def prefix_end(prefix: str) -> str:
    """Return the ``range_end`` that selects every key starting with ``prefix``."""
    raw = prefix.encode()
    if not raw or raw[-1] == 0xFF:
        raise ValueError(f"cannot build a range end for {prefix!r}")
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


@dataclasses.dataclass(frozen=True)
class KeyValue:
    """One key as etcd stores it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyValue:
        """Decode a gateway ``KeyValue`` object."""
        return cls(
            key=_unb64(data.get("key")).decode(),
            value=_unb64(data.get("value")),
            create_revision=_int(data.get("create_revision")),
            mod_revision=_int(data.get("mod_revision")),
            version=_int(data.get("version")),
            lease=_int(data.get("lease")),
        )

    def json(self) -> Any:
        """Decode the value as JSON (``EtcdError`` if it is not)."""
        try:
            return json.loads(self.value)
        except ValueError as e:
            raise EtcdError(f"value of {self.key} is not JSON: {e}") from e


@dataclasses.dataclass(frozen=True)
class RangeResult:
    """Result of a range read: the store revision it saw, the keys, and the total count."""

    revision: int
    kvs: list[KeyValue]
    count: int


@dataclasses.dataclass(frozen=True)
class TxnResult:
    """Result of a transaction: which branch ran, the revision after it, one result per op."""

    succeeded: bool
    revision: int
    responses: list[dict[str, Any]]

    def kvs(self, index: int) -> list[KeyValue]:
        """Return the keys read by the range op at ``index`` of the branch that ran."""
        body = self.responses[index].get("response_range", {})
        return [KeyValue.from_json(kv) for kv in body.get("kvs", [])]


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    """A key was put or deleted (``kind`` is ``"PUT"`` or ``"DELETE"``)."""

    kind: str
    kv: KeyValue


@dataclasses.dataclass(frozen=True)
class WatchResponse:
    """A batch of events and the revision of the store after them."""

    revision: int
    events: list[WatchEvent]


# --- transaction builders ---------------------------------------------------------------------


def compare_create(key: str, result: str, revision: int, range_end: str | None = None) -> dict:
    """Compare the ``create_revision`` of ``key`` (0 when absent) with ``revision``.

    ``result`` is ``EQUAL``, ``NOT_EQUAL``, ``GREATER`` or ``LESS``. With ``range_end`` the
    comparison must hold for every key in the range, and an empty range compares as one absent
    key (create_revision 0): ``compare_create(p, "LESS", 1, prefix_end(p))`` means "no key
    under p".
    """
    cmp = {"key": _b64(key), "target": "CREATE", "result": result, "create_revision": revision}
    if range_end is not None:
        cmp["range_end"] = _b64(range_end)
    return cmp


def op_put(key: str, value: str | bytes, lease: int = 0) -> dict:
    """Put ``key`` (attached to ``lease`` when non-zero) inside a transaction."""
    return {"request_put": _put_body(key, value, lease)}


def op_delete(key: str, range_end: str | None = None) -> dict:
    """Delete ``key`` (or ``[key, range_end)``) inside a transaction."""
    return {"request_delete_range": _range_body(key, range_end)}


def op_range(key: str, range_end: str | None = None, *, limit: int = 0) -> dict:
    """Read ``key`` (or ``[key, range_end)`` by ascending ``create_revision``) in a transaction."""
    body = _range_body(key, range_end)
    if range_end is not None:
        body.update(sort_target="CREATE", sort_order="ASCEND")
    if limit:
        body["limit"] = limit
    return {"request_range": body}


def _put_body(key: str, value: str | bytes, lease: int) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def _range_body(key: str, range_end: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key)}
    if range_end is not None:
        body["range_end"] = _b64(range_end)
    return body


# --- the client -------------------------------------------------------------------------------


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    address = endpoint.split("://", 1)[-1].rstrip("/")
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"etcd endpoint must be host:port, got {endpoint!r}")
    return host.strip("[]"), int(port)


_TRANSPORT_ERRORS = (OSError, http.client.HTTPException, ssl.SSLError)


class EtcdClient:
    """Client for one etcd cluster (``endpoints`` are ``host:port`` strings) with mutual TLS."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        ca_file: str,
        cert_file: str,
        key_file: str,
        timeout: float = 5.0,
        attempts: int = 3,
    ):
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = [_split_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self.attempts = max(1, attempts)
        try:
            self._ssl = ssl.create_default_context(cafile=ca_file)
            self._ssl.load_cert_chain(cert_file, key_file)
        except (OSError, ssl.SSLError) as e:
            raise EtcdError(f"cannot load the etcd TLS files: {e}") from e
        self._current = 0
        self._conn: http.client.HTTPSConnection | None = None
        self._lock = threading.Lock()

    # -- transport --

    def _connect(self, timeout: float | None) -> http.client.HTTPSConnection:
        host, port = self.endpoints[self._current % len(self.endpoints)]
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=self._ssl)

    def _post_once(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        with self._lock:
            if self._conn is None:
                self._conn = self._connect(self.timeout)
            conn = self._conn
            try:
                conn.request("POST", API + path, data, {"Content-Type": "application/json"})
                response = conn.getresponse()
                raw = response.read()
            except _TRANSPORT_ERRORS as e:
                conn.close()
                self._conn = None
                self._current += 1  # the next attempt tries the next endpoint
                raise EtcdConnectionError(f"etcd {path}: {e.__class__.__name__}: {e}") from e
        return _decode(path, response.status, raw)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._post_once(path, body)
        except EtcdConnectionError as e:
            if self.attempts == 1:
                raise
            logger.info("etcd call failed, retrying with backoff: %s", e)
        return self._retry(path, body)

    def _retry(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        # Bounded exponential backoff after a failed call (tenacity is imported only then).
        import tenacity

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts - 1),
            wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
            retry=tenacity.retry_if_exception_type(EtcdConnectionError),
            reraise=True,
        )
        return retrying(self._post_once, path, body)

    def close(self) -> None:
        """Close the kept-alive connection (the client stays usable)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- KV --

    def range(
        self,
        key: str,
        range_end: str | None = None,
        *,
        limit: int = 0,
        count_only: bool = False,
    ) -> RangeResult:
        """Read ``key`` or ``[key, range_end)`` (sorted by ``create_revision`` for a range)."""
        body = op_range(key, range_end, limit=limit)["request_range"]
        if count_only:
            body["count_only"] = True
        reply = self._post("/kv/range", body)
        return RangeResult(
            revision=_revision(reply),
            kvs=[KeyValue.from_json(kv) for kv in reply.get("kvs", [])],
            count=_int(reply.get("count")),
        )

    def get(self, key: str) -> KeyValue | None:
        """Return ``key``, or ``None`` when absent."""
        kvs = self.range(key).kvs
        return kvs[0] if kvs else None

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        """Put ``key``; return the store revision after the put."""
        return _revision(self._post("/kv/put", _put_body(key, value, lease)))

    def delete(self, key: str, range_end: str | None = None) -> int:
        """Delete ``key`` (or a range); return how many keys were deleted."""
        return _int(self._post("/kv/deleterange", _range_body(key, range_end)).get("deleted"))

    def txn(
        self, compare: list[dict], success: list[dict], failure: list[dict] | None = None
    ) -> TxnResult:
        """Run ``success`` if every comparison holds, else ``failure``, atomically."""
        body = {"compare": compare, "success": success, "failure": failure or []}
        reply = self._post("/kv/txn", body)
        return TxnResult(
            succeeded=bool(reply.get("succeeded")),
            revision=_revision(reply),
            responses=reply.get("responses", []),
        )

    # -- leases --

    def lease_grant(self, ttl: int) -> int:
        """Grant a lease of ``ttl`` seconds; return its id."""
        reply = self._post("/lease/grant", {"TTL": str(ttl)})
        if reply.get("error"):
            raise EtcdError(f"lease grant: {reply['error']}")
        return _int(reply.get("ID"))

    def lease_keepalive(self, lease: int) -> int:
        """Refresh ``lease``; return its new TTL, 0 when the lease no longer exists."""
        reply = self._post("/lease/keepalive", {"ID": str(lease)})
        return _int(reply.get("result", {}).get("TTL"))

    def lease_revoke(self, lease: int) -> bool:
        """Revoke ``lease`` (deleting its keys); return False if it did not exist."""
        try:
            self._post("/lease/revoke", {"ID": str(lease)})
        except EtcdError as e:
            if e.code == 5:  # NOT_FOUND: expired or revoked already
                return False
            raise
        return True

    # -- watch --

    def watch(
        self,
        key: str,
        range_end: str | None = None,
        *,
        start_revision: int,
        no_put: bool = False,
        timeout: float | None = None,
    ) -> Watch:
        """Watch ``key`` (or ``[key, range_end)``) from ``start_revision``; see :class:`Watch`.

        ``timeout`` bounds connecting and the creation response only.
        """
        request: dict[str, Any] = {"key": _b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            request["range_end"] = _b64(range_end)
        if no_put:
            request["filters"] = ["NOPUT"]
        connect_timeout = self.timeout if timeout is None else min(timeout, self.timeout)
        with self._lock:
            conn = self._connect(connect_timeout)
        return Watch(conn, {"create_request": request}, connect_timeout)


class Watch:
    """One open watch stream; iterate with :meth:`next`, stop with :meth:`cancel` or ``close``."""

    def __init__(
        self, conn: http.client.HTTPSConnection, request: dict[str, Any], timeout: float | None
    ):
        self._conn = conn
        self._cancelled = threading.Event()
        self._sock: socket.socket | None = None
        try:
            conn.request(
                "POST", API + "/watch", json.dumps(request), {"Content-Type": "application/json"}
            )
            self._response = conn.getresponse()
            self._sock = conn.sock
            if self._response.status != 200:
                raw = self._response.read()
                _decode("/watch", self._response.status, raw)
            first = self._read_message(timeout)
        except _TRANSPORT_ERRORS as e:
            conn.close()
            raise EtcdConnectionError(f"etcd watch: {e.__class__.__name__}: {e}") from e
        except BaseException:
            conn.close()
            raise
        if not first.get("created"):
            conn.close()
            raise EtcdError(f"etcd watch was not created: {first}")
        self._check_cancel(first)
        self.revision = _revision(first)  # store revision when the watch was created

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_message(self, timeout: float | None) -> dict[str, Any]:
        if self._sock is not None:
            self._sock.settimeout(timeout)
        line = self._response.readline()
        if self._cancelled.is_set():
            raise WatchCancelledError("watch cancelled")
        if not line:
            raise EtcdConnectionError("etcd closed the watch stream")
        try:
            message = json.loads(line)
        except ValueError as e:
            raise EtcdError(f"etcd watch sent invalid JSON: {line[:200]!r}") from e
        if "error" in message:
            error = message["error"]
            raise EtcdError(f"etcd watch: {error.get('message', error)}", error.get("grpc_code"))
        return message.get("result", {})

    def _check_cancel(self, result: dict[str, Any]) -> None:
        if result.get("canceled"):
            compact = _int(result.get("compact_revision"))
            if compact:
                raise EtcdCompactedError(compact)
            raise EtcdError(f"etcd cancelled the watch: {result.get('cancel_reason', '')}")

    def next(self, timeout: float | None = None) -> WatchResponse:
        """Block until the next batch of events; ``TimeoutError`` after ``timeout`` seconds.

        Raises :class:`EtcdCompactedError` when the start revision is compacted,
        :class:`WatchCancelledError` after :meth:`cancel`, :class:`EtcdConnectionError` when the
        stream breaks (resume with a new watch from the last revision + 1). After a timeout or an
        error the watch is closed.
        """
        while True:  # skip progress notifications that carry no events
            try:
                result = self._read_message(timeout)
            except TimeoutError as e:
                self.close()
                raise TimeoutError("no etcd watch event before the timeout") from e
            except _TRANSPORT_ERRORS as e:
                self.close()
                if self._cancelled.is_set():
                    raise WatchCancelledError("watch cancelled") from e
                raise EtcdConnectionError(f"etcd watch: {e.__class__.__name__}: {e}") from e
            except EtcdError:
                self.close()
                raise
            self._check_cancel(result)
            events = [
                WatchEvent(
                    kind=event.get("type", "PUT"), kv=KeyValue.from_json(event.get("kv", {}))
                )
                for event in result.get("events", [])
            ]
            if events:
                return WatchResponse(revision=_revision(result), events=events)

    def cancel(self) -> None:
        """Wake a thread blocked in :meth:`next` (it raises :class:`WatchCancelledError`)."""
        self._cancelled.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the stream (etcd drops the watch with the connection)."""
        self._conn.close()


def _revision(reply: dict[str, Any]) -> int:
    return _int(reply.get("header", {}).get("revision"))


def _decode(path: str, status: int, raw: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(raw) if raw else {}
    except ValueError as e:
        raise EtcdError(f"etcd {path}: HTTP {status}, invalid JSON: {raw[:200]!r}") from e
    if status == 200 and isinstance(reply, dict):
        return reply
    message = reply.get("message") or reply.get("error") if isinstance(reply, dict) else reply
    code = reply.get("code") if isinstance(reply, dict) else None
    error_class = EtcdConnectionError if code == 14 or status in (502, 503) else EtcdError
    raise error_class(f"etcd {path}: HTTP {status}: {message}", code)
