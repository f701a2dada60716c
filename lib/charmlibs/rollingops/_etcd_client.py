"""A small etcd v3 client over gRPC with mutual TLS: etcd authenticates us by our certificate.

charmed-etcd turns etcd's authentication on and makes our etcd user the common name of our
client certificate, with no password. etcd maps a certificate to a user only for gRPC clients
(its HTTP/JSON gateway answers HTTP 400 to every call once authentication is on), so this client
speaks gRPC, through the ``grpcio`` package, with our own encoding of the few messages we use
(:mod:`._etcd_proto`: no generated code, no ``protobuf`` package). Why: docs/adr/0002.

``grpc`` is imported when the first client is built, so importing this module (for
:class:`EtcdError` or the transaction builders) stays cheap: only the worker and the hooks that
really talk to etcd pay for it.

Example::

    client = EtcdClient(["10.0.0.5:2379"], ca_file="ca.pem", cert_file="c.pem", key_file="k.pem")
    rev = client.put("/app/x", "1")
    kv = client.get("/app/x")            # KeyValue(key="/app/x", value=b"1", create_revision=...)
    ok = client.txn([compare_create("/app/lock", "EQUAL", 0)], [op_put("/app/lock", "me")])
    with client.watch("/app/", prefix_end("/app/"), start_revision=rev + 1) as watch:
        response = watch.next(timeout=10)  # blocks until events arrive, or TimeoutError

Trust is explicit: the channel trusts exactly the CA file we are given and presents our
certificate and key; it never reads the system trust store or ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``
(an explicit root certificate replaces them), ignores proxies (``grpc.enable_http_proxy`` off,
so ``https_proxy`` / ``grpc_proxy`` cannot route our traffic), and nothing of ``requests``
(``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) is involved.

Every failure raises :class:`EtcdError` (a ``RollingOpsEtcdctlError``), whatever the transport or
a malformed reply throws. Transport failures (:class:`EtcdConnectionError`: unreachable,
TLS refused, deadline exceeded, etcd unavailable) are retried on the next endpoint with bounded
exponential backoff; the calls the lock makes are idempotent, so a retry after a lost response is
harmless. Thread safety: one gRPC channel (HTTP/2 connection) per client, shared by every call and
watch; each watch is its own stream.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from ._etcd_proto import ProtoError, decode, encode
from ._models import RollingOpsEtcdctlError, is_json_object

if TYPE_CHECKING:
    import grpc

logger = logging.getLogger(__name__)

# gRPC status codes (numbers of grpc.StatusCode) that mean "try again / elsewhere".
CANCELLED = 1
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
UNAVAILABLE = 14
_TRANSPORT_CODES = frozenset({CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE})

# Channel options. Trust and routing come from our arguments only; a broken connection is noticed
# by HTTP/2 pings (etcd accepts one every 5 s or slower); after a failure the channel reconnects
# within 2 s instead of gRPC's default backoff of up to two minutes.
CHANNEL_OPTIONS = (
    ("grpc.enable_http_proxy", 0),
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)

# method -> (path, request message, response message)
_UNARY = {
    "range": ("/etcdserverpb.KV/Range", "RangeRequest", "RangeResponse"),
    "put": ("/etcdserverpb.KV/Put", "PutRequest", "PutResponse"),
    "delete": ("/etcdserverpb.KV/DeleteRange", "DeleteRangeRequest", "DeleteRangeResponse"),
    "txn": ("/etcdserverpb.KV/Txn", "TxnRequest", "TxnResponse"),
    "lease_grant": ("/etcdserverpb.Lease/LeaseGrant", "LeaseGrantRequest", "LeaseGrantResponse"),
    "lease_revoke": (
        "/etcdserverpb.Lease/LeaseRevoke",
        "LeaseRevokeRequest",
        "LeaseRevokeResponse",
    ),
}
KEEPALIVE_PATH = "/etcdserverpb.Lease/LeaseKeepAlive"
WATCH_PATH = "/etcdserverpb.Watch/Watch"


class EtcdError(RollingOpsEtcdctlError):
    """etcd could not be reached or answered with an error (``code``: the gRPC status code)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code


class EtcdConnectionError(EtcdError):
    """Transport failure (unreachable, TLS refused, deadline exceeded, etcd unavailable)."""


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


def _unb64(data: Any) -> bytes:
    if not data:
        return b""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        raise EtcdError(f"etcd sent invalid base64: {str(data)[:80]!r}") from e


def _int(value: Any) -> int:
    try:
        return int(value) if value else 0
    except (TypeError, ValueError) as e:
        raise EtcdError(f"etcd sent a non-integer where a number belongs: {value!r}") from e


def prefix_end(prefix: str) -> str:
    """Return the ``range_end`` that selects every key starting with ``prefix``."""
    raw = prefix.encode()
    if not raw or raw[-1] >= 0x7F:
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
    def from_json(cls, data: Any) -> KeyValue:
        """Decode a ``KeyValue`` message in its JSON mapping (``EtcdError`` if malformed)."""
        if not is_json_object(data):
            raise EtcdError(f"etcd sent a malformed key-value: {str(data)[:200]!r}")
        try:
            key = _unb64(data.get("key")).decode()
        except UnicodeDecodeError as e:
            raise EtcdError("etcd sent a key that is not UTF-8") from e
        return cls(
            key=key,
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
        if not 0 <= index < len(self.responses):
            raise EtcdError(f"etcd txn reply has no result #{index}")
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


def compare_create(
    key: str, result: str, revision: int, range_end: str | None = None
) -> dict[str, Any]:
    """Compare the ``create_revision`` of ``key`` (0 when absent) with ``revision``.

    ``result`` is ``EQUAL``, ``NOT_EQUAL``, ``GREATER`` or ``LESS``. With ``range_end`` the
    comparison must hold for every key in the range, and an empty range compares as one absent
    key (create_revision 0): ``compare_create(p, "LESS", 1, prefix_end(p))`` means "no key
    under p".
    """
    cmp: dict[str, Any] = {
        "key": _b64(key),
        "target": "CREATE",
        "result": result,
        "create_revision": revision,
    }
    if range_end is not None:
        cmp["range_end"] = _b64(range_end)
    return cmp


def compare_mod(key: str, result: str, revision: int) -> dict[str, Any]:
    """Compare the ``mod_revision`` of ``key`` (0 when absent) with ``revision``.

    ``compare_mod(k, "EQUAL", r)`` with the ``mod_revision`` of a read (0 if ``k`` was absent)
    means "``k`` did not change since that read": optimistic concurrency.
    """
    return {"key": _b64(key), "target": "MOD", "result": result, "mod_revision": revision}


def compare_value(key: str, result: str, value: str | bytes) -> dict[str, Any]:
    """Compare the value of ``key`` with ``value``; false whenever ``key`` is absent (etcd)."""
    return {"key": _b64(key), "target": "VALUE", "result": result, "value": _b64(value)}


def op_put(key: str, value: str | bytes, lease: int = 0) -> dict[str, Any]:
    """Put ``key`` (attached to ``lease`` when non-zero) inside a transaction."""
    return {"request_put": _put_body(key, value, lease)}


def op_delete(key: str, range_end: str | None = None) -> dict[str, Any]:
    """Delete ``key`` (or ``[key, range_end)``) inside a transaction."""
    return {"request_delete_range": _range_body(key, range_end)}


def op_range(key: str, range_end: str | None = None, *, limit: int = 0) -> dict[str, Any]:
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


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """Return ``(host, port)`` of ``host:port`` (``https://`` and IPv6 brackets allowed).

    Raises :class:`EtcdError` when there is no valid port.
    """
    address = str(endpoint).strip().split("://", 1)[-1].rstrip("/")
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EtcdError(f"etcd endpoint must be host:port, got {endpoint!r}")
    return host, int(port)


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _StreamCall(Protocol):
    """A grpc stream-stream call without a deserializer, as we use it: an iterator of replies.

    grpc ships no type information; its calls are cast to this (and unary replies to ``bytes``).
    """

    def __iter__(self) -> Iterator[bytes]: ...

    def __next__(self) -> bytes: ...

    def cancel(self) -> bool: ...


def _grpc_error(what: str, error: Exception) -> EtcdError:
    """Map a gRPC failure (or anything else the transport threw) to an ``EtcdError``."""
    code_fn = getattr(error, "code", None)
    details_fn = getattr(error, "details", None)
    try:
        status: Any = code_fn() if callable(code_fn) else None
        code = int(status.value[0]) if status is not None else None
        details = details_fn() if callable(details_fn) else str(error)
    except Exception:  # a malformed status is still a failed call
        status, code, details = None, None, str(error)
    if code is None:
        return EtcdConnectionError(f"etcd {what}: {error.__class__.__name__}: {error}")
    name = getattr(status, "name", code)
    error_class = EtcdConnectionError if code in _TRANSPORT_CODES else EtcdError
    return error_class(f"etcd {what}: {name}: {details}", code)


class EtcdClient:
    """Client for one etcd cluster (``endpoints`` are ``host:port`` strings) with mutual TLS.

    Raises :class:`EtcdError` for an endpoint without a valid port or unreadable TLS files.
    """

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
            raise EtcdError("no etcd endpoints")
        self.endpoints = [split_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self.attempts = max(1, attempts)
        try:
            self._ca, self._cert, self._key = _read(ca_file), _read(cert_file), _read(key_file)
        except OSError as e:
            raise EtcdError(f"cannot read the etcd TLS files: {e}") from e
        try:
            import grpc  # ~60 ms: only the worker and hooks that talk to etcd get here
        except ImportError as e:
            raise EtcdError(f"the etcd backend needs the grpcio package: {e}") from e
        self._grpc = grpc
        self._current = 0
        self._channel: grpc.Channel | None = None
        self._lock = threading.Lock()

    # -- transport --

    def channel(self) -> grpc.Channel:
        """The gRPC channel to the current endpoint (created on first use)."""
        with self._lock:
            if self._channel is None:
                grpc = self._grpc
                host, port = self.endpoints[self._current % len(self.endpoints)]
                try:
                    credentials = grpc.ssl_channel_credentials(
                        root_certificates=self._ca,
                        private_key=self._key,
                        certificate_chain=self._cert,
                    )
                    self._channel = grpc.secure_channel(
                        _target(host, port), credentials, options=CHANNEL_OPTIONS
                    )
                except Exception as e:
                    raise EtcdError(f"cannot set up the etcd channel: {e}") from e
            return self._channel

    def _next_endpoint(self, failed: grpc.Channel) -> None:
        """After a transport failure on ``failed``: the next call uses the next endpoint."""
        if len(self.endpoints) == 1:
            return  # the channel reconnects by itself (backoff at most 2 s)
        with self._lock:
            if self._channel is not failed:
                return  # another thread moved on already
            self._channel = None
            self._current += 1
        failed.close()

    def _call_once(self, method: str, request: dict[str, Any]) -> dict[str, Any]:
        path, request_type, response_type = _UNARY[method]
        try:
            payload = encode(request_type, request)
        except ProtoError as e:
            raise EtcdError(f"etcd {method}: cannot encode the request: {e}") from e
        channel = self.channel()
        try:
            raw = cast("bytes", channel.unary_unary(path)(payload, timeout=self.timeout))
        except Exception as e:
            error = _grpc_error(method, e)
            if isinstance(error, EtcdConnectionError):
                self._next_endpoint(channel)
            raise error from e
        return _decode(method, response_type, raw)

    def _call(self, method: str, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._call_once(method, request)
        except EtcdConnectionError as e:
            if self.attempts == 1:
                raise
            logger.info("etcd call failed, retrying with backoff: %s", e)
        return self._retry(method, request)

    def _retry(self, method: str, request: dict[str, Any]) -> dict[str, Any]:
        # Bounded exponential backoff after a failed call (tenacity is imported only then).
        import tenacity

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts - 1),
            wait=tenacity.wait_exponential(multiplier=0.1, max=2.0),
            retry=tenacity.retry_if_exception_type(EtcdConnectionError),
            reraise=True,
        )
        return retrying(self._call_once, method, request)

    def close(self) -> None:
        """Close the channel (cancelling open watches); the client stays usable."""
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

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
        reply = self._call("range", body)
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
        return _revision(self._call("put", _put_body(key, value, lease)))

    def delete(self, key: str, range_end: str | None = None) -> int:
        """Delete ``key`` (or a range); return how many keys were deleted."""
        return _int(self._call("delete", _range_body(key, range_end)).get("deleted"))

    def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None = None,
    ) -> TxnResult:
        """Run ``success`` if every comparison holds, else ``failure``, atomically."""
        failure = failure or []
        reply = self._call("txn", {"compare": compare, "success": success, "failure": failure})
        succeeded = bool(reply.get("succeeded"))
        responses = reply.get("responses", [])
        if len(responses) != len(success if succeeded else failure):
            raise EtcdError(f"etcd txn: {len(responses)} results for the ops of the branch")
        return TxnResult(succeeded=succeeded, revision=_revision(reply), responses=responses)

    # -- leases --

    def lease_grant(self, ttl: int) -> int:
        """Grant a lease of ``ttl`` seconds; return its id."""
        reply = self._call("lease_grant", {"TTL": ttl})
        if reply.get("error"):
            raise EtcdError(f"lease grant: {reply['error']}")
        lease = _int(reply.get("ID"))
        if lease <= 0:
            raise EtcdError(f"lease grant: etcd returned lease id {lease}")
        return lease

    def lease_keepalive(self, lease: int) -> int:
        """Refresh ``lease``; return its new TTL, 0 when the lease no longer exists.

        One short ``LeaseKeepAlive`` stream per call: one request, one answer.
        """
        payload = encode("LeaseKeepAliveRequest", {"ID": lease})
        channel = self.channel()
        try:
            call = cast(
                "_StreamCall",
                channel.stream_stream(KEEPALIVE_PATH)(iter([payload]), timeout=self.timeout),
            )
            try:
                raw = next(call, None)
            finally:
                call.cancel()
        except Exception as e:
            error = _grpc_error("lease keep-alive", e)
            if isinstance(error, EtcdConnectionError):
                self._next_endpoint(channel)
            raise error from e
        if raw is None:
            raise EtcdConnectionError("etcd lease keep-alive: the stream ended without an answer")
        return _int(_decode("lease keep-alive", "LeaseKeepAliveResponse", raw).get("TTL"))

    def lease_revoke(self, lease: int) -> bool:
        """Revoke ``lease`` (deleting its keys); return False if it did not exist."""
        try:
            self._call("lease_revoke", {"ID": lease})
        except EtcdError as e:
            if e.code == NOT_FOUND:  # expired or revoked already
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
        request: dict[str, Any] = {"key": _b64(key), "start_revision": start_revision}
        if range_end is not None:
            request["range_end"] = _b64(range_end)
        if no_put:
            request["filters"] = ["NOPUT"]
        create_timeout = self.timeout if timeout is None else min(timeout, self.timeout)
        channel = self.channel()
        try:
            return Watch(channel, request, create_timeout)
        except EtcdConnectionError:
            self._next_endpoint(channel)
            raise


_END = object()  # queued when the stream ends or is cancelled


class Watch:
    """One open watch stream; iterate with :meth:`next`, stop with :meth:`cancel` or ``close``.

    A daemon thread reads the stream into a queue, so :meth:`next` can wait with a timeout and
    :meth:`cancel` can wake it from any thread.
    """

    def __init__(self, channel: grpc.Channel, request: dict[str, Any], timeout: float | None):
        self._cancelled = threading.Event()
        self._closed = threading.Event()  # ends our side of the stream
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        try:
            payload = encode("WatchRequest", {"create_request": request})
            self._call = cast(
                "_StreamCall", channel.stream_stream(WATCH_PATH)(self._requests(payload))
            )
        except Exception as e:
            self._closed.set()
            raise _grpc_error("watch", e) from e
        threading.Thread(target=self._read, name="etcd-watch", daemon=True).start()
        try:
            first = self._message(timeout)
        except TimeoutError as e:
            self.close()
            raise EtcdConnectionError("etcd watch: no creation response before the timeout") from e
        except BaseException:
            self.close()
            raise
        if not first.get("created"):
            self.close()
            raise EtcdError(f"etcd watch was not created: {str(first)[:200]}")
        try:
            self._check_cancel(first)
        except EtcdError:
            self.close()
            raise
        self.revision = _revision(first)  # store revision when the watch was created

    def _requests(self, payload: bytes) -> Iterator[bytes]:
        yield payload
        self._closed.wait()  # keep our half open: etcd ends the watch when we close it

    def _read(self) -> None:
        try:
            for raw in self._call:
                self._queue.put(raw)
            self._queue.put(EtcdConnectionError("etcd closed the watch stream"))
        except Exception as e:
            self._queue.put(_grpc_error("watch", e))
        self._queue.put(_END)

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _message(self, timeout: float | None) -> dict[str, Any]:
        """The next decoded ``WatchResponse``; ``TimeoutError`` after ``timeout`` seconds."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no etcd watch event before the timeout") from None
        if self._cancelled.is_set():
            raise WatchCancelledError("watch cancelled")
        if item is _END:
            self._queue.put(_END)  # every later call sees the end too
            raise EtcdConnectionError("etcd watch stream ended")
        if isinstance(item, EtcdError):
            raise item
        return _decode("watch", "WatchResponse", item)

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
        error the watch is closed. ``timeout`` is one deadline for the whole call: messages
        without events (progress notifications) are skipped without restarting it.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:  # skip progress notifications that carry no events
            try:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                result = self._message(remaining)
                self._check_cancel(result)
                events = [_event(event) for event in result.get("events", [])]
            except BaseException:
                self.close()
                raise
            if events:
                return WatchResponse(revision=_revision(result), events=events)

    def cancel(self) -> None:
        """Wake a thread blocked in :meth:`next` (it raises :class:`WatchCancelledError`)."""
        self._cancelled.set()
        self._queue.put(_END)
        self.close()

    def close(self) -> None:
        """End the stream (etcd drops the watch with it)."""
        self._closed.set()
        self._call.cancel()


def _event(event: Any) -> WatchEvent:
    if not is_json_object(event):
        raise EtcdError(f"etcd watch sent a malformed event: {str(event)[:200]!r}")
    return WatchEvent(kind=str(event.get("type", "PUT")), kv=KeyValue.from_json(event.get("kv")))


def _revision(reply: dict[str, Any]) -> int:
    return _int(reply.get("header", {}).get("revision"))


def _decode(what: str, message: str, raw: Any) -> dict[str, Any]:
    try:
        return decode(message, raw)
    except ProtoError as e:
        raise EtcdError(f"etcd {what}: malformed reply: {e}") from e
