"""The etcd client's own protobuf codec and its failure mapping, against a real gRPC server.

The server is grpcio's own, on 127.0.0.1 with mutual TLS, answering etcd's method names with
whatever bytes a test chooses: malformed replies, wrong shapes, error statuses, a stream that
breaks. Whatever it sends, the client must raise an ``EtcdError`` (or return a result), never
another exception. The real etcd is exercised in tests/functional/test_rollingops_etcd.py.
"""

from __future__ import annotations

import contextlib
import pathlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
import pytest
from charmlibs.rollingops import _etcd_proto
from charmlibs.rollingops._certs import generate_client_credentials
from charmlibs.rollingops._etcd_client import (
    EtcdClient,
    EtcdConnectionError,
    EtcdError,
    KeyValue,
    compare_create,
    op_put,
    op_range,
    split_endpoint,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.functional.etcd_server import _server_credentials

RESPONSES = [name for name in _etcd_proto.SCHEMA if name.endswith("Response")]


class FakeEtcdServer:
    """A gRPC server answering every etcd method we use with ``reply`` (bytes or a callable)."""

    def __init__(self, tmp: pathlib.Path):
        ca, cert, key = _server_credentials()
        client = generate_client_credentials("codec-test")
        self.reply: Any = b""
        self.stream: Iterable[bytes] = []
        handlers = {
            path.rsplit("/", 1)[1]: grpc.unary_unary_rpc_method_handler(self._unary)
            for path in (
                "/etcdserverpb.KV/Range",
                "/etcdserverpb.KV/Put",
                "/etcdserverpb.KV/DeleteRange",
                "/etcdserverpb.KV/Txn",
                "/etcdserverpb.Lease/LeaseGrant",
                "/etcdserverpb.Lease/LeaseRevoke",
            )
        }
        from concurrent import futures

        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        for service in ("etcdserverpb.KV", "etcdserverpb.Lease", "etcdserverpb.Watch"):
            methods = dict(handlers)
            methods["LeaseKeepAlive"] = grpc.stream_stream_rpc_method_handler(self._stream)
            methods["Watch"] = grpc.stream_stream_rpc_method_handler(self._stream)
            self.server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, methods),)
            )
        credentials = grpc.ssl_server_credentials(
            [(key.encode(), cert.encode())],
            root_certificates=client["client-ca"].encode(),
            require_client_auth=True,
        )
        port = self.server.add_secure_port("127.0.0.1:0", credentials)
        self.server.start()
        (tmp / "ca").write_text(ca)
        (tmp / "cert").write_text(client["client-cert"])
        (tmp / "key").write_text(client["client-key"])
        self.client = EtcdClient(
            [f"127.0.0.1:{port}"],
            ca_file=str(tmp / "ca"),
            cert_file=str(tmp / "cert"),
            key_file=str(tmp / "key"),
            attempts=1,
            timeout=5,
        )

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> Any:
        reply = self.reply
        return reply(context) if callable(reply) else reply

    def _stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        next(requests, None)
        yield from self.stream

    def stop(self) -> None:
        self.client.close()
        self.server.stop(None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeEtcdServer]:
    fake = FakeEtcdServer(tmp_path_factory.mktemp("grpc"))
    yield fake
    fake.stop()


def every_call(client: EtcdClient) -> list[Any]:
    """One closure per client call the lock makes."""
    return [
        lambda: client.range("/p/", "/p0"),
        lambda: client.get("/p/x"),
        lambda: client.put("/p/x", "v", 5),
        lambda: client.delete("/p/x"),
        lambda: client.txn(
            [compare_create("/p/lock", "EQUAL", 0)], [op_put("/p/lock", "v")], [op_range("/p/")]
        ).kvs(0),
        lambda: client.lease_grant(60),
        lambda: client.lease_keepalive(7),
        lambda: client.lease_revoke(7),
        lambda: client.watch("/p/", "/p0", start_revision=2, timeout=5).next(timeout=5),
    ]


def only_etcd_errors(server: FakeEtcdServer) -> None:
    for call in every_call(server.client):
        with contextlib.suppress(EtcdError, TimeoutError):
            call()


# --- codec ------------------------------------------------------------------------------------


def test_codec_round_trip_of_a_transaction():
    txn = {
        "compare": [compare_create("/p/w/", "GREATER", -1, "/p/w0")],
        "success": [op_put("/p/lock", b"\xff\x00", 2**62), op_range("/p/", "/p0", limit=3)],
        "failure": [{"request_delete_range": {"key": "L3A="}}],
    }
    decoded = _etcd_proto.decode("TxnRequest", _etcd_proto.encode("TxnRequest", txn))
    assert decoded["compare"][0]["create_revision"] == -1
    assert decoded["success"][0]["request_put"]["lease"] == 2**62
    assert decoded["success"][1]["request_range"]["sort_target"] == "CREATE"
    assert decoded["failure"] == txn["failure"]


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200), message=st.sampled_from(RESPONSES))
def test_decoding_any_bytes_raises_only_proto_error(raw: bytes, message: str):
    with contextlib.suppress(_etcd_proto.ProtoError):
        _etcd_proto.decode(message, raw)


def test_key_value_from_malformed_data_is_an_etcd_error():
    for data in (None, [], {"key": "!!"}, {"key": "/w=="}, {"key": "YQ==", "version": "x"}):
        with pytest.raises(EtcdError):
            KeyValue.from_json(data)


@pytest.mark.parametrize("endpoint", ["127.0.0.1", "host:", ":2379", "h:99999", "h:x", "[::1]"])
def test_endpoint_without_a_valid_port_is_an_etcd_error(endpoint: str):
    with pytest.raises(EtcdError):
        split_endpoint(endpoint)


# --- the client against a real gRPC server ----------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(raw=st.binary(max_size=120))
def test_any_reply_bytes_give_a_result_or_an_etcd_error(server: FakeEtcdServer, raw: bytes):
    server.reply = raw
    server.stream = [raw, raw]
    only_etcd_errors(server)


def test_wrong_shapes_are_etcd_errors(server: FakeEtcdServer):
    bad_kv = _etcd_proto.encode("RangeResponse", {"kvs": [{"key": "/w==", "version": 1}]})
    server.reply = bad_kv
    with pytest.raises(EtcdError, match="UTF-8"):
        server.client.get("/p/x")
    # A transaction reply with fewer results than the branch has ops.
    server.reply = _etcd_proto.encode("TxnResponse", {"succeeded": True})
    with pytest.raises(EtcdError, match="results"):
        server.client.txn([], [op_put("/p/x", "v")], [])
    # A lease id of 0 is no lease.
    server.reply = b""
    with pytest.raises(EtcdError, match="lease id"):
        server.client.lease_grant(60)
    # A watch whose first answer is not "created".
    server.stream = [_etcd_proto.encode("WatchResponse", {"watch_id": 1})]
    with pytest.raises(EtcdError, match="not created"):
        server.client.watch("/p/", start_revision=1, timeout=5)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, EtcdConnectionError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, EtcdConnectionError),
        (grpc.StatusCode.INTERNAL, EtcdError),
        (grpc.StatusCode.PERMISSION_DENIED, EtcdError),
        (grpc.StatusCode.UNKNOWN, EtcdError),
    ],
)
def test_error_statuses_map_to_etcd_errors(server: FakeEtcdServer, code, expected):
    def abort(context: grpc.ServicerContext) -> bytes:
        context.abort(code, "etcdserver: something")

    server.reply = abort
    with pytest.raises(expected) as error:
        server.client.put("/p/x", "v")
    assert error.value.code == code.value[0]


def test_a_handler_that_raises_is_an_etcd_error(server: FakeEtcdServer):
    def boom(context: grpc.ServicerContext) -> bytes:
        raise RuntimeError("server bug")

    server.reply = boom
    for call in every_call(server.client)[:6]:
        with pytest.raises(EtcdError):
            call()


def test_a_stream_that_ends_is_a_connection_error(server: FakeEtcdServer):
    created = _etcd_proto.encode("WatchResponse", {"created": True, "header": {"revision": 3}})
    server.stream = [created]  # then the server ends the stream
    watch = server.client.watch("/p/", start_revision=1, timeout=5)
    assert watch.revision == 3
    with pytest.raises(EtcdConnectionError):
        watch.next(timeout=5)
    server.stream = []
    with pytest.raises(EtcdConnectionError):
        server.client.lease_keepalive(7)


def test_unreachable_etcd_is_a_connection_error(tmp_path: pathlib.Path):
    (tmp_path / "pem").write_text("not a pem")
    client = EtcdClient(
        ["127.0.0.1:1"],
        ca_file=str(tmp_path / "pem"),
        cert_file=str(tmp_path / "pem"),
        key_file=str(tmp_path / "pem"),
        attempts=1,
    )
    for call in every_call(client):
        with pytest.raises(EtcdError):
            call()
    with pytest.raises(EtcdError, match="cannot read"):
        EtcdClient(["h:1"], ca_file=str(tmp_path / "none"), cert_file="x", key_file="y")


def test_threads_share_one_client(server: FakeEtcdServer):
    server.reply = _etcd_proto.encode("PutResponse", {"header": {"revision": 9}})
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(server.client.put("/p/x", "v")))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [9] * 8


def test_watch_timeout_is_a_deadline_that_empty_messages_do_not_restart(server: FakeEtcdServer):
    """Messages without events (progress notifications) do not restart the timeout.

    Otherwise a stream of them (here one every 50 ms for 3 s) makes ``next`` wait on.
    """
    created = _etcd_proto.encode("WatchResponse", {"created": True, "header": {"revision": 3}})
    empty = _etcd_proto.encode("WatchResponse", {"header": {"revision": 3}})
    stop = threading.Event()

    def progress_notifications() -> Iterator[bytes]:
        yield created
        for _ in range(60):
            if stop.wait(0.05):
                return
            yield empty

    server.stream = progress_notifications()
    watch = server.client.watch("/p/", start_revision=1, timeout=5)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            watch.next(timeout=0.3)
    finally:
        stop.set()
    assert time.monotonic() - started < 1.5
