"""The etcd lock and client of charmlibs.rollingops against a real etcd set up like charmed-etcd.

Nothing is mocked here: etcd is the Debian/upstream binary started by ``etcd_server.py`` with
client-certificate authentication, RBAC on, and our user being our certificate's common name,
allowed on the test's prefix only. Each contender has its own client, lease and owner, as
separate units would. Worker-process tests are in test_rollingops_worker.py.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
from charmlibs.rollingops._certs import generate_client_credentials
from charmlibs.rollingops._etcd_client import (
    EtcdClient,
    EtcdConnectionError,
    EtcdError,
    WatchCancelledError,
    op_range,
    prefix_end,
)
from charmlibs.rollingops._etcd_lock import EtcdLock, Lease, LockCancelledError

from tests.functional.etcd_server import OTHER_PREFIX, EtcdServer

PERMISSION_DENIED = 7  # gRPC status code


def make_lock(server: EtcdServer, prefix: str, n: int, model: str = "m") -> EtcdLock:
    return EtcdLock(server.client(), prefix, f"{model}.app-{n}", f"app/{n}")


def wait_for_key(client: EtcdClient, key: str, timeout: float = 10.0) -> None:
    """Block (on an etcd watch, no polling) until ``key`` exists."""
    result = client.range(key)
    if result.kvs:
        return
    with client.watch(key, start_revision=result.revision + 1, timeout=timeout) as watch:
        deadline = time.monotonic() + timeout
        while True:
            response = watch.next(deadline - time.monotonic())
            if any(e.kind == "PUT" for e in response.events):
                return


class Recorder:
    """Shared record of critical sections: checks exclusion at every entry."""

    def __init__(self):
        self.guard = threading.Lock()
        self.inside: str | None = None
        self.entries: list[tuple[str, int]] = []
        self.violations: list[str] = []

    def enter(self, who: str, token: int) -> None:
        with self.guard:
            if self.inside is not None:
                self.violations.append(f"{who} entered while {self.inside} was inside")
            self.inside = who
            self.entries.append((who, token))

    def exit(self, who: str) -> None:
        with self.guard:
            if self.inside != who:
                self.violations.append(f"{who} left but {self.inside} was inside")
            self.inside = None


@pytest.mark.parametrize("contenders", [2, 5])
def test_contenders_never_overlap_and_tokens_increase(
    etcd_server: EtcdServer, etcd_prefix: str, contenders: int
):
    rounds = 6
    recorder = Recorder()
    errors: list[BaseException] = []
    fences: list[bool] = []

    def contender(n: int) -> None:
        lock = make_lock(etcd_server, etcd_prefix, n)
        try:
            with Lease(lock.client, ttl=10) as lease:
                for _ in range(rounds):
                    token = lock.acquire(lease, timeout=60)
                    recorder.enter(lock.owner, token)
                    holder = lock.holder()  # a real etcd read inside the critical section
                    fences.append(
                        lock.holds(token) and holder is not None and holder.token == token
                    )
                    recorder.exit(lock.owner)
                    assert lock.release(token)
        except BaseException as e:
            errors.append(e)
        finally:
            lock.close()

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert recorder.violations == []
    assert len(recorder.entries) == contenders * rounds
    tokens = [token for _, token in recorder.entries]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)  # strictly increasing
    assert all(fences)  # every token was the lock key's create_revision while held
    assert {who for who, _ in recorder.entries} == {f"m.app-{n}" for n in range(contenders)}


def test_tickets_are_served_in_order(etcd_server: EtcdServer, etcd_prefix: str):
    holder, first, second = (make_lock(etcd_server, etcd_prefix, n) for n in range(3))
    order: list[str] = []
    with (
        Lease(holder.client, 10) as l0,
        Lease(first.client, 10) as l1,
        Lease(second.client, 10) as l2,
    ):
        token = holder.acquire(l0)
        second.create_ticket(l2)  # "second" queued before "first"
        first.create_ticket(l1)

        def run(lock: EtcdLock, lease: Lease) -> None:
            t = lock.acquire(lease, timeout=30)
            order.append(lock.owner)
            lock.release(t)

        threads = [threading.Thread(target=run, args=a) for a in ((first, l1), (second, l2))]
        for t in threads:
            t.start()
        holder.release(token)
        for t in threads:
            t.join(30)
    assert order == [second.owner, first.owner]


def test_sync_lock_beats_waiting_async_tickets(etcd_server: EtcdServer, etcd_prefix: str):
    holder = make_lock(etcd_server, etcd_prefix, 0)
    waiter = make_lock(etcd_server, etcd_prefix, 1)
    syncer = make_lock(etcd_server, etcd_prefix, 2)
    order: list[str] = []
    with Lease(holder.client, 10) as l0, Lease(waiter.client, 10) as l1:
        token = holder.acquire(l0)
        waiter.create_ticket(l1)  # the async ticket is older than the sync request

        def run_async() -> None:
            t = waiter.acquire(l1, timeout=30)
            order.append("async")
            waiter.release(t)

        def run_sync() -> None:
            with syncer.sync_lock(timeout=30) as t:
                assert syncer.holds(t)
                order.append("sync")

        threads = [threading.Thread(target=run_async), threading.Thread(target=run_sync)]
        for t in threads:
            t.start()
        wait_for_key(holder.client, syncer.ticket_key(sync=True))
        holder.release(token)
        for t in threads:
            t.join(30)
    assert order == ["sync", "async"]


def test_sync_lock_is_reentrant_for_own_async_owner(etcd_server: EtcdServer, etcd_prefix: str):
    worker = make_lock(etcd_server, etcd_prefix, 0)
    hook = make_lock(etcd_server, etcd_prefix, 0)  # same owner: the hook side of that unit
    with Lease(worker.client, 10) as lease:
        token = worker.acquire(lease)
        with hook.sync_lock(timeout=1) as sync_token:
            assert sync_token == token
        assert worker.holds(token)  # the async lock was left in place
        assert worker.release(token)


def test_sync_lock_times_out_on_contention(etcd_server: EtcdServer, etcd_prefix: str):
    holder = make_lock(etcd_server, etcd_prefix, 0)
    other = make_lock(etcd_server, etcd_prefix, 1)
    with Lease(holder.client, 10) as lease:
        token = holder.acquire(lease)
        started = time.monotonic()
        with pytest.raises(TimeoutError), other.sync_lock(timeout=0.5):
            pytest.fail("must not enter")
        assert time.monotonic() - started >= 0.5
        # The timed-out sync ticket is gone, so async waiters are not held back by it.
        assert other.client.get(other.ticket_key(sync=True)) is None
        with pytest.raises(TimeoutError):
            other.acquire(lease, timeout=0.3)
        assert holder.holds(token)


def test_block_exception_propagates_after_release(etcd_server: EtcdServer, etcd_prefix: str):
    lock = make_lock(etcd_server, etcd_prefix, 0)
    with pytest.raises(RuntimeError, match="boom"), lock.sync_lock(timeout=5):
        raise RuntimeError("boom")
    assert lock.holder() is None


def test_release_is_owner_guarded(etcd_server: EtcdServer, etcd_prefix: str):
    lock = make_lock(etcd_server, etcd_prefix, 0)
    with Lease(lock.client, 10) as lease:
        token = lock.acquire(lease)
        assert not lock.release(token - 1)
        assert lock.holds(token)
        assert lock.release(token)
        assert not lock.holds(token)


def test_acquire_cancelled_when_lease_lost(etcd_server: EtcdServer, etcd_prefix: str):
    holder = make_lock(etcd_server, etcd_prefix, 0)
    waiter = make_lock(etcd_server, etcd_prefix, 1)
    with Lease(holder.client, 10) as l0:
        holder.acquire(l0)
        lease = Lease(waiter.client, 10)
        lease.grant()
        waiter.create_ticket(lease)
        # Another party revokes the waiter's lease: its next keep-alive reports it gone. The
        # waiter must notice through the loss callback (watch cancelled), not wait forever.
        threading.Timer(0.2, lambda: holder.client.lease_revoke(lease.id)).start()
        lease.ttl = 1  # heartbeat every 1/3 s for this test
        with pytest.raises(LockCancelledError):
            waiter.acquire(lease, timeout=20)
        assert lease.lost.is_set()


def test_cleanup_owner_removes_every_trace(etcd_server: EtcdServer, etcd_prefix: str):
    lock = make_lock(etcd_server, etcd_prefix, 0)
    lease = Lease(lock.client, 30)
    lease.grant()
    token = lock.acquire(lease)
    lock.set_status(lease, pending=1, holding=token)
    lock.cleanup_owner()
    everything = lock.client.range(etcd_prefix, prefix_end(etcd_prefix))
    assert everything.kvs == []
    assert lock.client.lease_keepalive(lease.id) == 0  # the lease was revoked too
    lease.revoke()


def test_compacted_watch_start_rereads(etcd_server: EtcdServer, etcd_prefix: str):
    lock = make_lock(etcd_server, etcd_prefix, 0)
    client = lock.client
    revision = client.put(etcd_prefix + "x", "1")
    client.put(etcd_prefix + "x", "2")
    etcd_server.etcdctl("compact", str(revision + 1))
    with Lease(client, 10) as lease:
        started = time.monotonic()
        lock._wait_for_deletion(revision, time.monotonic() + 5, lease)  # returns: compacted
        assert time.monotonic() - started < 5


def test_client_without_trusted_certificate_is_refused(etcd_server: EtcdServer, etcd_prefix: str):
    other = generate_client_credentials("stranger")
    d = etcd_server.dir
    (d / "stranger.pem").write_text(other["client-cert"])
    (d / "stranger.key").write_text(other["client-key"])
    stranger = EtcdClient(
        [etcd_server.endpoint],
        ca_file=etcd_server.server_ca,
        cert_file=str(d / "stranger.pem"),
        key_file=str(d / "stranger.key"),
        attempts=1,
    )
    with pytest.raises(EtcdConnectionError):
        stranger.get("/anything")

    # No client certificate at all: the TLS handshake (or the first request) is refused.
    context = ssl.create_default_context(cafile=etcd_server.server_ca)
    host, port = etcd_server.endpoint.split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=5)
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        conn.request("POST", "/v3/kv/range", '{"key": "Lw=="}')
        conn.getresponse().read()
    conn.close()

    # The trusted client still works.
    assert etcd_server.client().range(etcd_prefix).revision > 0


def test_another_common_name_is_refused_on_our_prefix(etcd_server: EtcdServer, etcd_prefix: str):
    ours = etcd_server.client()
    ours.put(etcd_prefix + "lock", "mine")
    other = etcd_server.other_client(attempts=1)
    other.put(OTHER_PREFIX + "x", "1")  # a trusted, authenticated client on its own prefix...
    with pytest.raises(EtcdError) as read:  # ... reads nothing of ours
        other.get(etcd_prefix + "lock")
    with pytest.raises(EtcdError) as write:  # ... writes nothing of ours
        other.put(etcd_prefix + "lock", "theirs")
    with pytest.raises(EtcdError) as txn:
        other.txn([], [op_range(etcd_prefix, prefix_end(etcd_prefix))], [])
    with pytest.raises(EtcdError):
        other.watch(etcd_prefix, prefix_end(etcd_prefix), start_revision=1, timeout=5)
    for error in (read, write, txn):
        assert error.value.code == PERMISSION_DENIED, error.value
    kv = ours.get(etcd_prefix + "lock")
    assert kv is not None and kv.value == b"mine"
    # And our user may use nothing but its prefix.
    with pytest.raises(EtcdError) as outside:
        etcd_server.client(attempts=1).get(OTHER_PREFIX + "x")
    assert outside.value.code == PERMISSION_DENIED


def test_the_json_gateway_refuses_common_name_auth(etcd_server: EtcdServer, etcd_prefix: str):
    """Why the client speaks gRPC: with auth on, etcd's gateway answers 400 to a trusted client."""
    etcd_server.client().put(etcd_prefix + "x", "1")  # gRPC with the same certificate works
    context = ssl.create_default_context(cafile=etcd_server.server_ca)
    context.load_cert_chain(etcd_server.client_cert, etcd_server.client_key)
    host, port = etcd_server.endpoint.split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    body = json.dumps({"key": "L2Nvb3JkaW5hdGVkLW9wcy8="})
    conn.request("POST", "/v3/kv/range", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    text = response.read().decode()
    conn.close()
    assert response.status == 400, text
    assert "CommonName" in text


def test_cancel_from_another_thread_wakes_a_blocked_watch(
    etcd_server: EtcdServer, etcd_prefix: str
):
    client = etcd_server.client()
    revision = client.put(etcd_prefix + "x", "1")
    watch = client.watch(etcd_prefix, prefix_end(etcd_prefix), start_revision=revision + 1)
    threading.Timer(0.2, watch.cancel).start()
    started = time.monotonic()
    with pytest.raises(WatchCancelledError):
        watch.next(timeout=30)
    assert time.monotonic() - started < 10
    assert client.get(etcd_prefix + "x") is not None  # the client is still usable


# A child process, so that the environment is read by a fresh grpc. It builds our client with a
# CA that did NOT sign etcd's certificate while every CA variable names the one that did: the
# call must fail. Then our client with the right CA, while every proxy variable points at a
# listening socket: the call must go straight to etcd. Controls show each variable would matter
# to a channel built without our settings.
ENV_CHILD = """
import json, socket, sys, threading
import grpc
from charmlibs.rollingops._etcd_client import EtcdClient, EtcdConnectionError

endpoint, good_ca, wrong_ca, cert, key, prefix = sys.argv[1:7]
proxy = socket.socket()
proxy.bind(("127.0.0.1", int(sys.argv[7])))
proxy.listen(8)
proxied = []
def serve():
    while True:
        conn, _ = proxy.accept()
        proxied.append(conn.recv(200).decode(errors="replace"))
        conn.close()
threading.Thread(target=serve, daemon=True).start()
out = {}
try:
    EtcdClient([endpoint], ca_file=wrong_ca, cert_file=cert, key_file=key, attempts=1).get(prefix)
    out["wrong_ca"] = "connected"
except EtcdConnectionError as e:
    out["wrong_ca"] = "refused"
out["right_ca"] = EtcdClient(
    [endpoint], ca_file=good_ca, cert_file=cert, key_file=key, attempts=1
).range(prefix).revision > 0
out["proxied"] = list(proxied)

def control(options, root):
    creds = grpc.ssl_channel_credentials(
        root_certificates=root, private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read())
    channel = grpc.secure_channel(endpoint, creds, options=options)
    try:
        grpc.channel_ready_future(channel).result(timeout=5)
        return "connected"
    except grpc.FutureTimeoutError:
        return "failed"
    finally:
        channel.close()

# Default roots come from GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (= the right CA): connects.
out["control_default_roots"] = control([("grpc.enable_http_proxy", 0)], None)
before = len(proxied)
out["control_proxy"] = control([], open(good_ca, "rb").read())
out["control_proxied"] = proxied[before:]
print(json.dumps(out))
"""


def test_no_environment_variable_replaces_our_ca_or_routes_our_traffic(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path
):
    wrong_ca = generate_client_credentials("not the etcd CA")["client-ca"]
    (tmp_path / "wrong-ca.pem").write_text(wrong_ca)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        proxy_port = s.getsockname()[1]
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "grpc_no_proxy")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(sys.path),
            "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": etcd_server.server_ca,
            "REQUESTS_CA_BUNDLE": etcd_server.server_ca,
            "CURL_CA_BUNDLE": etcd_server.server_ca,
            "SSL_CERT_FILE": etcd_server.server_ca,
            "https_proxy": proxy_url,
            "HTTPS_PROXY": proxy_url,
            "http_proxy": proxy_url,
            "grpc_proxy": proxy_url,
        }
    )
    args = [
        etcd_server.endpoint,
        etcd_server.server_ca,
        str(tmp_path / "wrong-ca.pem"),
        etcd_server.client_cert,
        etcd_server.client_key,
        etcd_prefix,
        str(proxy_port),
    ]
    proc = subprocess.run(
        [sys.executable, "-c", ENV_CHILD, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["wrong_ca"] == "refused"  # the CA variables added no trust
    assert out["right_ca"] is True
    assert out["proxied"] == []  # the proxy variables routed nothing of ours
    # Controls: the same variables do act on a channel built without our settings.
    assert out["control_default_roots"] == "connected"
    assert out["control_proxied"] and "CONNECT" in out["control_proxied"][0]


def test_two_slots_let_at_most_two_contenders_in_with_unique_fenced_tokens(
    etcd_server: EtcdServer, etcd_prefix: str
):
    """max_parallel 2 on the real etcd (mTLS, RBAC): never 3 inside, tokens fenced, unique."""
    guard = threading.Lock()
    inside: set[str] = set()
    peak: list[int] = [0]
    tokens: list[int] = []
    errors: list[BaseException] = []
    fences: list[bool] = []
    both_in = threading.Barrier(2, timeout=30)
    started = threading.Event()

    def contender(n: int) -> None:
        lock = make_lock(etcd_server, etcd_prefix, n)
        try:
            with Lease(lock.client, ttl=10) as lease:
                for round_ in range(3):
                    token = lock.acquire(lease, timeout=60, slots=2)
                    with guard:
                        inside.add(lock.owner)
                        peak[0] = max(peak[0], len(inside))
                        tokens.append(token)
                    fences.append(lock.holds(token))
                    if round_ == 0 and n < 2:
                        both_in.wait()  # the first two are inside together
                        started.set()
                    with guard:
                        inside.discard(lock.owner)
                    assert lock.release(token)
        except BaseException as e:
            errors.append(e)
        finally:
            lock.close()

    first = [threading.Thread(target=contender, args=(n,)) for n in range(2)]
    for t in first:
        t.start()
    assert started.wait(30), errors
    rest = [threading.Thread(target=contender, args=(n,)) for n in range(2, 4)]
    for t in rest:
        t.start()
    for t in first + rest:
        t.join(120)
    assert not errors, errors
    assert peak[0] == 2 and len(tokens) == 12 and len(set(tokens)) == 12
    assert all(fences)


def test_a_paused_application_waits_until_resumed(etcd_server: EtcdServer, etcd_prefix: str):
    lock = make_lock(etcd_server, etcd_prefix, 0)
    try:
        lock.set_paused(True)
        with Lease(lock.client, ttl=10) as lease:
            with pytest.raises(TimeoutError):
                lock.acquire(lease, timeout=1)
            lock.set_paused(False)
            token = lock.acquire(lease, timeout=10)
            assert lock.holds(token) and lock.release(token)
    finally:
        lock.close()


def test_another_clients_delete_of_the_pause_key_wakes_a_waiter_and_a_second_writes_nothing(
    etcd_server: EtcdServer, etcd_prefix: str
):
    """What the leader's clean-up of a pause key left by a failed hook relies on (_controls).

    The waiter failed its transaction on the pause and watches from the next revision; the
    leader, another client, deletes the key: that wakes the waiter, which then takes a slot. A
    delete of the absent key (every marked reconcile may make one) writes no revision.
    """
    leader, waiter = make_lock(etcd_server, etcd_prefix, 0), make_lock(etcd_server, etcd_prefix, 1)
    try:
        leader.set_paused(True)
        with Lease(waiter.client, ttl=10) as lease:
            position = waiter.create_ticket(lease)
            token, revision, position = waiter._try_acquire(lease, position, False, 2)
            assert token == 0  # paused
            leader.set_paused(False)
            deadline = time.monotonic() + 10
            waiter._wait_for_deletion(revision + 1, deadline, lease)  # TimeoutError if not woken
            token = waiter._try_acquire(lease, position, False, 2)[0]
            assert token and waiter.holds(token)
            before = leader.client.range(leader.pause_key).revision
            leader.set_paused(False)
            assert leader.client.range(leader.pause_key).revision == before
            assert waiter.release(token)
    finally:
        leader.close()
        waiter.close()


def _deleted_within(client: EtcdClient, key: str, after: int, seconds: float) -> bool:
    """Whether ``key`` is deleted (an etcd watch from revision ``after``) within ``seconds``."""
    with client.watch(key, start_revision=after, timeout=seconds) as watch:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                response = watch.next(left)
            except TimeoutError:
                return False
            if any(e.kind == "DELETE" for e in response.events):
                return True
    return False


def test_the_granted_hook_keeps_a_dead_workers_slot_while_its_operation_runs(
    etcd_server: EtcdServer, etcd_prefix: str
):
    """A worker killed after its grant: its hook, started late, keeps the slot until it ends.

    The worker's lease (5 s) gets no keep-alive once the worker is gone. Without the hook's
    keep-alive the slot would expire under the running operation and the next unit would enter
    beside it; with it the slot stays for twice the TTL, and goes a TTL after the hook stops.
    """
    worker, hook = make_lock(etcd_server, etcd_prefix, 0), make_lock(etcd_server, etcd_prefix, 0)
    try:
        lease = Lease(worker.client, ttl=5)
        lease.id = worker.client.lease_grant(5)  # no keep-alive thread: a killed worker's lease
        worker.create_ticket(lease)
        token = worker.acquire(lease)
        assert hook.keep_slot(token + 1) is None  # another grant's token: not ours
        kept = hook.keep_slot(token)
        assert kept is not None
        revision = worker.client.range(worker.lock_key).revision + 1
        try:
            assert not _deleted_within(hook.client, worker.lock_key, revision, 10.0)
            assert hook.holds(token)
        finally:
            kept.stop()
        assert _deleted_within(hook.client, worker.lock_key, revision, 10.0)
        assert hook.keep_slot(token) is None  # the lease is gone: nothing to keep
    finally:
        worker.close()
        hook.close()
