"""The demo charm's `rollingops` restart engine (src/restart/rollingops.py) with the real library.

Mocked, because they cannot exist here: the Juju controller (ops.testing), the demo service
(FakeWorkload, conftest.py) and the juju-exec wake-up process (subprocess.Popen is recorded).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest
import yaml
from charmlibs.rollingops import _dispatch
from ops import testing

from demo.etcd_contract import expected_request_id
from tests.unit.conftest import ROOT, charm_context

# Juju's planned unit count (goal-state): at least the units a test shows, so no unit looks
# like it is being removed (a holder waits while one is: RollingOpsManager._unit_leaving).
PLANNED = 9

PEER = "rollingops"
APP = "coordinated-ops"


@pytest.fixture
def spawns(monkeypatch):
    calls: list[list[str]] = []
    real_popen = subprocess.Popen

    def popen(argv, **kwargs):
        if argv[0] != "/usr/bin/juju-exec":  # e.g. goal-state: the real thing
            return real_popen(argv, **kwargs)
        calls.append(list(argv))

    monkeypatch.setattr(_dispatch, "juju_exec_path", lambda: "/usr/bin/juju-exec")
    monkeypatch.setattr(subprocess, "Popen", popen)
    return calls


@pytest.fixture
def running(fake_workload):
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    return fake_workload


def ctx(unit_id=0):
    return charm_context(app_name=APP, unit_id=unit_id)


def journal(tmp_path) -> list[dict]:
    path = tmp_path / "var/lib/coordinated-ops/coordinated-ops-journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def op(id_, delay=0, attempt=0):
    return {"id": id_, "callback_id": "restart", "kwargs": {"delay": delay}, "max_retry": 2,
            "attempt": attempt, "requested_at": "2026-01-01T00:00:00.000000Z"}  # fmt: skip


def unit_bag(*ops_, done=None):
    bag = {
        "rollingops-version": "1",
        "rollingops-queue": json.dumps(list(ops_)),
        "rollingops-seq": str(max([0, *(o["id"] for o in ops_)])),
        "rollingops-intent": "request" if ops_ else "idle",
        "rollingops-backend": "peer",
    }
    if done:
        bag["rollingops-done"] = json.dumps(done)
    return bag


def app_bag(token, grant=None):
    bag = {"rollingops-version": "1", "rollingops-token": str(token), "rollingops-mode": "peer"}
    if grant:
        bag["rollingops-grant"] = json.dumps(grant)
    return bag


def restart_action(context, state, **params):
    """Run `restart` with the actions.yaml defaults applied (Juju does; ops.testing does not)."""
    spec = yaml.safe_load((ROOT / "actions.yaml").read_text())["restart"]["params"]
    defaults = {name: param["default"] for name, param in spec.items() if "default" in param}
    return context.run(context.on.action("restart", params={**defaults, **params}), state)


def test_rollingops_is_the_default_engine_and_queues_on_a_non_leader(running):
    context = ctx(1)
    rel = testing.PeerRelation(PEER, peers_data={0: {}})
    out = restart_action(context, testing.State(planned_units=PLANNED, relations={rel}), delay=3)
    assert (context.action_results or {})["engine"] == "rollingops"
    assert "peer backend" in (context.action_results or {})["message"]
    bag = out.get_relation(rel.id).local_unit_data
    (queued,) = json.loads(bag["rollingops-queue"])
    assert (queued["callback_id"], queued["kwargs"], queued["max_retry"]) == (
        "restart", {"delay": 3}, 2,
    )  # fmt: skip
    assert out.unit_status == testing.WaitingStatus("restart queued (rollingops, peer)")
    assert ("restart",) not in running.calls


def test_without_peer_relation_the_action_fails_clearly(running):
    with pytest.raises(testing.ActionFailed, match="peer relation 'rollingops' is not ready"):
        restart_action(
            ctx(0),
            testing.State(
                planned_units=PLANNED,
            ),
        )


def test_leader_alone_restarts_in_the_wakeup_and_journals_the_token(running, spawns, tmp_path):
    context = ctx(0)
    rel = testing.PeerRelation(PEER)
    state = testing.State(planned_units=PLANNED, leader=True, relations={rel})
    out = restart_action(context, state)
    assert len(spawns) == 1 and ("restart",) not in running.calls
    assert out.app_status == testing.MaintenanceStatus("restart 1/1: coordinated-ops/0")

    r = out.get_relation(rel.id)
    rel = dataclasses.replace(
        rel, local_app_data=dict(r.local_app_data), local_unit_data=dict(r.local_unit_data)
    )
    state = dataclasses.replace(out, relations={rel})
    with context(context.on.update_status(), state) as mgr:
        mgr.charm.on.rollingops_lock_granted.emit()
        out = mgr.run()
    assert running.calls.count(("restart",)) == 1
    (line,) = journal(tmp_path)
    assert (line["engine"], line["token"], line["result"]) == ("rollingops", 1, "ok")
    done = json.loads(out.get_relation(rel.id).local_unit_data["rollingops-done"])
    assert done == {"token": 1, "op": 1, "result": "release"}


def test_granted_non_leader_restarts_with_the_grant_token(running, tmp_path):
    context = ctx(1)
    rel = testing.PeerRelation(
        PEER,
        local_unit_data=unit_bag(op(1)),
        local_app_data=app_bag(7, {"unit": f"{APP}/1", "token": 7, "op": 1}),
        peers_data={0: {}},
    )
    out = context.run(
        context.on.relation_changed(rel, remote_unit=0),
        testing.State(planned_units=PLANNED, relations={rel}),
    )
    assert running.calls == [("restart",)]
    assert [line["token"] for line in journal(tmp_path)] == [7]
    bag = out.get_relation(rel.id).local_unit_data
    assert json.loads(bag["rollingops-done"]) == {"token": 7, "op": 1, "result": "release"}


def test_a_failed_restart_releases_for_a_retry(running, tmp_path):
    running.healthy_after_restart = False
    context = ctx(1)
    rel = testing.PeerRelation(
        PEER,
        local_unit_data=unit_bag(op(1)),
        local_app_data=app_bag(7, {"unit": f"{APP}/1", "token": 7, "op": 1}),
        peers_data={0: {}},
    )
    out = context.run(
        context.on.relation_changed(rel, remote_unit=0),
        testing.State(planned_units=PLANNED, relations={rel}),
    )
    bag = out.get_relation(rel.id).local_unit_data
    assert json.loads(bag["rollingops-done"])["result"] == "retry-release"
    assert json.loads(bag["rollingops-queue"])[0]["attempt"] == 1
    assert journal(tmp_path)[0]["result"] == "failed"


def test_sync_restart_on_the_leader_runs_inside_the_action(running, tmp_path):
    context = ctx(0)
    rel = testing.PeerRelation(PEER, peers_data={1: unit_bag()})
    restart_action(
        context, testing.State(planned_units=PLANNED, leader=True, relations={rel}), sync=True
    )
    assert running.calls == [("restart",)]
    message = (context.action_results or {})["message"]
    # The peer sync lock has no fencing token: no "token None" in the message.
    assert message == "restarted synchronously under the rollingops sync lock (peer backend)"
    assert [line["engine"] for line in journal(tmp_path)] == ["rollingops"]


def test_sync_restart_waits_for_no_one_while_another_unit_holds_the_lock(running):
    context = ctx(0)
    rel = testing.PeerRelation(
        PEER,
        local_app_data=app_bag(3, {"unit": f"{APP}/1", "token": 3, "op": 1}),
        peers_data={1: unit_bag(op(1))},
    )
    with pytest.raises(testing.ActionFailed, match="lock busy"):
        restart_action(
            context, testing.State(planned_units=PLANNED, leader=True, relations={rel}), sync=True
        )
    assert ("restart",) not in running.calls


def test_sync_restart_without_peer_relation_says_so_not_lock_busy(running):
    with pytest.raises(testing.ActionFailed) as info:
        restart_action(ctx(0), testing.State(planned_units=PLANNED, leader=True), sync=True)
    assert info.value.message == (
        "the peer relation 'rollingops' is not ready yet; run the action again once the unit "
        "has started"
    )
    assert ("restart",) not in running.calls


def test_sync_restart_on_a_non_leader_without_etcd_fails_clearly(running):
    context = ctx(1)
    rel = testing.PeerRelation(PEER, peers_data={0: {}})
    with pytest.raises(testing.ActionFailed, match="only the leader can restart synchronously"):
        restart_action(context, testing.State(planned_units=PLANNED, relations={rel}), sync=True)
    assert ("restart",) not in running.calls


def test_sync_is_refused_for_engines_without_a_sync_mode(running):
    context = ctx(0)
    state = testing.State(planned_units=PLANNED, relations={testing.PeerRelation("restart")})
    with pytest.raises(testing.ActionFailed, match="sync"):
        restart_action(context, state, engine="v0", sync=True)


def test_another_engine_is_refused_while_a_rollingops_restart_is_queued(running):
    context = ctx(0)
    rel = testing.PeerRelation(PEER, peers_data={1: unit_bag(op(1))})
    state = testing.State(planned_units=PLANNED, relations={rel, testing.PeerRelation("restart")})
    with pytest.raises(testing.ActionFailed, match="'rollingops' lock is in flight"):
        restart_action(context, state, engine="v0")


# --- etcd's answer refused (issue 15, bad input): the status says why, sync fails cleanly ------


def _etcd_refused_state(tmp_path, *, leader=False, unit=None):
    """Peer and etcd relations where the provider's `requests` is not JSON."""
    app = {
        "rollingops-version": "1",
        "rollingops-mode": "etcd",
        "rollingops-client-secret-id": "secret:client",
        "rollingops-etcd-request": json.dumps({
            "resource": "/coordinated-ops/rollingops/v1/coordinated-ops/",
            "salt": "AbCdEfGh12345678", "secret-mtls": "secret:mtls",
            "request-id": expected_request_id(
                "/coordinated-ops/rollingops/v1/coordinated-ops/", "AbCdEfGh12345678"),
        }),
    }  # fmt: skip
    rel = testing.PeerRelation(PEER, local_app_data=app, local_unit_data=unit or {})
    etcd = testing.Relation("etcd", remote_app_name="etcd", remote_app_data={"requests": "{oops"})
    return testing.State(planned_units=PLANNED, leader=leader, relations={rel, etcd}), etcd


def test_a_refused_etcd_answer_shows_in_the_unit_status(running, tmp_path):
    state, etcd = _etcd_refused_state(tmp_path)
    out = ctx(1).run(ctx(1).on.relation_changed(etcd, remote_unit=0), state)
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "etcd refused" in out.unit_status.message and "not JSON" in out.unit_status.message
    out = ctx(1).run(ctx(1).on.update_status(), out)  # every later hook still shows it
    assert "not JSON" in out.unit_status.message


def test_sync_restart_with_an_unusable_etcd_config_fails_the_action_with_a_message(
    running, tmp_path
):
    """config.json from an older version, its endpoint without a port: no exception escapes."""
    path = tmp_path / "var/lib/rollingops/etcd"
    path.mkdir(parents=True)
    for name in ("server-ca.pem", "client-cert.pem", "client-key.pem"):
        (path / name).write_text("x")
    (path / "config.json").write_text(json.dumps({
        "version": 1, "endpoints": ["10.1.0.5"], "prefix": "/p/", "owner": "o",
        "server_ca": str(path / "server-ca.pem"), "cert": str(path / "client-cert.pem"),
        "key": str(path / "client-key.pem"),
    }))  # fmt: skip
    unit = {"rollingops-version": "1", "rollingops-backend": "etcd", "rollingops-seq": "0",
            "rollingops-queue": "[]"}  # fmt: skip
    state, _ = _etcd_refused_state(tmp_path, unit=unit)
    with pytest.raises(testing.ActionFailed, match="only the leader can restart synchronously"):
        restart_action(ctx(1), state, sync=True)
    assert ("restart",) not in running.calls


def test_malformed_peer_data_is_shown_and_ignored(running):
    context = ctx(0)
    bad = {**unit_bag(op(1)), "rollingops-seq": "9" * 309}  # raised OverflowError before
    rel = testing.PeerRelation(PEER, local_app_data=app_bag(0), peers_data={1: bad})
    out = context.run(
        context.on.update_status(),
        testing.State(planned_units=PLANNED, leader=True, relations={rel}),
    )
    assert out.unit_status.name == "blocked"
    assert "ignoring malformed 'rollingops' data: unit coordinated-ops/1: bad rollingops-seq" in (
        out.unit_status.message
    )
