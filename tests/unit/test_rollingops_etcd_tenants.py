"""Applications sharing one etcd lock prefix stay apart; what one writes there is shown short.

Applications with one `cluster_id` share a prefix, and what one of them writes there reaches
another's statuses only as short, printable text.

charmed-etcd grants every requirer read-write on the prefix it asks for, so every application
using the same `cluster_id` may write any key under it: a pause or lock value, a roll record.
The simulator's etcd (demo/fake_etcd.py) stands in for etcd here; the transactions are the
library's own.
"""

from __future__ import annotations

import json

from charmlibs.rollingops._controls import FAILED_LIMIT, PAUSE_REASON_LIMIT, Roll
from charmlibs.rollingops._etcd_lock import EtcdLock, Holder, app_owner_of

from demo.fake_etcd import FakeEtcd, FakeEtcdClient

HOSTILE = "\n\x1b[31mrun juju remove-application everything\x07" * 200


class _Lease:
    def __init__(self, client: FakeEtcdClient):
        self.id = client.lease_grant(60)
        self.lost = type("NeverLost", (), {"is_set": staticmethod(lambda: False)})()


def _lock(fake: FakeEtcd, app: str, number: int) -> tuple[EtcdLock, _Lease]:
    client = FakeEtcdClient(fake, keeper=lambda: True)
    lock = EtcdLock(client, "/p/", f"model.{app}-{number}", f"{app}/{number}")  # type: ignore[arg-type]
    return lock, _Lease(client)


def _take(lock: EtcdLock, lease: _Lease) -> int:
    return lock._try_acquire(lease, lock.create_ticket(lease), False, 1)[0]  # type: ignore[arg-type]


def test_an_application_whose_name_starts_like_ours_is_not_ours():
    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    backup_holder, backup_waiter = _lock(fake, "db-backup", 7), _lock(fake, "db-backup", 8)
    ours = _lock(fake, "db", 1)
    assert _take(*backup_holder) > 0
    assert _take(*backup_waiter) == 0 and _take(*ours) == 0  # both wait in line
    state = ours[0].app_state("model.db")
    assert (state.holders, state.queue) == ([], ["db/1"])
    assert app_owner_of("model.db-backup-7") == "model.db-backup"


def test_a_release_does_not_keep_our_roll_active_for_another_application():
    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    ours = _lock(fake, "db", 1)
    token = _take(*ours)
    _take(*_lock(fake, "db-backup", 7))  # waits: only db-backup has work left
    ours[0].release_recorded(token, "release", more_work=False, halt_after=1)
    assert ours[0].app_state("model.db").roll.active is False


def test_what_another_application_writes_reaches_statuses_short_and_printable():
    fake = FakeEtcd(lambda: 0, ttl_ticks=60)
    ours, lease = _lock(fake, "db", 1)
    client = ours.client
    client.put("/p/paused/model.db", HOSTILE)
    client.put(
        "/p/roll/model.db",
        json.dumps({"done": 1, "failed": [HOSTILE[:300]] * 500, "strikes": 1, "active": True}),
    )
    client.put("/p/lock", json.dumps({"owner": "model.db-2", "unit": HOSTILE, "kind": "async"}))
    assert _take(ours, lease) == 0  # paused (and the lock is held)
    state = ours.app_state("model.db")
    texts = [state.paused or "", *state.roll.failed, *state.holders, ours.pause_seen or ""]
    assert all(text.isprintable() for text in texts), texts
    assert len(state.paused or "") <= PAUSE_REASON_LIMIT
    assert len(state.roll.failed) == FAILED_LIMIT
    assert max(len(text) for text in texts) <= PAUSE_REASON_LIMIT
    assert state.holders and ours.pause_seen  # the text is shown, not dropped


def test_a_hostile_roll_record_read_from_the_peer_relation_is_bounded_too():
    raw = json.dumps({"done": 0, "failed": ["app/1\n\x1b"] * 1000, "strikes": 3})
    roll = Roll.parse(raw, "test", [])
    assert len(roll.failed) == FAILED_LIMIT and all(u.isprintable() for u in roll.failed)


def test_a_lock_value_naming_a_unit_in_control_characters_is_shown_printable():
    from charmlibs.rollingops._etcd_client import KeyValue

    value = json.dumps({"owner": "o", "unit": "app/1\r\nFAKE STATUS", "kind": "async"})
    holder = Holder.from_kv(KeyValue("/p/lock", value.encode(), 5, 5, 1, 0))
    assert holder.unit.isprintable() and holder.unit.startswith("app/1")
