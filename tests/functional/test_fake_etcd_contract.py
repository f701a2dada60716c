"""The simulator's etcd (demo/fake_etcd.py) answers as the real etcd does, call for call.

The simulator and the unit tests run charmlibs.rollingops against `FakeEtcd`; a fake that is
more lenient than etcd, or answers in another order, would let them pass on code that fails on
a real charmed-etcd. So one script of client calls (the calls `_etcd_lock` makes: puts, ranges
with and without a limit, transactions with create-revision compares over keys and ranges,
deletes, leases, a watch from a past revision) runs against a real etcd set up like charmed-etcd
and against the fake, and every answer is compared. Revisions are compared relative to the
store's revision before the script (the real server has history of its own); lease ids only as
"attached or not".
"""

from __future__ import annotations

from typing import Any

import pytest
from charmlibs.rollingops._etcd_client import (
    EtcdError,
    KeyValue,
    compare_create,
    op_delete,
    op_put,
    op_range,
    prefix_end,
)

from demo.fake_etcd import NOT_FOUND, FakeEtcd, FakeEtcdClient
from tests.functional.etcd_server import OTHER_PREFIX, OUR_CN, EtcdServer


def _kv(kv: KeyValue, base: int) -> tuple[Any, ...]:
    created = kv.create_revision - base if kv.create_revision else 0
    return (kv.key, kv.value, created, kv.mod_revision - base, kv.version, bool(kv.lease))


def _script(client: Any, p: str) -> list[Any]:
    """Every answer of one fixed sequence of calls, revisions relative to the start."""
    base = client.range(p, prefix_end(p)).revision
    out: list[Any] = []

    def note(what: str, value: Any) -> None:
        out.append((what, value))

    for name, value in (("b", "1"), ("a", "2"), ("c", "3")):  # created out of key order
        note(f"put {name}", client.put(p + name, value) - base)
    whole = client.range(p, prefix_end(p))
    note("range (create order asked)", [_kv(kv, base) for kv in whole.kvs])
    note("range count", whole.count)
    limited = client.range(p, prefix_end(p), limit=2)
    note("limited range", ([_kv(kv, base) for kv in limited.kvs], limited.count))
    note("count only", (client.range(p, prefix_end(p), count_only=True).kvs, whole.count))
    note("get absent", client.get(p + "zz"))
    a = client.get(p + "a")
    assert a is not None
    raw = {"request_range": {"key": op_range(p)["request_range"]["key"]}}
    raw["request_range"]["range_end"] = op_range(p, prefix_end(p))["request_range"]["range_end"]
    for label, compare in (
        ("create equal", [compare_create(p + "a", "EQUAL", a.create_revision)]),
        ("create not equal", [compare_create(p + "a", "NOT_EQUAL", a.create_revision)]),
        ("absent key is 0", [compare_create(p + "q", "EQUAL", 0)]),
        ("empty range is one absent key", [compare_create(p + "q/", "LESS", 1, p + "q0")]),
        ("every key of a range", [compare_create(p, "GREATER", a.create_revision, p + "d")]),
        ("range all older", [compare_create(p, "LESS", a.create_revision + 5, p + "d")]),
    ):
        result = client.txn(compare, [op_range(p + "a")], [raw])
        note(
            label,
            (result.succeeded, result.revision - base, [[_kv(kv, base) for kv in result.kvs(0)]]),
        )
    put_then_read = client.txn(
        [compare_create(p + "n", "EQUAL", 0)],
        [op_put(p + "n", "x"), raw, op_delete(p + "zz")],
    )
    deleted = put_then_read.responses[2]["response_delete_range"].get("deleted", 0)
    note("one revision per write txn", (put_then_read.revision - base, int(deleted)))
    note("txn range sees its own put", [_kv(kv, base) for kv in put_then_read.kvs(1)])
    note("txn range in key order", [kv.key for kv in put_then_read.kvs(1)])
    note("delete nothing", (client.delete(p + "zz"), client.range(p).revision - base))
    note("overwrite keeps create", client.put(p + "a", "4") - base)
    note("after overwrite", _kv(client.get(p + "a") or a, base))
    lease = client.lease_grant(60)
    client.put(p + "l1", "on lease", lease)
    client.txn([], [op_put(p + "l2", "on lease", lease)])
    note("lease keys", [_kv(kv, base) for kv in client.range(p + "l", p + "m").kvs])
    note("revoke", client.lease_revoke(lease))
    note("revoke twice", client.lease_revoke(lease))
    note("after revoke", (client.range(p + "l", p + "m").kvs, client.range(p).revision - base))
    with pytest.raises(EtcdError) as unknown:
        client.txn([], [op_put(p + "x", "y", lease)])
    note("unknown lease", (unknown.value.code, client.get(p + "x")))
    note("delete range", client.delete(p + "a", p + "c"))
    note("left", [kv.key for kv in client.range(p, prefix_end(p)).kvs])
    with client.watch(p, prefix_end(p), start_revision=base + 1) as watch:
        events: list[tuple[str, str, int, int, bytes]] = []
        while len(events) < 11:
            response = watch.next(5.0)
            events += [
                (e.kind, e.kv.key, e.kv.mod_revision - base, e.kv.create_revision, e.kv.value)
                for e in response.events
            ]
    note("history", events)
    return out


def _access(client: Any, p: str) -> list[tuple[str, Any]]:
    """What RBAC lets our user do: each attempt's outcome, "ok" or the gRPC code refusing it."""
    other = OTHER_PREFIX + "x"
    attempts: dict[str, Any] = {
        "put in our prefix": lambda: client.put(p + "k", "v"),
        "get outside": lambda: client.get(other),
        "put outside": lambda: client.put(other, "v"),
        "range past our prefix": lambda: client.range(p, prefix_end(p) + "x"),
        "range over our prefix": lambda: client.range(p, prefix_end(p)),
        "txn compare outside": lambda: client.txn([compare_create(other, "EQUAL", 0)], []),
        "txn failure branch outside": lambda: client.txn([], [op_range(p)], [op_range(other)]),
        "delete outside": lambda: client.delete(other),
        "watch outside": lambda: client.watch(other, start_revision=1, timeout=5).close(),
    }
    outcomes: list[tuple[str, Any]] = []
    for what, attempt in attempts.items():
        try:
            attempt()
            outcomes.append((what, "ok"))
        except EtcdError as error:
            outcomes.append((what, error.code))
    return outcomes


@pytest.fixture
def fake_client() -> FakeEtcdClient:
    return FakeEtcdClient(FakeEtcd(clock=lambda: 0, ttl_ticks=60))


def test_the_fake_answers_every_call_of_the_script_as_real_etcd_does(
    etcd_server: EtcdServer, etcd_prefix: str, fake_client: FakeEtcdClient
):
    real = _script(etcd_server.client(), etcd_prefix)
    fake = _script(fake_client, etcd_prefix)
    assert [what for what, _ in fake] == [what for what, _ in real]
    differences = [(what, r, f) for (what, r), (_, f) in zip(real, fake, strict=True) if r != f]
    assert not differences, "\n".join(f"{w}: etcd {r!r}, fake {f!r}" for w, r, f in differences)


def test_the_script_sees_what_it_claims_on_real_etcd(etcd_server: EtcdServer, etcd_prefix: str):
    """The script's answers mean something: the cases it compares really differ."""
    answers = dict(_script(etcd_server.client(), etcd_prefix))
    assert [kv[0][-1] for kv in answers["range (create order asked)"]] == ["b", "a", "c"]
    assert answers["txn range in key order"] == [etcd_prefix + k for k in ("a", "b", "c", "n")]
    assert answers["limited range"][1] == 3  # the count is the whole range's
    assert answers["unknown lease"][0] == NOT_FOUND
    assert answers["revoke twice"] is False


def test_the_fake_refuses_what_rbac_refuses(etcd_server: EtcdServer, etcd_prefix: str):
    fake = FakeEtcd(clock=lambda: 0, ttl_ticks=60)
    fake.grant(OUR_CN, etcd_prefix)  # what the provider grants our common name
    ours = FakeEtcdClient(fake, cert_file=etcd_server.client_cert)
    real = _access(etcd_server.client(attempts=1), etcd_prefix)
    assert real[0] == ("put in our prefix", "ok") and real[1] == ("get outside", 7)
    assert _access(ours, etcd_prefix) == real
    stranger = FakeEtcdClient(fake)  # no certificate: nobody etcd would let in
    with pytest.raises(EtcdError):
        stranger.get(etcd_prefix + "k")
