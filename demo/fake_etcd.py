"""An in-memory etcd on the simulator's logical time, modelling exactly what `_etcd_lock` uses.

`charmlibs.rollingops._etcd_lock` talks to etcd through `EtcdClient` (`_etcd_client.py`): range,
put, delete, txn (create-revision, mod-revision and value compares, put/delete/range ops), lease
grant/keep-alive/revoke, and a watch from a revision. `FakeEtcd` keeps the store (keys with
create/mod revisions, version, lease), the leases and the event history; `FakeEtcdClient` has
`EtcdClient`'s signatures and answers in the gateway's JSON shapes (base64 keys, integers as
strings), so the library's own decoding (`TxnResult.kvs`, `KeyValue.from_json`) runs unchanged.

Time is the simulator's clock (`clock()`, in ticks). Faults:

- `outage(t1, t2)`: every call made at t1 <= now < t2 raises `EtcdConnectionError`, like a
  network partition: the server keeps running, so leases not refreshed for `ttl` ticks expire
  (during the outage no client can refresh one);
- lease expiry: a lease is refreshed continuously while its keeper (`keeper()` returns True, e.g.
  a live worker) is alive and etcd is reachable; otherwise it expires `ttl` ticks after its last
  refresh, deleting its keys (`expire()` must be called at those times: `next_expiry()`);
- watches are wake-ups: `on_delete(callback)` is called with the revision of every deletion
  (explicit delete, lease revoke or expiry), and `on_outage(callback)` when an outage begins (a
  broken watch stream).

Authentication, as charmed-etcd sets it up: with `permissions` set (the simulator sets it; bare
unit tests leave it None), a client is the user named by its certificate's common name and may
read and write only under the prefixes granted to that user (`grant`, which the provider
stand-in calls when it answers a request); anything else is refused with PERMISSION_DENIED
(gRPC code 7), as etcd refuses it.

Semantics follow etcd v3: one revision per write transaction (shared by its ops), none for a
read-only one or a delete of nothing; a put keeps `create_revision` and attaches the new lease;
a compare over a range must hold for every key in it and an empty range compares as one absent
key (create/mod revision 0); a value compare on an absent key is false.
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable
from typing import Any

from charmlibs.rollingops._etcd_client import (
    EtcdConnectionError,
    EtcdError,
    KeyValue,
    RangeResult,
    TxnResult,
    WatchEvent,
    WatchResponse,
    op_range,
    prefix_end,
)

NOT_FOUND = 5  # gRPC code of an unknown lease
PERMISSION_DENIED = 7  # gRPC code of a request outside the user's permissions


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def _unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


@dataclasses.dataclass
class FakeLease:
    """A lease: refreshed while its keeper lives and etcd is reachable, else it expires."""

    id: int
    ttl: int
    refreshed: int  # logical time of the last refresh
    keeper: Callable[[], bool] | None = None  # None: nobody keeps it alive


class FakeEtcd:
    """The store, the leases and the outage windows of one etcd cluster."""

    def __init__(self, clock: Callable[[], int], ttl_ticks: int):
        self.clock = clock
        self.ttl_ticks = ttl_ticks  # what a lease TTL of LEASE_TTL seconds is in ticks
        self.revision = 1
        self.keys: dict[str, KeyValue] = {}
        self.leases: dict[int, FakeLease] = {}
        self.history: list[WatchEvent] = []
        self.outages: list[tuple[int, int]] = []
        self.delete_listeners: list[Callable[[int], None]] = []
        self.outage_listeners: list[Callable[[], None]] = []
        self._next_lease = 0x1000
        self.calls = 0
        self.failed_calls = 0
        self.permissions: dict[str, set[str]] | None = None  # user -> readwrite key prefixes
        self.denied = 0  # calls refused by RBAC

    def grant(self, user: str, prefix: str) -> None:
        """Let `user` read and write every key starting with `prefix` (turns auth on)."""
        if self.permissions is None:
            self.permissions = {}
        self.permissions.setdefault(user, set()).add(prefix)

    def check_access(self, user: str | None, key: str, range_end: str | None = None) -> None:
        """Refuse, as etcd does, a key or range outside `user`'s granted prefixes."""
        if self.permissions is None:
            return
        for prefix in self.permissions.get(user or "", ()):
            if key.startswith(prefix) and (
                range_end is None or prefix < range_end <= prefix_end(prefix)
            ):
                return
        self.denied += 1
        what = key if range_end is None else f"[{key}, {range_end})"
        who = user or "a client without a certificate"
        raise EtcdError(f"etcdserver: permission denied ({who} on {what})", PERMISSION_DENIED)

    # --- faults and time ---------------------------------------------------------------------

    def down(self, at: int | None = None) -> bool:
        """Whether etcd is unreachable at logical time `at` (default: now)."""
        now = self.clock() if at is None else at
        return any(t1 <= now < t2 for t1, t2 in self.outages)

    def outage(self, t1: int, t2: int) -> None:
        """Declare an outage window [t1, t2) (call `outage_begins` at t1, `refresh` at t2)."""
        self.outages.append((t1, t2))

    def outage_begins(self) -> None:
        """At t1: refresh kept leases one last time, then break every watch."""
        self.refresh(force=True)
        for callback in list(self.outage_listeners):
            callback()

    def refresh(self, force: bool = False) -> None:
        """Kept-alive leases are refreshed now (if etcd is reachable, or `force` at t1)."""
        if self.down() and not force:
            return
        now = self.clock()
        for lease in self.leases.values():
            if lease.keeper is not None and lease.keeper():
                lease.refreshed = now

    def next_expiry(self) -> int | None:
        """The earliest time an unrefreshed lease expires, if any is at risk."""
        times = [
            lease.refreshed + lease.ttl
            for lease in self.leases.values()
            if self.down() or lease.keeper is None or not lease.keeper()
        ]
        return min(times) if times else None

    def expire(self) -> list[int]:
        """Delete every lease whose TTL ran out (with its keys); returns their ids.

        Call `refresh()` first when etcd is reachable (kept leases are then fresh); during an
        outage nothing refreshes them, so they run out too (the server's clock keeps going).
        """
        now = self.clock()
        gone = [lid for lid, lease in self.leases.items() if lease.refreshed + lease.ttl <= now]
        for lid in gone:
            self._drop_lease(lid)
        return gone

    # --- store internals ---------------------------------------------------------------------

    def _range(
        self, key: str, range_end: str | None, sort_target: str | None = None
    ) -> list[KeyValue]:
        """The keys in `[key, range_end)`, in the order etcd answers them.

        Key byte order, unless a range read asks `sort_target` "CREATE" (ascending create
        revision; `op_range` asks it).
        """
        if range_end is None:
            kv = self.keys.get(key)
            return [kv] if kv else []
        found = [kv for k, kv in self.keys.items() if key <= k < range_end]
        if sort_target == "CREATE":
            return sorted(found, key=lambda kv: kv.create_revision)
        if sort_target not in (None, "KEY"):
            raise EtcdError(f"fake etcd models KEY and CREATE sorts only, got {sort_target}")
        return sorted(found, key=lambda kv: kv.key.encode())

    def _put(self, key: str, value: bytes, lease: int, revision: int) -> None:
        old = self.keys.get(key)
        kv = KeyValue(
            key=key,
            value=value,
            create_revision=old.create_revision if old else revision,
            mod_revision=revision,
            version=(old.version + 1) if old else 1,
            lease=lease,
        )
        self.keys[key] = kv
        self.history.append(WatchEvent("PUT", kv))

    def _delete(self, key: str, range_end: str | None, revision: int) -> int:
        doomed = self._range(key, range_end)
        for kv in doomed:
            del self.keys[kv.key]
            tombstone = KeyValue(kv.key, b"", 0, revision, 0, 0)  # etcd sends key + revision
            self.history.append(WatchEvent("DELETE", tombstone))
        return len(doomed)

    def _deleted(self) -> None:
        for callback in list(self.delete_listeners):
            callback(self.revision)

    def _drop_lease(self, lid: int) -> bool:
        if self.leases.pop(lid, None) is None:
            return False
        attached = [k for k, kv in self.keys.items() if kv.lease == lid]
        if attached:
            self.revision += 1
            for key in attached:
                self._delete(key, None, self.revision)
            self._deleted()
        return True

    def _compare(self, cmp: dict[str, Any]) -> bool:
        """One compare, as etcd's server applies it (CREATE, MOD and VALUE targets).

        A revision compare over a range must hold for every key in it; an absent key (or an
        empty range) compares as revision 0. A VALUE compare on an absent key is false.
        """
        target = cmp.get("target")
        if target not in ("CREATE", "MOD", "VALUE"):
            raise EtcdError(f"fake etcd models CREATE, MOD and VALUE compares only, got {cmp}")
        key = _unb64(cmp["key"]).decode()
        end = _unb64(cmp["range_end"]).decode() if cmp.get("range_end") else None
        found = self._range(key, end)
        if target == "VALUE" and not found:
            return False
        result = cmp.get("result", "EQUAL")
        for kv in found or [None]:
            have: int | bytes
            if target == "VALUE":
                assert kv is not None
                have, want = kv.value, _unb64(cmp.get("value"))
            elif target == "MOD":
                have, want = (kv.mod_revision if kv else 0), int(cmp.get("mod_revision", 0))
            else:
                have = kv.create_revision if kv else 0
                want = int(cmp.get("create_revision", 0))
            ok = {
                "EQUAL": have == want,
                "NOT_EQUAL": have != want,
                "GREATER": have > want,  # pyright: ignore[reportOperatorIssue]
                "LESS": have < want,  # pyright: ignore[reportOperatorIssue]
            }[result]
            if not ok:
                return False
        return True

    def _apply(self, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for op in ops:  # etcd rejects the whole transaction for an unknown lease
            lease = int(op.get("request_put", {}).get("lease", 0))
            if lease and lease not in self.leases:
                raise EtcdError("etcdserver: requested lease not found", NOT_FOUND)
        writes = any("request_put" in op or "request_delete_range" in op for op in ops)
        revision = self.revision + 1 if writes else self.revision
        wrote = deleted = False
        responses: list[dict[str, Any]] = []
        for op in ops:
            if "request_range" in op:
                body = op["request_range"]
                key = _unb64(body["key"]).decode()
                end = _unb64(body["range_end"]).decode() if body.get("range_end") else None
                kvs = self._range(key, end, body.get("sort_target"))
                count = len(kvs)  # etcd counts the whole range, whatever the limit
                if body.get("limit"):
                    kvs = kvs[: int(body["limit"])]
                payload = {"kvs": [_kv_json(kv) for kv in kvs], "count": str(count)}
                responses.append({"response_range": payload})
            elif "request_put" in op:
                body = op["request_put"]
                self._put(
                    _unb64(body["key"]).decode(),
                    _unb64(body.get("value")),
                    int(body.get("lease", 0)),
                    revision,
                )
                wrote = True
                responses.append({"response_put": {}})
            elif "request_delete_range" in op:
                body = op["request_delete_range"]
                key = _unb64(body["key"]).decode()
                end = _unb64(body["range_end"]).decode() if body.get("range_end") else None
                n = self._delete(key, end, revision)
                wrote = wrote or n > 0
                deleted = deleted or n > 0
                responses.append({"response_delete_range": {"deleted": str(n)}})
            else:
                raise EtcdError(f"fake etcd: unknown txn op {op}")
        if wrote:
            self.revision = revision
        if deleted:
            self._deleted()
        return responses

    # --- the API (called through FakeEtcdClient) --------------------------------------------

    def call(self, name: str) -> None:
        """Every client call starts here: outage check, lease expiry up to now."""
        self.calls += 1
        if self.down():
            self.failed_calls += 1
            raise EtcdConnectionError(f"fake etcd unreachable (outage) during {name}")
        self.refresh()
        self.expire()

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict]) -> TxnResult:
        succeeded = all(self._compare(c) for c in compare)
        responses = self._apply(success if succeeded else failure)
        return TxnResult(succeeded=succeeded, revision=self.revision, responses=responses)

    def lease_grant(self, ttl_seconds: int, keeper: Callable[[], bool] | None) -> int:
        self._next_lease += 1
        lid = self._next_lease
        self.leases[lid] = FakeLease(lid, self.ttl_ticks, self.clock(), keeper)
        return lid


def _common_name(cert_file: str) -> str:
    """The common name of the client certificate in `cert_file` (etcd's user name for it)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    with open(cert_file, "rb") as pem:
        leaf = x509.load_pem_x509_certificates(pem.read())[0]
    return str(leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _kv_json(kv: KeyValue) -> dict[str, Any]:
    """A KeyValue in the gateway's JSON shape (what `KeyValue.from_json` decodes)."""
    return {
        "key": _b64(kv.key),
        "value": _b64(kv.value),
        "create_revision": str(kv.create_revision),
        "mod_revision": str(kv.mod_revision),
        "version": str(kv.version),
        "lease": str(kv.lease),
    }


class FakeEtcdClient:
    """`EtcdClient`'s interface over a `FakeEtcd` (endpoints and CA are accepted, unused).

    `keeper` tells the fake whether the process owning this client is alive (leases granted
    through it are kept alive while it is); the hook side's client has none: its leases (sync
    lock) live until revoked or `ttl` after their grant. The client is the user named by the
    common name of `cert_file`, as etcd sees a client certificate (see `FakeEtcd.grant`).
    """

    def __init__(
        self,
        fake: FakeEtcd,
        *args: Any,
        keeper: Callable[[], bool] | None = None,
        timeout: float = 5.0,
        attempts: int = 3,
        cert_file: str | None = None,
        **kwargs: Any,
    ):
        self.fake = fake
        self.keeper = keeper
        self.timeout = timeout
        self.attempts = attempts
        self.user = _common_name(cert_file) if cert_file else None

    def _check(self, key: str, range_end: str | None = None) -> None:
        self.fake.check_access(self.user, key, range_end)

    def _check_txn(self, compare: list[dict], *branches: list[dict]) -> None:
        """Check every compare and the ops of both branches first, as etcd does."""
        for body in [*compare, *(next(iter(op.values())) for ops in branches for op in ops)]:
            end = _unb64(body["range_end"]).decode() if body.get("range_end") else None
            self._check(_unb64(body["key"]).decode(), end)

    def close(self) -> None:
        pass

    def range(
        self, key: str, range_end: str | None = None, *, limit: int = 0, count_only: bool = False
    ) -> RangeResult:
        self.fake.call("range")
        self._check(key, range_end)
        sort = op_range(key, range_end)["request_range"].get("sort_target")  # as the client asks
        kvs = self.fake._range(key, range_end, sort)
        count = len(kvs)  # etcd counts the whole range, whatever the limit
        if limit:
            kvs = kvs[:limit]
        return RangeResult(self.fake.revision, [] if count_only else kvs, count)

    def get(self, key: str) -> KeyValue | None:
        kvs = self.range(key).kvs
        return kvs[0] if kvs else None

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        self.fake.call("put")
        self._check(key)
        raw = value.encode() if isinstance(value, str) else value
        self.fake._apply([{"request_put": {"key": _b64(key), "value": _b64(raw), "lease": lease}}])
        return self.fake.revision

    def delete(self, key: str, range_end: str | None = None) -> int:
        self.fake.call("delete")
        self._check(key, range_end)
        body: dict[str, Any] = {"key": _b64(key)}
        if range_end is not None:
            body["range_end"] = _b64(range_end)
        responses = self.fake._apply([{"request_delete_range": body}])
        return int(responses[0]["response_delete_range"]["deleted"])

    def txn(
        self, compare: list[dict], success: list[dict], failure: list[dict] | None = None
    ) -> TxnResult:
        self.fake.call("txn")
        self._check_txn(compare, success, failure or [])
        return self.fake.txn(compare, success, failure or [])

    def lease_grant(self, ttl: int) -> int:
        self.fake.call("lease_grant")
        return self.fake.lease_grant(ttl, self.keeper)

    def lease_keepalive(self, lease: int) -> int:
        self.fake.call("lease_keepalive")
        known = self.fake.leases.get(lease)
        if known is None:
            return 0
        known.refreshed = self.fake.clock()
        return known.ttl

    def lease_revoke(self, lease: int) -> bool:
        self.fake.call("lease_revoke")
        return self.fake._drop_lease(lease)

    def watch(
        self,
        key: str,
        range_end: str | None = None,
        *,
        start_revision: int,
        no_put: bool = False,
        timeout: float | None = None,
    ) -> FakeWatch:
        """A watch inside a hook cannot wait for logical time to pass: see `FakeWatch.next`."""
        self.fake.call("watch")
        try:
            self._check(key, range_end)
        except EtcdError as error:  # etcd cancels the watch: the reason, no gRPC code
            raise EtcdError(f"etcd cancelled the watch: {error}") from None
        return FakeWatch(self.fake, key, range_end, start_revision, no_put)


class FakeWatch:
    """Replays history from `start_revision`; with nothing to replay it times out at once.

    Only the hook side's sync lock watches from inside a hook, where logical time stands still:
    nobody else can release during the wait, so "no event before the timeout" is what a real
    wait would end in too.
    """

    def __init__(self, fake: FakeEtcd, key: str, end: str | None, start: int, no_put: bool):
        self.fake, self.key, self.end, self.start, self.no_put = fake, key, end, start, no_put
        self.revision = fake.revision

    def next(self, timeout: float | None = None) -> WatchResponse:
        events = [
            e
            for e in self.fake.history
            if e.kv.mod_revision >= self.start
            and (self.key <= e.kv.key < self.end if self.end else e.kv.key == self.key)
            and not (self.no_put and e.kind == "PUT")
        ]
        if events:
            self.start = max(e.kv.mod_revision for e in events) + 1
            return WatchResponse(self.fake.revision, events)
        if timeout is None:
            raise EtcdError("fake etcd: a hook waited on a watch without a timeout (deadlock)")
        raise TimeoutError("no etcd watch event before the timeout")

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
