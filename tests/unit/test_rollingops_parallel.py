"""charmlibs.rollingops with max_parallel > 1: k peer grants, k etcd slots, fencing tokens.

The peer scheduler is tested on its own (`_peer.schedule` over decoded views, as the leader runs
it); the etcd semaphore on the fake etcd the simulator uses (the real `_etcd_lock` transactions).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from charmlibs.rollingops._models import Operation, ProcessingBackend
from charmlibs.rollingops._peer import AppView, UnitView, is_granted, schedule


def unit(name: str, ops: int = 1) -> UnitView:
    queue = [Operation(i + 1, "restart", {}, 2, 0, "") for i in range(ops)]
    return UnitView(name, queue=queue, seq=ops)


def units(n: int) -> dict[str, UnitView]:
    return {f"app/{i}": unit(f"app/{i}") for i in range(n)}


def test_k_grants_at_once_in_unit_order_with_increasing_tokens():
    app, members = AppView(), units(4)
    outcome = schedule(app, members, may_grant=True, max_parallel=2)
    assert [grant.unit for grant in outcome.granted] == ["app/0", "app/1"]
    assert [grant.unit for grant in app.grants] == ["app/0", "app/1"]
    assert app.grants[0].token < app.grants[1].token == app.token
    assert is_granted(app, members["app/1"]) and not is_granted(app, members["app/2"])


def test_one_grant_with_the_default_max_parallel():
    app = AppView()
    assert len(schedule(app, units(4), may_grant=True).granted) == 1
    assert len(app.grants) == 1


def test_a_released_slot_goes_to_the_next_unit_and_the_other_grant_stays():
    app, members = AppView(), units(4)
    schedule(app, members, may_grant=True, max_parallel=2)
    first = app.grants[0]
    members["app/0"].queue.clear()
    members["app/0"].done = _done(first.token)
    outcome = schedule(app, members, may_grant=True, max_parallel=2)
    assert [grant.unit for grant in outcome.released] == ["app/0"]
    assert [grant.unit for grant in app.grants] == ["app/1", "app/2"]


def test_lowering_max_parallel_mid_roll_revokes_nothing_and_applies_at_the_next_grant():
    app, members = AppView(), units(4)
    schedule(app, members, may_grant=True, max_parallel=3)
    assert len(app.grants) == 3
    assert schedule(app, members, may_grant=True, max_parallel=1).granted == []
    assert len(app.grants) == 3  # nothing revoked
    for name in ("app/0", "app/1"):
        members[name].queue.clear()
        members[name].done = _done(app.grant_of(name).token)  # type: ignore[union-attr]
    outcome = schedule(app, members, may_grant=True, max_parallel=1)
    assert outcome.granted == [] and [grant.unit for grant in app.grants] == ["app/2"]


def test_grants_survive_the_app_databag_round_trip():
    app, members = AppView(), units(3)
    schedule(app, members, may_grant=True, max_parallel=3)
    bag: dict[str, str] = {}
    app.write(bag)
    assert json.loads(bag["rollingops-grant"])["unit"] == "app/0"
    assert [g["unit"] for g in json.loads(bag["rollingops-more-grants"])] == ["app/1", "app/2"]
    again = AppView.read(bag)
    assert again.grants == app.grants and again.token == app.token
    again.grants = again.grants[:1]
    again.write(bag)
    assert "rollingops-more-grants" not in bag


@pytest.mark.parametrize("raw", ["[", "{}", '[{"unit": 3}]', '["x"]'])
def test_malformed_more_grants_are_logged_and_ignored(raw):
    bag = {"rollingops-version": "2", "rollingops-token": "5", "rollingops-more-grants": raw}
    view = AppView.read(bag)
    assert view.readable and view.grants == [] and view.errors


def test_no_peer_grant_for_a_unit_on_etcd_even_with_free_slots():
    app, members = AppView(), units(2)
    members["app/0"].backend = ProcessingBackend.ETCD
    schedule(app, members, may_grant=True, max_parallel=2)
    assert [grant.unit for grant in app.grants] == ["app/1"]


# --- the etcd semaphore (real EtcdLock transactions on the fake etcd) ---------------------------


def etcd_lock(fake, owner: str) -> tuple[Any, Any]:
    from charmlibs.rollingops._etcd_lock import EtcdLock

    from demo.fake_etcd import FakeEtcdClient

    client = FakeEtcdClient(fake, keeper=lambda: True)
    lock = EtcdLock(client, "/p/", f"model.app-{owner}", f"app/{owner}")  # type: ignore[arg-type]

    class Lease:
        id = client.lease_grant(60)
        lost = type("F", (), {"is_set": staticmethod(lambda: False)})()

    return lock, Lease


def acquire(lock, lease, slots: int) -> int:
    position = lock.create_ticket(lease)
    return lock._try_acquire(lease, position, False, slots)[0]


def test_two_slots_let_two_workers_in_the_third_waits_in_line():
    from demo.fake_etcd import FakeEtcd

    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    (a, la), (b, lb), (c, lc) = (etcd_lock(fake, str(i)) for i in range(3))
    ta, tb = acquire(a, la, 2), acquire(b, lb, 2)
    assert 0 < ta < tb and {"/p/lock", "/p/lock-1"} <= set(fake.keys)
    assert acquire(c, lc, 2) == 0  # both slots held: c waits with its ticket
    assert a.holds(ta) and b.holds(tb) and not b.holds(ta)
    assert a.busy_owners() == {"model.app-0", "model.app-1", "model.app-2"}
    assert b.release(tb) and "/p/lock-1" not in fake.keys
    tc = c._try_acquire(lc, c.create_ticket(lc), False, 2)[0]
    assert tc > tb > ta  # a later grant has a higher token, whichever slot it takes


def test_one_slot_workers_stay_out_while_slot_0_is_held_and_k2_ones_do_not():
    from demo.fake_etcd import FakeEtcd

    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    (a, la), (b, lb), (c, lc) = (etcd_lock(fake, str(i)) for i in range(3))
    assert acquire(a, la, 1)
    assert acquire(b, lb, 1) == 0  # max_parallel 1: slot 0 only
    assert acquire(c, lc, 2) == 0  # b's ticket is older: c waits behind it even with a free slot


def test_the_waiter_that_takes_a_slot_leaves_the_line_so_the_next_one_may_take_another():
    from demo.fake_etcd import FakeEtcd

    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    (a, la), (b, lb) = (etcd_lock(fake, str(i)) for i in range(2))
    pa, pb = a.create_ticket(la), b.create_ticket(lb)
    assert b._try_acquire(lb, pb, False, 2)[0] == 0  # a is older
    assert a._try_acquire(la, pa, False, 2)[0]
    assert not any(key.startswith("/p/waiting/model.app-0") for key in fake.keys)
    assert b._try_acquire(lb, pb, False, 2)[0]


def test_clean_up_releases_a_slot_other_than_0():
    from demo.fake_etcd import FakeEtcd

    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    (a, la), (b, lb) = (etcd_lock(fake, str(i)) for i in range(2))
    acquire(a, la, 2)
    acquire(b, lb, 2)
    b.cleanup_owner()
    assert "/p/lock-1" not in fake.keys and "/p/lock" in fake.keys


def test_a_paused_application_takes_no_slot_and_resume_lets_it_in():
    from demo.fake_etcd import FakeEtcd

    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    (a, la), (b, lb) = (etcd_lock(fake, str(i)) for i in range(2))
    a.set_paused(True)
    assert "/p/paused/model.app" in fake.keys
    assert acquire(a, la, 2) == 0 and acquire(b, lb, 1) == 0  # both slot counts wait
    assert a._relevant("/p/paused/model.app")  # its deletion wakes the waiters
    b.set_paused(False)
    assert a._try_acquire(la, a.create_ticket(la), False, 2)[0]
    other = etcd_lock(fake, "x")[0]
    other.pause_key = "/p/paused/model.other"  # another application sharing the cluster_id
    other.set_paused(True)
    assert b._try_acquire(lb, b.create_ticket(lb), False, 2)[0]  # its pause is not ours


def test_the_line_lists_our_holders_and_waiters_in_grant_order():
    from demo.fake_etcd import FakeEtcd

    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    locks = [etcd_lock(fake, str(i)) for i in (3, 1, 2)]
    acquire(*locks[0], 1)
    for lock, lease in locks[1:]:
        assert acquire(lock, lease, 1) == 0
    state = locks[0][0].app_state("model.app")
    assert (state.holders, state.queue) == (["app/3"], ["app/1", "app/2"])
    other = locks[0][0].app_state("model.other")
    assert (other.holders, other.queue) == ([], [])


def _done(token: int):
    from charmlibs.rollingops._models import Done

    return Done(token, 1, "release")
