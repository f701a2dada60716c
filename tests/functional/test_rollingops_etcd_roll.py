"""The etcd roll record (done / failed / strikes) and the halt after failures, on a real etcd.

etcd is the binary started by ``etcd_server.py`` as charmed-etcd sets it up (mTLS, RBAC on our
prefix only), so these tests also show that the new keys (``P roll/``, the pause key's values)
sit inside the prefix our user is granted. Each contender has its own client, lease and owner,
as separate units would. The results are recorded by ``EtcdLock.release_recorded``, the call
the worker makes after the granted hook wrote its result.
"""

from __future__ import annotations

import json
import logging
import threading

import pytest
from charmlibs.rollingops._controls import PAUSED_BY_LEADER
from charmlibs.rollingops._etcd_client import (
    EtcdClient,
    compare_create,
    compare_mod,
    compare_value,
    op_put,
)
from charmlibs.rollingops._etcd_lock import EtcdLock, Lease

from demo.fake_etcd import FakeEtcd, FakeEtcdClient
from tests.functional.etcd_server import EtcdServer

FAILED = "retry-release"


def make_lock(server: EtcdServer, prefix: str, n: int) -> EtcdLock:
    return EtcdLock(server.client(), prefix, f"m.app-{n}", f"app/{n}")


def roll(client: EtcdClient, prefix: str) -> dict | None:
    kv = client.get(prefix + "roll/m.app")
    return json.loads(kv.value) if kv else None


def test_a_failure_and_a_success_are_recorded_with_their_release(
    etcd_server: EtcdServer, etcd_prefix: str
):
    a, b = (make_lock(etcd_server, etcd_prefix, n) for n in (0, 1))
    with Lease(a.client, 10) as la, Lease(b.client, 10) as lb:
        token = a.acquire(la)
        b.create_ticket(lb)  # a waiter of the same application: the roll goes on
        assert a.release_recorded(token, FAILED, more_work=False, halt_after=None)
        assert roll(a.client, etcd_prefix) == {
            "active": True,
            "done": 0,
            "failed": ["app/0"],
            "strikes": 1,
        }
        token = b.acquire(lb, timeout=10)
        assert b.release_recorded(token, "release", more_work=False, halt_after=None)
    # Nothing of the application is left in the lock: the roll is over, its counts stay.
    assert roll(a.client, etcd_prefix) == {
        "active": False,
        "done": 1,
        "failed": ["app/0"],
        "strikes": 1,
    }
    state = a.app_state("m.app")
    assert (state.roll.done, state.roll.failed, state.paused) == (1, ["app/0"], None)


def test_the_halt_is_put_in_the_release_transaction_and_no_waiter_gets_a_slot(
    etcd_server: EtcdServer, etcd_prefix: str
):
    a, b = (make_lock(etcd_server, etcd_prefix, n) for n in (0, 1))
    with Lease(a.client, 10) as la, Lease(b.client, 10) as lb:
        token = a.acquire(la)
        b.create_ticket(lb)
        assert a.release_recorded(token, FAILED, more_work=False, halt_after=1)
        read = a.client.range(etcd_prefix, etcd_prefix + "\x7f")
        keys = {kv.key: kv for kv in read.kvs}
        pause, record = keys[a.pause_key], keys[a.roll_key]
        assert a.lock_key not in keys
        # One transaction: the slot's delete, the record and the pause key share one revision.
        assert pause.mod_revision == record.mod_revision == read.revision
        assert pause.value.decode() == "halted after 1 failed operation(s): app/0"
        with pytest.raises(TimeoutError):
            b.acquire(lb, timeout=1)
        assert a.app_state("m.app").paused == pause.value.decode()
        # The leader's pause and un-pause (window, pause action) leave a halt alone.
        a.set_paused(True)
        a.set_paused(False)
        assert a.client.get(a.pause_key).value == pause.value  # type: ignore[union-attr]


def test_resume_clears_the_strikes_and_the_halt_and_lets_the_waiter_in(
    etcd_server: EtcdServer, etcd_prefix: str
):
    a, b = (make_lock(etcd_server, etcd_prefix, n) for n in (0, 1))
    with Lease(a.client, 10) as la, Lease(b.client, 10) as lb:
        token = a.acquire(la)
        b.create_ticket(lb)
        a.release_recorded(token, FAILED, more_work=False, halt_after=1)
        assert b.resume()  # a halt is there: resume clears it (and says so)
        assert b.client.get(b.pause_key) is None
        assert roll(b.client, etcd_prefix) == {
            "active": True,
            "done": 0,
            "failed": ["app/0"],
            "strikes": 0,
        }
        assert not b.resume(force=False)  # nothing halted any more: nothing written
        token = b.acquire(lb, timeout=10)
        assert b.holds(token) and b.release(token)


def test_resume_in_a_closed_window_leaves_the_leaders_pause(
    etcd_server: EtcdServer, etcd_prefix: str
):
    a = make_lock(etcd_server, etcd_prefix, 0)
    with Lease(a.client, 10) as la:
        token = a.acquire(la)
        a.release_recorded(token, FAILED, more_work=True, halt_after=1)
    assert a.resume(keep_paused=True)
    assert a.client.get(a.pause_key).value == PAUSED_BY_LEADER.encode()  # type: ignore[union-attr]
    a.set_paused(False)  # the window opens: the leader's key goes
    assert a.client.get(a.pause_key) is None


def test_a_malformed_roll_record_is_logged_and_counts_restart(
    etcd_server: EtcdServer, etcd_prefix: str, caplog: pytest.LogCaptureFixture
):
    a = make_lock(etcd_server, etcd_prefix, 0)
    a.client.put(a.roll_key, '{"done": -1, "failed": [], "strikes": 0}')
    with caplog.at_level(logging.ERROR):
        assert a.app_state("m.app").roll.done == 0
        with Lease(a.client, 10) as la:
            token = a.acquire(la)
            assert a.release_recorded(token, "release", more_work=True, halt_after=1)
    assert "bad roll record" in caplog.text and "counts restart" in caplog.text
    assert roll(a.client, etcd_prefix) == {"active": True, "done": 1, "failed": [], "strikes": 0}


def test_a_stale_token_records_nothing(etcd_server: EtcdServer, etcd_prefix: str):
    a, b = (make_lock(etcd_server, etcd_prefix, n) for n in (0, 1))
    with Lease(a.client, 10) as la, Lease(b.client, 10) as lb:
        stale = a.acquire(la)
        assert a.release(stale)
        token = b.acquire(lb, timeout=10)
        assert not a.release_recorded(stale, FAILED, more_work=False, halt_after=1)
        assert roll(a.client, etcd_prefix) is None and a.client.get(a.pause_key) is None
        assert b.holds(token)


def test_concurrent_releases_lose_no_count(etcd_server: EtcdServer, etcd_prefix: str):
    """Two slots released at once, many times: the mod_revision compare retries, none is lost."""
    errors: list[BaseException] = []

    def contender(n: int) -> None:
        lock = make_lock(etcd_server, etcd_prefix, n)
        try:
            with Lease(lock.client, ttl=10) as lease:
                for _ in range(5):
                    token = lock.acquire(lease, timeout=60, slots=2)
                    lock.release_recorded(token, "release", more_work=True, halt_after=None)
        except BaseException as e:
            errors.append(e)
        finally:
            lock.close()

    threads = [threading.Thread(target=contender, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert roll(etcd_server.client(), etcd_prefix)["done"] == 20  # type: ignore[index]


@pytest.mark.parametrize(
    "compare",
    [
        compare_mod("k", "EQUAL", 0),  # absent: mod_revision 0
        compare_mod("absent", "EQUAL", 0),
        compare_mod("k", "GREATER", 0),
        compare_value("absent", "EQUAL", "x"),  # false on an absent key
        compare_value("absent", "NOT_EQUAL", "x"),  # false too
        compare_value("k", "EQUAL", "v"),
        compare_value("k", "EQUAL", "w"),
        compare_value("k", "LESS", "w"),
        compare_create("absent", "EQUAL", 0),
    ],
)
def test_the_simulators_etcd_answers_compares_as_etcd_does(
    etcd_server: EtcdServer, etcd_prefix: str, compare: dict
):
    """FakeEtcd (demo/) must be as strict as etcd for the compares the lock uses."""
    real = etcd_server.client()
    fake = FakeEtcdClient(FakeEtcd(lambda: 0, ttl_ticks=60))
    outcomes = []
    for client, prefix in ((real, etcd_prefix), (fake, etcd_prefix)):
        client.put(prefix + "k", "v")
        scoped = dict(compare, key=_rekey(compare["key"], prefix))
        outcomes.append(client.txn([scoped], [op_put(prefix + "out", "1")]).succeeded)
    assert outcomes[0] == outcomes[1], outcomes


def _rekey(b64_key: str, prefix: str) -> str:
    import base64

    return base64.b64encode((prefix + base64.b64decode(b64_key).decode()).encode()).decode()
