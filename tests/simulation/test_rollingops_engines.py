"""The rollingops-peer and rollingops-etcd simulator engines, and the fake etcd under them.

The long runs are the soak (`python -m tests.simulation.soak --engine rollingops-etcd ...`);
these tests pin the pieces: the fake etcd's semantics (what `_etcd_lock` relies on), that the
etcd engine really runs its critical sections under etcd grants, that a few faulted schedules of
each engine hold every invariant.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from charmlibs.rollingops import _etcd_client
from charmlibs.rollingops._etcd_client import EtcdError
from charmlibs.rollingops._etcd_lock import KEY_ROOT, EtcdLock
from ops import testing

from demo.engines import ENGINES
from demo.etcd_contract import expected_request_id
from demo.etcd_provider import SPEC_DIR as PROVIDER_DIR
from demo.etcd_provider import EtcdProviderCharm
from demo.fake_etcd import FakeEtcd, FakeEtcdClient
from demo.rollingops_engines import world_of
from jujusim.simulator import Simulator

from . import soak


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)  # the library logs every fallback: expected here
    yield
    logging.disable(logging.NOTSET)


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def lock_for(fake: FakeEtcd, owner: str, keeper=None) -> tuple[EtcdLock, Any]:
    client: Any = FakeEtcdClient(fake, keeper=keeper)
    lock = EtcdLock(client, "/p/", owner, owner)

    class Lease:
        id = client.lease_grant(60)
        lost = type("F", (), {"is_set": staticmethod(lambda: False)})()

    return lock, Lease


def test_fake_etcd_tickets_acquire_in_order_and_release_is_token_guarded():
    fake = FakeEtcd(Clock(), ttl_ticks=10)
    a, lease_a = lock_for(fake, "a", keeper=lambda: True)
    b, lease_b = lock_for(fake, "b", keeper=lambda: True)
    pos_a, pos_b = a.create_ticket(lease_a), b.create_ticket(lease_b)
    assert pos_a < pos_b
    assert b._try_acquire(lease_b, pos_b, False)[0] == 0  # not b's turn: a's ticket is older
    token, _, _ = a._try_acquire(lease_a, pos_a, False)
    assert token == fake.keys["/p/lock"].create_revision
    assert not b.release(token - 1)  # a stale token deletes no lock (only b's own ticket)
    assert a.holds(token) and not b.holds(token)
    assert a.release(token) and "/p/lock" not in fake.keys
    pos_b = b.create_ticket(lease_b)
    token_b, _, _ = b._try_acquire(lease_b, pos_b, False)
    assert token_b > token  # fencing tokens increase


def test_fake_etcd_lease_expiry_deletes_keys_and_outage_raises():
    clock = Clock()
    fake = FakeEtcd(clock, ttl_ticks=5)
    alive = [True]
    a, lease = lock_for(fake, "a", keeper=lambda: alive[0])
    a.create_ticket(lease)
    clock.now = 100
    fake.refresh()
    assert fake.expire() == [] and "/p/waiting/a" in fake.keys  # kept alive
    alive[0] = False  # the worker died at t=100
    assert fake.next_expiry() == 105
    clock.now = 105
    assert fake.expire() == [lease.id] and "/p/waiting/a" not in fake.keys
    fake.outage(106, 110)
    clock.now = 107
    with pytest.raises(_etcd_client.EtcdConnectionError):
        a.holder()
    clock.now = 110
    assert a.holder() is None


_SETTLED: dict[tuple[str, int, bool], tuple[Any, Simulator]] = {}


def run_one(engine_name: str, units: int, seed: int, retry: str, faults: bool) -> dict:
    """One soak schedule (a fork of a settled deployment, settled once per engine and switch)."""
    engine = ENGINES[engine_name]
    key = (engine_name, units, seed % 2 == 0)
    if key not in _SETTLED:
        fakes = engine.fakes(Simulator())
        with fakes.installed():
            _SETTLED[key] = (
                fakes,
                soak.settle(engine, units, fakes, leader_sees_own_app_writes=key[2]),
            )
    fakes, base = _SETTLED[key]
    with fakes.installed():
        return soak.run_schedule(base, fakes, engine, seed, retry, faults)


def test_etcd_engine_runs_critical_sections_under_etcd_grants():
    result = run_one("rollingops-etcd", 3, seed=5, retry="none", faults=False)
    sim = result["sim"]
    intervals = sim.recorder.intervals
    assert len(intervals) == 3 and all(i.committed for i in intervals)
    world = world_of(sim)
    assert world.started >= 1 and world.fake.calls > 0
    assert all(i.granted for i in intervals)  # I2: each one held the etcd lock at entry
    assert result["violations"] == result["liveness"] == result["uncaught"] == []
    # RBAC was on: the provider granted each requirer's certificate its requested prefix only,
    # and every call of the roll (hook side and workers) stayed inside it.
    assert world.fake.permissions is not None and world.fake.denied == 0
    ((_user, prefixes),) = world.fake.permissions.items()
    assert len(prefixes) == 1 and next(iter(prefixes)).startswith(KEY_ROOT)
    assert world.fake.keys and all(key.startswith(tuple(prefixes)) for key in world.fake.keys)
    with pytest.raises(EtcdError):  # and it refuses: another key, or no certificate
        FakeEtcdClient(world.fake).get(next(iter(world.fake.keys)))
    assert world.fake.denied == 1


@pytest.mark.parametrize("engine", ["rollingops-peer", "rollingops-etcd"])
@pytest.mark.parametrize("seed", [3])
def test_faulted_schedules_hold_every_invariant(engine, seed):
    result = run_one(engine, 3, seed=seed, retry="backoff" if seed % 2 else "none", faults=True)
    assert result["violations"] == [], result["faults"]
    assert result["liveness"] == [], result["faults"]
    assert result["uncaught"] == [], result["faults"]


# --- the stand-in etcd provider refuses what charmed-etcd refuses ------------------------------


def _provider_run(requirer_bag: dict[str, str], secrets=()) -> testing.State:
    import yaml

    meta = yaml.safe_load((PROVIDER_DIR / "metadata.yaml").read_text())
    ctx = testing.Context(EtcdProviderCharm, meta=meta, app_name="etcd", unit_id=0)
    rel = testing.Relation("etcd-client", remote_app_name="app", remote_app_data=requirer_bag)
    state = testing.State(leader=True, relations={rel}, secrets=set(secrets))
    return ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)


def _v1(**request) -> dict[str, str]:
    return {"version": "v1", "requests": json.dumps([request])}


def _request(mtls: str, salt: str = "AbCdEfGh12345678") -> dict[str, str]:
    rid = expected_request_id("/p/", salt)
    return {"resource": "/p/", "salt": salt, "request-id": rid, "secret-mtls": mtls}


@pytest.mark.parametrize("mtls", [None, "", "rollingops-etcd-mtls", "secret"])
def test_stand_in_provider_fails_its_hook_on_a_bad_secret_mtls(mtls):
    request = _request("secret:x")
    if mtls is None:
        del request["secret-mtls"]
    else:
        request["secret-mtls"] = mtls
    with pytest.raises(testing.errors.UncaughtCharmError, match="secret-mtls"):
        _provider_run(_v1(**request))


def test_stand_in_provider_does_not_answer_what_it_cannot_parse():
    bad_salt = _request("secret:x", salt="short")
    bad_id = {**_request("secret:x"), "request-id": "0" * 16}
    for bag in (_v1(**bad_salt), _v1(**bad_id), {"version": "v0", "prefix": "/p/"},
                {**_v1(**_request("secret:x")), "prefix": "/p/"}):  # fmt: skip
        out = _provider_run(bag)
        assert "requests" not in next(iter(out.relations)).local_app_data, bag


def test_stand_in_provider_needs_the_mtls_secret_granted():
    with pytest.raises(testing.errors.UncaughtCharmError, match="SecretNotFound"):
        _provider_run(_v1(**_request("secret:not-granted")))


def test_stand_in_provider_publishes_the_nested_v1_answer():
    from charmlibs.rollingops import _certs

    cert = _certs.generate_client_credentials("rollingops-x-app")["client-cert"]
    mtls = testing.Secret({"mtls-cert": cert})
    out = _provider_run(_v1(**_request(mtls.id)), secrets=[mtls])
    rel = next(iter(out.relations))
    assert set(rel.local_app_data) == {"requests"}  # nothing at the top level
    (answer,) = json.loads(rel.local_app_data["requests"])
    assert answer["request-id"] == expected_request_id("/p/", "AbCdEfGh12345678")
    user = next(s for s in out.secrets if s.id == answer["secret-user"])
    tls = next(s for s in out.secrets if s.id == answer["secret-tls"])
    assert user.latest_content["username"] == "rollingops-x-app"
    assert "BEGIN CERTIFICATE" in tls.latest_content["tls-ca"]
    assert rel.id in user.remote_grants and rel.id in tls.remote_grants


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_etcd_rolling_restart_costs_hooks_linear_in_units(seed):
    """Issue 15: with etcd healthy, N units cost at most 4N + 10 hooks (2N: action + grant).

    Mirroring each etcd transition in the peer databags woke every unit per transition: 312
    hooks at N=10.
    """
    units = 10
    result = run_one("rollingops-etcd", units, seed=seed, retry="none", faults=False)
    figures = result["figures"]
    assert result["violations"] == result["liveness"] == result["uncaught"] == []
    assert figures["operations"] == units
    assert figures["hooks_total"] <= 4 * units + 10, figures["hooks_per_kind"]
