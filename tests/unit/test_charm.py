"""The demo charm's own wiring: install, start, config, status, and the restart action.

The workload is the in-memory FakeWorkload (conftest.py); the v0 lock is the real library.
"""

import json
from unittest import mock

import pytest
from ops import testing

from tests.unit.conftest import charm_context

PEER = "restart"
APP = "coordinated-ops"


@pytest.fixture
def ctx(fake_workload):
    return charm_context(app_name=APP, unit_id=0)


def _peer(**kwargs):
    return testing.PeerRelation(PEER, **kwargs)


def test_install_installs_the_default_version(ctx, fake_workload):
    ctx.run(ctx.on.install(), testing.State())
    assert fake_workload.calls == [("install", "1.0.0")]


def test_start_configures_and_runs_the_service(ctx, fake_workload):
    out = ctx.run(ctx.on.start(), testing.State())
    assert fake_workload.running
    assert fake_workload.config == (8080, 1.0)
    assert out.unit_status == testing.ActiveStatus("serving 1.0.0")
    assert out.workload_version == "1.0.0"


def test_config_changed_never_restarts_the_service(ctx, fake_workload):
    ctx.run(ctx.on.start(), testing.State())
    ctx.run(ctx.on.config_changed(), testing.State(config={"startup-seconds": 2.0}))
    assert ("restart",) not in fake_workload.calls
    assert fake_workload.config == (8080, 2.0)


@pytest.mark.parametrize(
    "config",
    [{"port": 80}, {"port": 65536}, {"startup-seconds": -1.0}, {"startup-seconds": 30.5}],
)
def test_invalid_config_blocks_and_does_not_touch_the_service(ctx, fake_workload, config):
    out = ctx.run(ctx.on.config_changed(), testing.State(config=config))
    assert out.unit_status == testing.BlockedStatus("invalid config: see `juju debug-log`")
    assert fake_workload.calls == []


@pytest.mark.parametrize("config", [{"port": 1024}, {"port": 65535, "startup-seconds": 30.0}])
def test_config_at_the_bounds_is_valid(ctx, fake_workload, config):
    out = ctx.run(ctx.on.config_changed(), testing.State(config=config))
    assert out.unit_status == testing.ActiveStatus("serving 1.0.0")


def test_unhealthy_service_blocks_with_what_to_do(ctx, fake_workload):
    fake_workload.installed = "1.0.0"
    out = ctx.run(ctx.on.update_status(), testing.State())
    assert out.unit_status == testing.BlockedStatus(
        "demo service not healthy: run the restart action"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"delay": -1}, "delay: Input should be greater than or equal to 0"),
        ({"engine": "bogus"}, "engine: unknown engine 'bogus'"),
    ],
)
def test_restart_with_bad_params_fails_naming_the_parameter(ctx, params, message):
    state = testing.State(relations=[_peer()])
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("restart", params=params), state)
    assert message in failure.value.message
    after: testing.State | None = failure.value.state  # type: ignore[assignment]
    assert after is not None
    (peer_after,) = [r for r in after.relations if r.endpoint == PEER]
    assert peer_after.local_unit_data == state.get_relations(PEER)[0].local_unit_data


def test_restart_without_peer_relation_fails_clearly(ctx):
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("restart", params={"engine": "v0"}), testing.State())
    assert "peer relation 'restart' is not ready" in failure.value.message


def test_restart_on_a_non_leader_requests_the_lock(ctx, fake_workload):
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    state = testing.State(relations=[_peer(peers_data={1: {}})])
    out = ctx.run(ctx.on.action("restart", params={"engine": "v0", "delay": 0}), state)
    assert ctx.action_results["engine"] == "v0"
    assert out.get_relations(PEER)[0].local_unit_data["state"] == "acquire"
    assert out.unit_status == testing.WaitingStatus("Awaiting restart operation")
    assert ("restart",) not in fake_workload.calls


def test_granted_unit_restarts_and_journals_the_interval(ctx, fake_workload, tmp_path):
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    relation = _peer(
        local_unit_data={"state": "acquire"},
        local_app_data={f"<ops.model.Unit {APP}/0>": "granted"},
        peers_data={1: {}},
    )
    out = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=1), testing.State(relations=[relation])
    )
    assert fake_workload.calls == [("restart",)]
    assert out.get_relations(PEER)[0].local_unit_data["state"] == "release"
    (line,) = [
        json.loads(raw)
        for raw in (tmp_path / "var/lib/coordinated-ops/coordinated-ops-journal.jsonl")
        .read_text()
        .splitlines()
    ]
    assert (line["unit"], line["operation"], line["engine"], line["result"]) == (
        f"{APP}/0",
        "restart",
        "v0",
        "ok",
    )


def test_a_restart_that_fails_releases_the_lock_and_blocks(ctx, fake_workload):
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    fake_workload.healthy_after_restart = False
    relation = _peer(
        local_unit_data={"state": "acquire"},
        local_app_data={f"<ops.model.Unit {APP}/0>": "granted"},
        peers_data={1: {}},
    )
    out = ctx.run(
        ctx.on.relation_changed(relation, remote_unit=1), testing.State(relations=[relation])
    )
    assert out.get_relations(PEER)[0].local_unit_data["state"] == "release"
    assert out.unit_status.name == "blocked"


def test_leader_alone_grants_itself_then_restarts_in_the_next_dispatch(ctx, fake_workload):
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    state = testing.State(leader=True, relations=[_peer()])
    with mock.patch(
        "charms.rolling_ops.v0.rollingops.RollingOpsManager._dispatch_wakeup"
    ) as wakeup:
        out = ctx.run(ctx.on.action("restart", params={"engine": "v0"}), state)
        assert wakeup.call_count == 1
    assert ("restart",) not in fake_workload.calls
    assert out.app_status == testing.MaintenanceStatus("rolling restart in progress (v0)")
    with (
        mock.patch("charms.rolling_ops.v0.rollingops.RollingOpsManager._dispatch_wakeup"),
        ctx(ctx.on.update_status(), out) as manager,
    ):
        manager.charm.on[PEER].process_locks.emit()
        final = manager.run()
    assert fake_workload.calls == [("restart",)]
    assert final.app_status == testing.ActiveStatus()


def test_garbage_in_the_v0_peer_data_is_shown_and_ignored(ctx, fake_workload):
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    relation = _peer(peers_data={1: {"state": "bogus", "rolling-ops-queue": "not json"}})
    out = ctx.run(ctx.on.update_status(), testing.State(leader=True, relations=[relation]))
    assert out.unit_status.name == "blocked"
    assert "malformed 'restart' data" in out.unit_status.message


def test_a_request_queued_behind_another_counts_as_in_flight(ctx, fake_workload):
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    relation = _peer(local_unit_data={"rolling-ops-queue": '[""]'}, peers_data={1: {}})
    with ctx(ctx.on.update_status(), testing.State(relations=[relation])) as manager:
        assert manager.charm.restarts.engines["v0"].in_flight()


def test_a_restart_in_another_engine_refuses_the_action_naming_that_engine(ctx, fake_workload):
    """One restart at a time across engines: v0 is busy, so a coordinator restart is refused."""
    fake_workload.installed = "1.0.0"
    fake_workload.running = True
    state = testing.State(
        leader=True,
        relations=[
            _peer(peers_data={1: {"state": "acquire"}}),
            testing.PeerRelation("coordinator"),
        ],
    )
    with pytest.raises(testing.ActionFailed) as failure:
        ctx.run(ctx.on.action("restart", params={"engine": "coordinator"}), state)
    assert (
        failure.value.message == "a restart with engine 'v0' is in flight; wait for it to finish"
    )
    assert fake_workload.calls == []
