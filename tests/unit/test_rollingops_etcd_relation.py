"""charmlibs.rollingops and the `etcd_client` relation, v1, as charmed-etcd speaks it.

Our leader's request is judged by demo/etcd_contract.py (the provider's rules, written from its
documentation, shared with the simulator's stand-in provider). The provider's answer here is
exactly what charmed-etcd publishes: nested in its `requests` list under our request id, with
`secret-user` and `secret-tls` secrets granted to the relation. Then every bad answer of issue
15 ("Bad input"): logged, visible in `state` and the unit status, the unit on the peer backend,
no hook raises.

Mocked, because they cannot exist here: the Juju controller (ops.testing), the worker process
(subprocess.Popen recorded) and etcd (a unit on the etcd backend never dials it in these tests).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import subprocess

import pytest
from charmlibs.rollingops import ProcessingBackend, _certs, _dispatch, _etcd_lock, _files
from ops import testing

from demo.etcd_contract import (
    ProviderHookError,
    Unanswerable,
    check_requirer_bag,
    expected_request_id,
)
from tests.unit.test_rollingops_etcd import APP, BASE, CALLS, META, PLANNED, EtcdCharm

CN = "rollingops-test-app"  # our certificate's common name (the provider names our user so)
PREFIX = _etcd_lock.lock_prefix("c1")
SALT = "AbCdEfGh12345678"
RID = expected_request_id(PREFIX, SALT)
CREDS: dict[str, str] = {}
SERVER: dict[str, str] = {}


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    CALLS.clear()
    BASE[0] = str(tmp_path)
    if not CREDS:
        CREDS.update(_certs.generate_client_credentials(CN))
        SERVER.update(_certs.generate_client_credentials("etcd-server"))
    started: list = []
    monkeypatch.setattr(subprocess, "Popen", lambda argv, **kw: started.append(argv))
    monkeypatch.setattr(_dispatch, "juju_exec_path", lambda: "/usr/bin/juju-exec")
    return started


# --- the provider's side, as charmed-etcd publishes it -------------------------------------------


def client_secret() -> testing.Secret:
    content = {k: CREDS[k] for k in ("client-cert", "client-key", "client-ca")}
    return testing.Secret(content, owner="app", label="rollingops-etcd-client")


def mtls_of_ours() -> testing.Secret:
    return testing.Secret(
        {"mtls-cert": CREDS["client-cert"]}, owner="app", label="rollingops-etcd-mtls"
    )


def our_request(salt=SALT, resource=PREFIX, mtls="secret:ours") -> str:
    rid = expected_request_id(resource, salt)
    return json.dumps(
        {"resource": resource, "salt": salt, "request-id": rid, "secret-mtls": mtls},
        sort_keys=True,
    )


def provider_secrets(username=CN, ca=None) -> tuple[testing.Secret, testing.Secret]:
    user = testing.Secret({"username": username, "uris": "https://10.1.0.5:2379"})
    tls = testing.Secret({"tls-ca": SERVER["client-ca"] if ca is None else ca, "tls": "x"})
    return user, tls


def answer(user, tls, rid=RID, endpoints="10.1.0.5:2379,10.1.0.6:2379", **extra) -> dict:
    entry = {"resource": PREFIX, "salt": SALT, "request-id": rid, "endpoints": endpoints,
             "secret-user": user.id, "secret-tls": tls.id, "version": "3.6.13",
             **extra}  # fmt: skip
    return {"requests": json.dumps([entry])}


def state_with(remote_app_data, secrets, unit_bag_=None, app_mode="etcd", leader=False):
    client, mtls = client_secret(), mtls_of_ours()
    app = {"rollingops-version": "1", "rollingops-token": "3", "rollingops-mode": app_mode,
           "rollingops-client-secret-id": client.id,
           "rollingops-etcd-request": our_request(mtls=mtls.id)}  # fmt: skip
    peer = testing.PeerRelation("restart", local_app_data=app, local_unit_data=unit_bag_ or {})
    etcd = testing.Relation(
        "etcd", remote_app_name="charmed-etcd", remote_app_data=remote_app_data
    )
    state = testing.State(
        planned_units=PLANNED,
        leader=leader,
        relations={peer, etcd},
        secrets={client, mtls, *secrets},
    )
    return state, peer, etcd


def queued_on_etcd() -> dict[str, str]:
    queue = [{"id": 1, "callback_id": "restart", "kwargs": {}, "max_retry": 0, "attempt": 0}]
    return {"rollingops-version": "1", "rollingops-queue": json.dumps(queue),
            "rollingops-seq": "1", "rollingops-backend": "etcd"}  # fmt: skip


def ctx(unit_id=1) -> testing.Context:
    return testing.Context(EtcdCharm, meta=META, app_name=APP, unit_id=unit_id)


def changed(state, etcd, unit_id=1):
    """relation-changed on the etcd relation; returns (output state, the manager's state)."""
    context = ctx(unit_id)
    with context(context.on.relation_changed(etcd), state) as mgr:
        out = mgr.run()
        lock_state = mgr.charm.rolling.state
    return out, lock_state


# --- the answer accepted ------------------------------------------------------------------------


def test_the_providers_nested_answer_becomes_the_local_config(tmp_path):
    user, tls = provider_secrets()
    state, _, etcd = state_with(answer(user, tls), {user, tls})
    _, lock_state = changed(state, etcd)
    config = _files.read_config(tmp_path)
    assert config is not None
    assert config.endpoints == ("10.1.0.5:2379", "10.1.0.6:2379")
    assert config.prefix == PREFIX
    assert config.owner == _etcd_lock.owner_name(state.model.uuid, "app/1")
    assert pathlib.Path(config.server_ca).read_text() == SERVER["client-ca"]
    assert pathlib.Path(config.cert).read_text() == CREDS["client-cert"]
    assert os.stat(config.key).st_mode & 0o777 == 0o600
    assert lock_state.etcd_problem is None


def test_top_level_endpoints_and_ca_of_older_providers_are_not_read(tmp_path):
    """v1 only: what older libraries put at the top level is not our answer."""
    remote = {"endpoints": "10.1.0.5:2379", "tls-ca": SERVER["client-ca"]}
    state, _, etcd = state_with(remote, set())
    _, lock_state = changed(state, etcd)
    assert _files.read_config(tmp_path) is None
    assert lock_state.etcd_problem is None  # no answer yet: waiting, nothing refused


def test_secret_changed_of_the_tls_secret_rereads_the_ca(tmp_path):
    user, tls = provider_secrets()
    new_ca = _certs.generate_client_credentials("rotated")["client-ca"]
    tls = dataclasses.replace(tls, latest_content={"tls-ca": new_ca, "tls": "y"})
    state, _, _ = state_with(answer(user, tls), {user, tls})
    ctx().run(ctx().on.secret_changed(tls), state)
    config = _files.read_config(tmp_path)
    assert config is not None and pathlib.Path(config.server_ca).read_text() == new_ca


def test_secret_changed_to_a_bad_ca_falls_back(tmp_path):
    user, tls = provider_secrets()
    good, _, etcd = state_with(answer(user, tls), {user, tls})
    changed(good, etcd)
    assert _files.read_config(tmp_path) is not None
    tls = dataclasses.replace(tls, latest_content={"tls-ca": "not a PEM", "tls": "y"})
    state, _, _ = state_with(answer(user, tls), {user, tls}, unit_bag_=queued_on_etcd())
    out = ctx().run(ctx().on.secret_changed(tls), state)
    assert _files.read_config(tmp_path) is None
    assert "tls-ca" in (_files.read_problem(tmp_path) or "")
    bag = out.get_relation(next(iter(r.id for r in out.relations if r.endpoint == "restart")))
    assert bag.local_unit_data["rollingops-backend"] == "peer"


# --- bad input (issue 15): logged, in state, peer backend, the restart runs once on peer -------


def _with_ca(ca):
    user, tls = provider_secrets(ca=ca)
    return answer(user, tls), {user, tls}


def _tls_uri_empty(user, tls):
    entry = json.loads(answer(user, tls)["requests"])[0]
    entry["secret-tls"] = ""
    return {"requests": json.dumps([entry])}, {user, tls}


def _user_without_username(user, tls):
    user = dataclasses.replace(user, tracked_content={"uris": "x"}, latest_content=None)
    return answer(user, tls), {user, tls}


def _not_our_user(user, tls):
    user, tls = provider_secrets(username="someone-else")
    return answer(user, tls), {user, tls}


CORRUPT_PEM = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
# kind -> (make (provider app data, secrets) from good user/tls secrets, words of the problem)
BAD_ANSWERS = {
    "endpoint without a port": (
        lambda u, t: (answer(u, t, endpoints="10.1.0.5"), {u, t}), "no port"),
    "endpoint with junk": (
        lambda u, t: (answer(u, t, endpoints="10.1.0.5:2379/v3;rm -rf /"), {u, t}), "valid port"),
    "endpoint with a scheme": (
        lambda u, t: (answer(u, t, endpoints="https://10.1.0.5:2379"), {u, t}), "valid host"),
    "port out of range": (
        lambda u, t: (answer(u, t, endpoints="10.1.0.5:99999"), {u, t}), "valid port"),
    "empty endpoints": (lambda u, t: (answer(u, t, endpoints=""), {u, t}), "empty"),
    "non-PEM CA": (lambda u, t: _with_ca("this is not a certificate"), "not a PEM"),
    "corrupt PEM CA": (lambda u, t: _with_ca(CORRUPT_PEM), "does not parse"),
    "answer for another request id": (
        lambda u, t: (answer(u, t, rid="0123456789abcdef"), {u, t}), "no answer for our request"),
    "requests not JSON": (lambda u, t: ({"requests": "{oops"}, {u, t}), "not JSON"),
    "requests nested too deep": (lambda u, t: ({"requests": "[" * 100000}, {u, t}), "deeper"),
    "missing secret": (lambda u, t: (answer(u, t), {t}), "unreadable"),
    "secret without its field": (_user_without_username, "lacks username"),
    "secret-tls not a URI": (_tls_uri_empty, "secret-tls"),
    "user is not our common name": (_not_our_user, "common name"),
}  # fmt: skip
BAD = list(BAD_ANSWERS)


def _bad(kind: str):
    make, why = BAD_ANSWERS[kind]
    remote, secrets = make(*provider_secrets())
    return remote, secrets, why


@pytest.mark.parametrize("kind", BAD)
def test_bad_answer_is_logged_shown_and_the_unit_falls_back(kind, tmp_path, caplog):
    remote, secrets, why = _bad(kind)
    _files.write_config(  # a good config from an earlier answer: it must not survive
        tmp_path, endpoints=["10.1.0.9:2379"], prefix=PREFIX, owner="o",
        server_ca_pem=SERVER["client-ca"], cert_pem=CREDS["client-cert"],
        key_pem=CREDS["client-key"],
    )  # fmt: skip
    state, peer, etcd = state_with(remote, secrets, unit_bag_=queued_on_etcd())
    with caplog.at_level(logging.ERROR):
        out, lock_state = changed(state, etcd)
    assert _files.read_config(tmp_path) is None
    assert lock_state.etcd_problem is not None and why in lock_state.etcd_problem
    assert any(why in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    bag = out.get_relation(peer.id).local_unit_data
    assert bag["rollingops-backend"] == "peer" and bag["rollingops-etcd-cleanup"] == "true"


@pytest.mark.parametrize("kind", ["endpoint without a port", "answer for another request id"])
def test_after_a_bad_answer_the_restart_runs_exactly_once_on_the_peer_backend(kind, tmp_path):
    """A lone leader, its restart queued on etcd, gets a bad answer: the restart runs once on peer.

    The bad answer moves it to the peer backend, the peer grant runs the restart in the wake-up,
    and later hooks never run it again.
    """
    remote, secrets, _ = _bad(kind)
    state, peer, etcd = state_with(remote, secrets, unit_bag_=queued_on_etcd(), leader=True)
    out = ctx(0).run(ctx(0).on.relation_changed(etcd), state)
    app = out.get_relation(peer.id).local_app_data
    assert app["rollingops-mode"] == "peer" and json.loads(app["rollingops-grant"])["unit"] == (
        "app/0"
    )
    for _ in range(3):  # the wake-up, then more hooks: the op ran once
        context = ctx(0)
        with context(context.on.update_status(), out) as mgr:
            mgr.charm.on.rollingops_lock_granted.emit()
            out = mgr.run()
    assert [g.backend for g in CALLS] == [ProcessingBackend.PEER]
    assert json.loads(out.get_relation(peer.id).local_unit_data["rollingops-queue"]) == []


def test_a_good_answer_after_a_bad_one_clears_the_problem(tmp_path):
    remote, secrets, _ = _bad("endpoint without a port")
    state, _, etcd = state_with(remote, secrets)
    changed(state, etcd)
    user, tls = provider_secrets()
    state, _, etcd = state_with(answer(user, tls), {user, tls})
    _, lock_state = changed(state, etcd)
    assert _files.read_config(tmp_path) is not None and lock_state.etcd_problem is None


def _write_stale_config(tmp_path) -> None:
    """config.json as an older version wrote it (no validation then): its endpoint has no port."""
    path = _files.etcd_dir(tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("server-ca.pem", "client-cert.pem", "client-key.pem"):
        (path / name).write_text("x")
    (path / "config.json").write_text(json.dumps({
        "version": 1, "endpoints": ["10.1.0.5"], "prefix": PREFIX, "owner": "o",
        "server_ca": str(path / "server-ca.pem"), "cert": str(path / "client-cert.pem"),
        "key": str(path / "client-key.pem"),
    }))  # fmt: skip


def test_a_stale_local_config_with_a_bad_endpoint_is_unusable(tmp_path):
    _write_stale_config(tmp_path)
    with pytest.raises(_files.RollingOpsDecodingError, match="no port"):
        _files.read_config(tmp_path)


def test_relation_broken_forgets_the_problem(tmp_path):
    remote, secrets, _ = _bad("non-PEM CA")
    state, _, etcd = state_with(remote, secrets)
    changed(state, etcd)
    assert _files.read_problem(tmp_path) is not None
    ctx().run(ctx().on.relation_broken(etcd), state)
    assert _files.read_problem(tmp_path) is None


# --- our request ---------------------------------------------------------------------------------


def leader_run(state, event=None, unit_id=0):
    context = ctx(unit_id)
    return context.run(event or context.on.update_status(), state)


def fresh_leader_state():
    peer = testing.PeerRelation("restart")
    etcd = testing.Relation("etcd", remote_app_name="charmed-etcd")
    state = testing.State(planned_units=PLANNED, leader=True, relations={peer, etcd})
    return state, peer, etcd


def mtls_secret(out) -> testing.Secret:
    (secret,) = [s for s in out.secrets if s.label == "rollingops-etcd-mtls"]
    return secret


def test_first_leader_hook_publishes_a_v1_request_the_provider_accepts():
    state, _, etcd = fresh_leader_state()
    out = leader_run(state, ctx(0).on.relation_created(etcd))
    bag = out.get_relation(etcd.id).local_app_data
    (request,) = check_requirer_bag(bag)
    assert request["resource"] == PREFIX
    mtls = mtls_secret(out)
    assert request["secret-mtls"] == mtls.id
    assert etcd.id in mtls.remote_grants  # granted to this relation instance
    assert _certs_cn(mtls.latest_content["mtls-cert"]) == _certs_cn(
        next(s for s in out.secrets if s.label == "rollingops-etcd-client").latest_content[
            "client-cert"
        ]
    )
    assert set(bag) == {"version", "requests"}  # v1 only: no v0 field


def _certs_cn(pem: str) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificates(pem.encode())[0]
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_secret_mtls_is_never_empty_and_the_salt_stable_from_the_second_leader_hook_on():
    """The original bug: from the second hook on, secret-mtls was "" (a label lookup's id)."""
    state, _, etcd = fresh_leader_state()
    out = leader_run(state)
    (first,) = check_requirer_bag(out.get_relation(etcd.id).local_app_data)
    for event in ("update_status", "config_changed", "leader_elected"):
        context = ctx(0)
        out = context.run(getattr(context.on, event)(), out)
        (again,) = check_requirer_bag(out.get_relation(etcd.id).local_app_data)
        assert again == first


def test_the_request_survives_a_leader_change_with_the_same_salt():
    state, peer, etcd = fresh_leader_state()
    out = leader_run(state)
    (first,) = check_requirer_bag(out.get_relation(etcd.id).local_app_data)
    app_data = dict(out.get_relation(peer.id).local_app_data)
    # unit 1 becomes leader: it sees the peer app data and its own app's etcd databag
    peer1 = testing.PeerRelation("restart", local_app_data=app_data)
    etcd1 = dataclasses.replace(
        etcd, local_app_data=dict(out.get_relation(etcd.id).local_app_data)
    )
    state1 = testing.State(
        planned_units=PLANNED, leader=True, relations={peer1, etcd1}, secrets=out.secrets
    )
    out1 = leader_run(state1, ctx(1).on.leader_elected(), unit_id=1)
    (again,) = check_requirer_bag(out1.get_relation(etcd1.id).local_app_data)
    assert again == first


def test_a_recreated_relation_gets_its_own_grant_and_the_same_request():
    state, peer, etcd = fresh_leader_state()
    out = leader_run(state)
    (first,) = check_requirer_bag(out.get_relation(etcd.id).local_app_data)
    new = testing.Relation("etcd", remote_app_name="charmed-etcd")  # a new relation id
    assert new.id != etcd.id
    relations = {out.get_relation(peer.id), new}
    out2 = leader_run(
        dataclasses.replace(out, relations=relations), ctx(0).on.relation_created(new)
    )
    (again,) = check_requirer_bag(out2.get_relation(new.id).local_app_data)
    assert again == first  # same prefix, same certificate: same request
    assert new.id in mtls_secret(out2).remote_grants


def test_a_request_left_by_the_buggy_version_is_replaced_and_granted():
    """Upgrade from the version that published `secret-mtls: ""` without salt or request id."""
    client = client_secret()
    mtls = testing.Secret({"mtls-cert": CREDS["client-cert"]}, owner="app",
                          label="rollingops-etcd-mtls")  # fmt: skip
    buggy = {"version": "v1", "requests": json.dumps([{"resource": PREFIX, "secret-mtls": ""}])}
    with pytest.raises(ProviderHookError):
        check_requirer_bag(buggy)  # what charmed-etcd's hook raised on
    peer = testing.PeerRelation("restart", local_app_data={
        "rollingops-version": "1", "rollingops-client-secret-id": client.id})  # fmt: skip
    etcd = testing.Relation("etcd", remote_app_name="charmed-etcd", local_app_data=buggy)
    state = testing.State(
        planned_units=PLANNED, leader=True, relations={peer, etcd}, secrets={client, mtls}
    )
    out = leader_run(state)
    (request,) = check_requirer_bag(out.get_relation(etcd.id).local_app_data)
    assert request["secret-mtls"] == mtls.id  # read as owner (get_info), not a label's None
    assert etcd.id in mtls_secret(out).remote_grants


def test_the_shared_validator_refuses_what_the_provider_refuses():
    good = {"version": "v1", "requests": our_request()}
    good["requests"] = json.dumps([json.loads(good["requests"])])
    assert check_requirer_bag(good)
    with pytest.raises(ProviderHookError):
        check_requirer_bag({"version": "v1", "requests": json.dumps([{"resource": PREFIX}])})
    bad_id = json.loads(our_request())
    bad_id["request-id"] = "0" * 16
    with pytest.raises(Unanswerable, match="request-id"):
        check_requirer_bag({"version": "v1", "requests": json.dumps([bad_id])})
    with pytest.raises(Unanswerable, match="salt"):
        check_requirer_bag(
            {"version": "v1", "requests": json.dumps([json.loads(our_request(salt="short"))])}
        )
    with pytest.raises(Unanswerable, match="v0"):
        check_requirer_bag({**good, "prefix": PREFIX})
    with pytest.raises(Unanswerable, match="version"):
        check_requirer_bag({"requests": good["requests"]})


def test_a_stale_config_with_a_bad_endpoint_never_raises_in_update_status(tmp_path):
    """Issue 16 item 4: with the clean-up flag set, every update-status used to raise."""
    _write_stale_config(tmp_path)
    unit = {"rollingops-version": "1", "rollingops-backend": "peer", "rollingops-seq": "1",
            "rollingops-queue": "[]", "rollingops-etcd-cleanup": "true"}  # fmt: skip
    state, peer, _ = state_with({}, set(), unit_bag_=unit)
    out = ctx().run(ctx().on.update_status(), state)
    bag = out.get_relation(peer.id).local_unit_data
    assert bag["rollingops-backend"] == "peer"


def test_a_request_whose_mtls_secret_is_gone_is_made_again():
    client = client_secret()
    peer = testing.PeerRelation("restart", local_app_data={
        "rollingops-version": "1", "rollingops-client-secret-id": client.id,
        "rollingops-etcd-request": our_request(mtls="secret:gone")})  # fmt: skip
    etcd = testing.Relation("etcd", remote_app_name="charmed-etcd")
    state = testing.State(
        planned_units=PLANNED, leader=True, relations={peer, etcd}, secrets={client}
    )
    out = leader_run(state)  # logged, not raised; the stale request is dropped
    assert "requests" not in out.get_relation(etcd.id).local_app_data
    out = leader_run(out)
    (request,) = check_requirer_bag(out.get_relation(etcd.id).local_app_data)
    mtls = mtls_secret(out)
    assert request["secret-mtls"] == mtls.id and etcd.id in mtls.remote_grants
    assert mtls.latest_content == {"mtls-cert": CREDS["client-cert"]}
