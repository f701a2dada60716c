"""Unit tests of charms.storage_libs.v0.nfs_interfaces: both sides, with ops.testing.

The Juju controller is the one thing simulated here (ops.testing builds each hook's context).
"""

from __future__ import annotations

import ast
import json
import logging
import pathlib

import ops
import pytest
from charms.storage_libs.v0 import nfs_interfaces as lib
from charms.storage_libs.v0.nfs_interfaces import (
    ClientsChangedEvent,
    MountShareEvent,
    NFSProvides,
    NFSRequires,
    ServerConnectedEvent,
    ShareRequestedEvent,
    UmountShareEvent,
    parse_endpoint,
)
from ops import testing

# ------------------------------------------------------------------------------------------------
# Test charms: they only record what the library tells them.
# ------------------------------------------------------------------------------------------------


class RequirerCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.nfs = NFSRequires(self, "nfs-share")
        framework.observe(self.nfs.on.server_connected, self._on_server_connected)
        framework.observe(self.on.collect_unit_status, self._on_collect)

    def _on_server_connected(self, event: ServerConnectedEvent):
        self.nfs.request_share(event.relation.id, name="/data", size=10)

    def _on_collect(self, event: ops.CollectStatusEvent):
        event.add_status(ops.ActiveStatus())


class ProviderCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.nfs = NFSProvides(self, "nfs-share")
        framework.observe(self.nfs.on.share_requested, self._on_share_requested)
        framework.observe(self.on.collect_unit_status, self._on_collect)

    def _on_share_requested(self, event: ShareRequestedEvent):
        self.nfs.set_endpoint(event.relation.id, f"nfs://10.0.0.5{event.name}")

    def _on_collect(self, event: ops.CollectStatusEvent):
        event.add_status(ops.ActiveStatus())


REQ_META = {"name": "req", "requires": {"nfs-share": {"interface": "nfs_share", "limit": 1}}}
PROV_META = {"name": "prov", "provides": {"nfs-share": {"interface": "nfs_share"}}}


def req_ctx() -> testing.Context:
    return testing.Context(RequirerCharm, meta=REQ_META)


def prov_ctx() -> testing.Context:
    return testing.Context(ProviderCharm, meta=PROV_META)


def nfs_events(ctx: testing.Context) -> list[tuple[str, str | None]]:
    """The library's events that fired on the requirer, with their endpoint."""
    out = []
    for event in ctx.emitted_events:
        if isinstance(event, MountShareEvent):
            out.append(("mount", event.endpoint))
        elif isinstance(event, UmountShareEvent):
            out.append(("umount", event.endpoint))
        elif isinstance(event, ServerConnectedEvent):
            out.append(("connected", None))
    return out


def provider_relation(endpoint: str | None = None, units=(0,), **kwargs) -> testing.Relation:
    app_data = {"endpoint": endpoint} if endpoint is not None else {}
    return testing.Relation(
        "nfs-share",
        remote_app_name="prov",
        remote_app_data=app_data,
        remote_units_data={u: {"ingress-address": f"10.0.0.{5 + u}"} for u in units},
        **kwargs,
    )


def stored(mounted: dict, umount_sent=None) -> testing.StoredState:
    return testing.StoredState(
        owner_path="RequirerCharm/NFSRequires[nfs-share]",
        content={"mounted": mounted, "umount_sent": umount_sent or {}},
    )


def mounted_memory(state: testing.State) -> dict:
    for s in state.stored_states:
        if s.owner_path == "RequirerCharm/NFSRequires[nfs-share]":
            return dict(s.content["mounted"])
    raise AssertionError("no stored state for NFSRequires")


# ------------------------------------------------------------------------------------------------
# parse_endpoint
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "path", "port", "query", "source", "url"),
    [
        ("nfs://10.0.0.5/data", "10.0.0.5", "/data", None, "", "10.0.0.5:/data", None),
        (
            "nfs://10.0.0.5:2050/a/b?version=4",
            "10.0.0.5",
            "/a/b",
            2050,
            "version=4",
            "10.0.0.5:/a/b",
            None,
        ),
        ("nfs://[fd00::5]:20/x", "fd00::5", "/x", 20, "", "[fd00::5]:/x", None),
        ("nfs://files.example.com/x", "files.example.com", "/x", None, "", None, None),
        ("10.0.0.5:/data", "10.0.0.5", "/data", None, "", "10.0.0.5:/data", "nfs://10.0.0.5/data"),
        (
            "[fd00::5]:/data",
            "fd00::5",
            "/data",
            None,
            "",
            "[fd00::5]:/data",
            "nfs://[fd00::5]/data",
        ),
        ("NFS://h/x", "h", "/x", None, "", "h:/x", "nfs://h/x"),
    ],
)
def test_parse_endpoint_valid(text, host, path, port, query, source, url):
    endpoint = parse_endpoint(text)
    assert (endpoint.host, endpoint.path, endpoint.port, endpoint.query) == (
        host,
        path,
        port,
        query,
    )
    if source:
        assert endpoint.mount_source == source
    assert endpoint.url == (url or text)
    assert endpoint.mount_options == ([f"port={port}"] if port else [])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("http://h/x", "scheme"),
        ("nfs:/x", "malformed"),
        ("nfs:///x", "missing host"),
        ("nfs://h", "empty path"),
        ("nfs://h:0/x", "port"),
        ("nfs://h:70000/x", "port"),
        ("nfs://h:abc/x", "port"),
        ("nfs://u@h/x", "user-info"),
        ("nfs://h/x#frag", "fragment"),
        ("nfs://fd00::5/x", "bracketed"),
        ("nfs://[::1/x", "unterminated"),
        ("host:relative", "not absolute"),
        ("fd00::5:/data", "bracketed"),
        (":/data", "missing host"),
        ("10.0.0.300:/x", "IPv4"),
        ("h:/a b", "whitespace"),
        ("justahost", "expected"),
    ],
)
def test_parse_endpoint_invalid(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_endpoint(text)


# ------------------------------------------------------------------------------------------------
# Requirer: request_share
# ------------------------------------------------------------------------------------------------


def test_request_share_on_join_writes_exactly_the_three_keys():
    ctx = req_ctx()
    rel = provider_relation()
    out = ctx.run(
        ctx.on.relation_joined(rel, remote_unit=0), testing.State(leader=True, relations={rel})
    )
    assert out.get_relation(rel.id).local_app_data == {
        "name": "/data",
        "allowlist": "0.0.0.0",
        "size": "10",
    }
    assert out.get_relation(rel.id).local_unit_data == rel.local_unit_data  # no `cache` key
    assert nfs_events(ctx) == [("connected", None)]


def test_server_connected_only_on_leader_and_non_leader_writes_nothing():
    ctx = req_ctx()
    rel = provider_relation()
    out = ctx.run(
        ctx.on.relation_joined(rel, remote_unit=0), testing.State(leader=False, relations={rel})
    )
    assert out.get_relation(rel.id).local_app_data == {}
    assert nfs_events(ctx) == []


class _Direct(RequirerCharm):
    """Calls request_share with the arguments a test puts in `ARGS`."""

    ARGS: dict = {}

    def __init__(self, framework):
        super().__init__(framework)
        framework.observe(self.on.update_status, self._on_update)

    def _on_update(self, _event):
        rel = self.model.get_relation("nfs-share")
        assert rel is not None
        self.nfs.request_share(rel.id, **self.ARGS)


def run_direct(args: dict, leader=True):
    _Direct.ARGS = args
    ctx = testing.Context(_Direct, meta=REQ_META)
    rel = provider_relation()
    out = ctx.run(ctx.on.update_status(), testing.State(leader=leader, relations={rel}))
    return out.get_relation(rel.id)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"name": "/data"}, {"name": "/data", "allowlist": "0.0.0.0", "size": "-1"}),
        (
            {"name": "/data", "allowlist": ["192.168.0.15/24", " 10.152.28.100/24"], "size": 100},
            {"name": "/data", "allowlist": "192.168.0.15/24,10.152.28.100/24", "size": "100"},
        ),
        (
            {"name": "d", "allowlist": "10.0.0.1", "size": -1},
            {"name": "d", "allowlist": "10.0.0.1", "size": "-1"},
        ),
    ],
)
def test_request_share_wire_format(args, expected):
    assert run_direct(args).local_app_data == expected


@pytest.mark.parametrize(
    "args",
    [
        {"name": ""},
        {"name": "  "},
        {"name": "a,b"},
        {"name": "a\nb"},
        {"name": "d", "size": 0},
        {"name": "d", "size": 1.5},
        {"name": "d", "size": -2},
        {"name": "d", "size": True},
        {"name": "d", "size": "10"},
        {"name": "d", "allowlist": []},
        {"name": "d", "allowlist": ["10.0.0.1", ""]},
        {"name": "d", "allowlist": ["10.0.0.1,10.0.0.2"]},
    ],
)
def test_request_share_rejects_bad_arguments(args):
    with pytest.raises(testing.errors.UncaughtCharmError) as info:
        run_direct(args)
    assert isinstance(info.value.__cause__, ValueError)


def test_request_share_non_leader_writes_nothing():
    assert run_direct({"name": "/data"}, leader=False).local_app_data == {}


def test_request_share_unknown_relation_logs_and_returns(caplog):
    class Charm(RequirerCharm):
        def __init__(self, framework):
            super().__init__(framework)
            framework.observe(self.on.update_status, self._on_update)

        def _on_update(self, _event):
            self.nfs.request_share(99, "/x")

    ctx = testing.Context(Charm, meta=REQ_META)
    rel = provider_relation()
    with caplog.at_level(logging.ERROR):
        out = ctx.run(ctx.on.update_status(), testing.State(leader=True, relations={rel}))
    assert out.get_relation(rel.id).local_app_data == {}
    assert "no active nfs-share relation with id 99" in caplog.text


def test_leader_elected_finishes_an_unwritten_request():
    ctx = req_ctx()
    rel = provider_relation()
    out = ctx.run(ctx.on.leader_elected(), testing.State(leader=True, relations={rel}))
    assert out.get_relation(rel.id).local_app_data["name"] == "/data"
    # Already requested: nothing emitted again.
    ctx2 = req_ctx()
    ctx2.run(ctx2.on.leader_elected(), out)
    assert nfs_events(ctx2) == []


# ------------------------------------------------------------------------------------------------
# Requirer: mount decisions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("leader", [True, False])
def test_mount_once_per_endpoint_on_every_unit(leader):
    ctx = req_ctx()
    rel = provider_relation("nfs://10.0.0.5/data")
    state = testing.State(leader=leader, relations={rel})
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    assert nfs_events(ctx) == [("mount", "nfs://10.0.0.5/data")]
    assert mounted_memory(out) == {str(rel.id): "nfs://10.0.0.5/data"}

    # Identical rewrite, or an unrelated key: nothing.
    ctx = req_ctx()
    rel2 = testing.Relation(
        "nfs-share",
        id=rel.id,
        remote_app_name="prov",
        remote_app_data={"endpoint": "nfs://10.0.0.5/data", "other": "x"},
        remote_units_data=rel.remote_units_data,
    )
    out2 = ctx.run(
        ctx.on.relation_changed(rel2, remote_unit=0),
        testing.State(leader=leader, relations={rel2}, stored_states=out.stored_states),
    )
    assert nfs_events(ctx) == []

    # Endpoint changed: umount(E) then mount(F).
    ctx = req_ctx()
    rel3 = testing.Relation(
        "nfs-share",
        id=rel.id,
        remote_app_name="prov",
        remote_app_data={"endpoint": "10.0.0.9:/data"},
        remote_units_data=rel.remote_units_data,
    )
    out3 = ctx.run(
        ctx.on.relation_changed(rel3, remote_unit=0),
        testing.State(leader=leader, relations={rel3}, stored_states=out2.stored_states),
    )
    assert nfs_events(ctx) == [("umount", "nfs://10.0.0.5/data"), ("mount", "10.0.0.9:/data")]

    # Endpoint withdrawn: umount(F) once, then nothing.
    rel4 = testing.Relation(
        "nfs-share",
        id=rel.id,
        remote_app_name="prov",
        remote_app_data={"endpoint": ""},
        remote_units_data=rel.remote_units_data,
    )
    ctx = req_ctx()
    out4 = ctx.run(
        ctx.on.relation_changed(rel4, remote_unit=0),
        testing.State(leader=leader, relations={rel4}, stored_states=out3.stored_states),
    )
    assert nfs_events(ctx) == [("umount", "10.0.0.9:/data")]
    ctx = req_ctx()
    ctx.run(ctx.on.update_status(), out4)
    ctx.run(ctx.on.relation_changed(rel4, remote_unit=0), out4)
    assert nfs_events(ctx) == []


def test_no_mount_before_endpoint_and_mount_on_join_of_scaled_out_unit():
    ctx = req_ctx()
    rel = provider_relation()
    ctx.run(ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel}))
    assert nfs_events(ctx) == []
    # A new requirer unit: its own join with the provider already serving mounts.
    ctx = req_ctx()
    rel = provider_relation("nfs://10.0.0.5/data")
    ctx.run(ctx.on.relation_joined(rel, remote_unit=0), testing.State(relations={rel}))
    assert nfs_events(ctx) == [("mount", "nfs://10.0.0.5/data")]


def test_provider_units_departing_one_by_one():
    mounted = {"7": "nfs://10.0.0.5/data"}
    rel = provider_relation("nfs://10.0.0.5/data", units=(0, 1), id=7)
    # One of two departs: keep the mount.
    ctx = req_ctx()
    out = ctx.run(
        ctx.on.relation_departed(rel, remote_unit=1, departing_unit=1),
        testing.State(relations={rel}, stored_states={stored(mounted)}),
    )
    assert nfs_events(ctx) == []
    # The last one departs: exactly one umount.
    rel = provider_relation("nfs://10.0.0.5/data", units=(0,), id=7)
    ctx = req_ctx()
    out = ctx.run(
        ctx.on.relation_departed(rel, remote_unit=0, departing_unit=0),
        testing.State(relations={rel}, stored_states=out.stored_states),
    )
    assert nfs_events(ctx) == [("umount", "nfs://10.0.0.5/data")]
    # relation-broken afterwards: nothing more.
    rel = provider_relation("nfs://10.0.0.5/data", units=(), id=7)
    ctx = req_ctx()
    ctx.run(
        ctx.on.relation_broken(rel),
        testing.State(relations={rel}, stored_states=out.stored_states),
    )
    assert nfs_events(ctx) == []


def test_umount_none_once_when_last_provider_leaves_without_endpoint():
    rel = provider_relation(None, units=(0,), id=3)
    ctx = req_ctx()
    out = ctx.run(
        ctx.on.relation_departed(rel, remote_unit=0, departing_unit=0),
        testing.State(relations={rel}),
    )
    assert nfs_events(ctx) == [("umount", None)]
    ctx = req_ctx()
    rel = provider_relation(None, units=(), id=3)
    ctx.run(
        ctx.on.relation_broken(rel),
        testing.State(relations={rel}, stored_states=out.stored_states),
    )
    assert nfs_events(ctx) == []


def test_this_unit_departing_unmounts():
    rel = provider_relation("nfs://10.0.0.5/data", id=4)
    ctx = req_ctx()
    ctx.run(
        ctx.on.relation_departed(rel, remote_unit=0, departing_unit=0),
        testing.State(relations={rel}, stored_states={stored({"4": "nfs://10.0.0.5/data"})}),
    )
    assert nfs_events(ctx) == [("umount", "nfs://10.0.0.5/data")]


def test_broken_relation_unmounts():
    rel = provider_relation("nfs://10.0.0.5/data", id=4)
    ctx = req_ctx()
    ctx.run(
        ctx.on.relation_broken(rel),
        testing.State(relations={rel}, stored_states={stored({"4": "nfs://10.0.0.5/data"})}),
    )
    assert nfs_events(ctx) == [("umount", "nfs://10.0.0.5/data")]


def test_upgrade_charm_reconciles():
    rel = provider_relation("nfs://10.0.0.5/data")
    ctx = req_ctx()
    ctx.run(ctx.on.upgrade_charm(), testing.State(relations={rel}))
    assert nfs_events(ctx) == [("mount", "nfs://10.0.0.5/data")]


@pytest.mark.parametrize("endpoint", ["nfs:/x", "host:relative", "nfs://[::1/x"])
def test_malformed_endpoint_blocks_and_keeps_mount(endpoint, caplog):
    rel = provider_relation(endpoint, id=5)
    ctx = req_ctx()
    with caplog.at_level(logging.ERROR):
        out = ctx.run(
            ctx.on.relation_changed(rel, remote_unit=0),
            testing.State(relations={rel}, stored_states={stored({"5": "nfs://10.0.0.5/data"})}),
        )
    assert nfs_events(ctx) == []
    assert mounted_memory(out) == {"5": "nfs://10.0.0.5/data"}
    assert f"nfs-share: relation 5: invalid endpoint '{endpoint}'" in caplog.text
    assert out.unit_status == testing.BlockedStatus(
        "invalid NFS endpoint from prov; see debug-log"
    )


def test_anchor_cache_seeds_memory_and_is_removed():
    rel = testing.Relation(
        "nfs-share",
        remote_app_name="prov",
        remote_app_data={"endpoint": "nfs://10.0.0.5/data"},
        remote_units_data={0: {"ingress-address": "10.0.0.5"}},
        local_unit_data={"cache": json.dumps({"endpoint": "nfs://10.0.0.5/data"})},
    )
    ctx = req_ctx()
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel}))
    assert nfs_events(ctx) == []
    assert "cache" not in out.get_relation(rel.id).local_unit_data
    assert mounted_memory(out) == {str(rel.id): "nfs://10.0.0.5/data"}


def test_mount_event_keeps_endpoint_when_deferred():
    class Deferring(RequirerCharm):
        def __init__(self, framework):
            super().__init__(framework)
            framework.observe(self.nfs.on.mount_share, self._on_mount)

        def _on_mount(self, event: MountShareEvent):
            if not self.model.unit.is_leader():
                event.defer()

    ctx = testing.Context(Deferring, meta=REQ_META)
    rel = provider_relation("nfs://10.0.0.5/data")
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel}))
    assert len(out.deferred) == 1
    # The provider changes the endpoint meanwhile; the deferred event still names the old one.
    rel2 = testing.Relation(
        "nfs-share",
        id=rel.id,
        remote_app_name="prov",
        remote_app_data={"endpoint": "nfs://10.0.0.5/other"},
        remote_units_data=rel.remote_units_data,
    )
    ctx = testing.Context(Deferring, meta=REQ_META, capture_deferred_events=True)
    ctx.run(
        ctx.on.update_status(),
        testing.State(
            leader=True, relations={rel2}, deferred=out.deferred, stored_states=out.stored_states
        ),
    )
    assert ("mount", "nfs://10.0.0.5/data") in nfs_events(ctx)


def test_fetch_data_omits_cache():
    class Charm(RequirerCharm):
        def __init__(self, framework):
            super().__init__(framework)
            framework.observe(self.on.update_status, self._on_update)

        def _on_update(self, _event):
            rel = self.model.get_relation("nfs-share")
            assert rel is not None
            self.unit.status = ops.MaintenanceStatus(json.dumps(self.nfs.fetch_data()))

    class NoCollect(Charm):
        def _on_collect(self, event):
            pass

    ctx = testing.Context(NoCollect, meta=REQ_META)
    rel = testing.Relation(
        "nfs-share",
        id=2,
        remote_app_name="prov",
        remote_app_data={"endpoint": "nfs://h/x", "cache": "{}"},
    )
    out = ctx.run(ctx.on.update_status(), testing.State(relations={rel}))
    assert json.loads(out.unit_status.message) == {"2": {"endpoint": "nfs://h/x"}}


# ------------------------------------------------------------------------------------------------
# Provider
# ------------------------------------------------------------------------------------------------


def requirer_relation(
    request: dict | None = None, addresses=("10.1.0.1", "10.1.0.2", "10.1.0.3"), rel_id=1, **kw
) -> testing.Relation:
    return testing.Relation(
        "nfs-share",
        id=rel_id,
        remote_app_name="req",
        remote_app_data=request
        if request is not None
        else {"name": "/data", "allowlist": "0.0.0.0", "size": "-1"},
        remote_units_data={i: {"ingress-address": a} for i, a in enumerate(addresses)},
        **kw,
    )


def provider_events(ctx: testing.Context) -> list[tuple]:
    out = []
    for event in ctx.emitted_events:
        if isinstance(event, ShareRequestedEvent):
            out.append(("requested", event.name, event.size_gb))
        elif isinstance(event, ClientsChangedEvent):
            out.append(("clients", event.name, event.clients))
    return out


@pytest.mark.parametrize(
    ("allowlist", "clients"),
    [
        ("0.0.0.0", ["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
        ("*", ["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
        ("10.1.0.0/31", ["10.1.0.1"]),
        ("10.1.0.1/31", ["10.1.0.1"]),
        ("192.168.0.0/16", []),
        ("10.1.0.3,10.1.0.2", ["10.1.0.2", "10.1.0.3"]),
        ("10.1.0.999,10.1.0.0/40,10.1.0.2", ["10.1.0.2"]),
        ("::/0", ["10.1.0.1", "10.1.0.2", "10.1.0.3"]),
    ],
)
def test_provider_client_list_is_units_within_allowlist(allowlist, clients):
    ctx = prov_ctx()
    rel = requirer_relation({"name": "/data", "allowlist": allowlist, "size": "5"})
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(leader=True, relations={rel})
    )
    expected = [("requested", "/data", 5)]
    if clients:
        expected.append(("clients", "/data", clients))
    assert provider_events(ctx) == expected
    assert out.get_relation(rel.id).local_app_data == {"endpoint": "nfs://10.0.0.5/data"}


def test_provider_sorts_ipv4_before_ipv6_numerically():
    ctx = prov_ctx()
    rel = requirer_relation(addresses=("fd00::2", "10.1.0.10", "10.1.0.9", "fd00::1"))
    ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(leader=True, relations={rel})
    )
    assert provider_events(ctx)[-1][2] == ["10.1.0.9", "10.1.0.10", "fd00::1", "fd00::2"]


def test_provider_falls_back_to_private_address_and_skips_units_without_one():
    ctx = prov_ctx()
    rel = testing.Relation(
        "nfs-share",
        remote_app_name="req",
        remote_app_data={"name": "/d", "allowlist": "0.0.0.0", "size": "-1"},
        remote_units_data={0: {"private-address": "10.1.0.7"}, 1: {}},
    )
    ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(leader=True, relations={rel})
    )
    assert provider_events(ctx)[-1] == ("clients", "/d", ["10.1.0.7"])


def test_provider_follows_scale_out_scale_in_and_removal():
    ctx = prov_ctx()
    rel = requirer_relation()
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(leader=True, relations={rel})
    )
    # Scale out.
    rel = requirer_relation(addresses=("10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"))
    ctx = prov_ctx()
    state, rel = with_remote(out, rel)
    out = ctx.run(ctx.on.relation_joined(rel, remote_unit=3), state)
    assert provider_events(ctx) == [
        ("clients", "/data", ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"])
    ]
    # Same data again: nothing.
    ctx = prov_ctx()
    state, rel = with_remote(out, rel)
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=3), state)
    assert provider_events(ctx) == []
    # Scale in (the departing unit is still listed during its departed hook).
    ctx = prov_ctx()
    state, rel = with_remote(out, rel)
    out = ctx.run(ctx.on.relation_departed(rel, remote_unit=3, departing_unit=3), state)
    assert provider_events(ctx) == [("clients", "/data", ["10.1.0.1", "10.1.0.2", "10.1.0.3"])]
    # Relation removed.
    ctx = prov_ctx()
    state, rel = with_remote(out, rel)
    ctx.run(ctx.on.relation_broken(rel), state)
    assert provider_events(ctx) == [("clients", "/data", [])]


def with_remote(
    state: testing.State, rel: testing.Relation
) -> tuple[testing.State, testing.Relation]:
    """The same unit state with this relation's remote side updated."""
    old = state.get_relation(rel.id)
    new_rel = testing.Relation(
        "nfs-share",
        id=rel.id,
        remote_app_name=rel.remote_app_name,
        remote_app_data=rel.remote_app_data,
        remote_units_data=rel.remote_units_data,
        local_app_data=old.local_app_data,
        local_unit_data=old.local_unit_data,
    )
    return (
        testing.State(leader=state.leader, relations={new_rel}, stored_states=state.stored_states),
        new_rel,
    )


def test_provider_request_change_reemits_share_requested():
    ctx = prov_ctx()
    rel = requirer_relation()
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(leader=True, relations={rel})
    )
    rel = requirer_relation({"name": "/data", "allowlist": "0.0.0.0", "size": "20"})
    ctx = prov_ctx()
    state, rel = with_remote(out, rel)
    ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    assert provider_events(ctx) == [("requested", "/data", 20)]


def test_provider_events_only_on_leader_and_new_leader_reemits():
    ctx = prov_ctx()
    rel = requirer_relation()
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(leader=False, relations={rel})
    )
    assert provider_events(ctx) == []
    assert out.get_relation(rel.id).local_app_data == {}
    ctx = prov_ctx()
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(leader=True, relations={rel})
    )
    ctx = prov_ctx()
    ctx.run(ctx.on.leader_elected(), out)
    assert [e[0] for e in provider_events(ctx)] == ["requested", "clients"]


@pytest.mark.parametrize(
    ("request_data", "field"),
    [
        ({"name": "/data", "allowlist": "0.0.0.0", "size": "abc"}, "size"),
        ({"name": "/data", "allowlist": "0.0.0.0", "size": "0"}, "size"),
        ({"name": "/data", "allowlist": "0.0.0.0", "size": "1.5"}, "size"),
        ({"name": "", "allowlist": "0.0.0.0", "size": "1"}, "name"),
        ({"name": "../x", "allowlist": "0.0.0.0", "size": "1"}, "name"),
        ({"name": "/data", "allowlist": " , ", "size": "1"}, "allowlist"),
    ],
)
def test_provider_bad_request_is_logged_blocked_and_ignored(request_data, field, caplog):
    ctx = prov_ctx()
    rel = requirer_relation(request_data)
    with caplog.at_level(logging.ERROR):
        out = ctx.run(
            ctx.on.relation_changed(rel, remote_unit=0),
            testing.State(leader=True, relations={rel}),
        )
    assert provider_events(ctx) == []
    assert out.get_relation(rel.id).local_app_data == {}
    assert f"invalid share request from req: {field}" in caplog.text
    assert out.unit_status == testing.BlockedStatus(f"invalid share request from req: {field}")


def test_set_endpoint_validates_and_empty_withdraws():
    class Charm(ProviderCharm):
        VALUE: str = ""

        def __init__(self, framework):
            super().__init__(framework)
            framework.observe(self.on.update_status, self._on_update)

        def _on_update(self, _event):
            rel = self.model.get_relation("nfs-share")
            assert rel is not None
            self.nfs.set_endpoint(rel.id, self.VALUE)

    ctx = testing.Context(Charm, meta=PROV_META)
    rel = requirer_relation(local_app_data={"endpoint": "nfs://10.0.0.5/data"})
    out = ctx.run(ctx.on.update_status(), testing.State(leader=True, relations={rel}))
    assert out.get_relation(rel.id).local_app_data == {}
    Charm.VALUE = "nfs:/bad"
    with pytest.raises(testing.errors.UncaughtCharmError) as info:
        ctx.run(ctx.on.update_status(), testing.State(leader=True, relations={rel}))
    assert isinstance(info.value.__cause__, ValueError)


def test_get_clients_and_event_clients_agree():
    class Charm(ProviderCharm):
        def __init__(self, framework):
            super().__init__(framework)
            framework.observe(self.nfs.on.share_requested, self._check)

        def _check(self, event: ShareRequestedEvent):
            assert event.clients == self.nfs.get_clients(event.relation.id) == ["10.1.0.1"]
            assert event.allowlist == "10.1.0.1/32"
            assert event.size == "-1" and event.size_gb is None

    ctx = testing.Context(Charm, meta=PROV_META)
    rel = requirer_relation({"name": "/d", "allowlist": "10.1.0.1/32", "size": "-1"})
    ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(leader=False, relations={rel})
    )
    ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(leader=True, relations={rel})
    )


def test_library_makes_no_filesystem_or_process_calls():
    """Acceptance 7: the module imports nothing that reaches files, processes or network."""
    tree = ast.parse(pathlib.Path(lib.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"open", "exec", "eval", "__import__"}, node.func.id
    assert imported <= {
        "__future__",
        "collections",
        "ipaddress",
        "json",
        "logging",
        "re",
        "dataclasses",
        "typing",
        "ops",
    }
    assert lib.LIBAPI == 0 and lib.LIBPATCH >= 1 and len(lib.LIBID) == 32
    assert lib.PYDEPS == []


# ------------------------------------------------------------------------------------------------
# Hostile requirer and provider data: logged, shown in status, ignored; never raised
# ------------------------------------------------------------------------------------------------

HOSTILE_ADDRESSES = [
    "*",
    "0.0.0.0",
    "::",
    "0.0.0.0/0",
    "::/0",
    "10.0.0.0/8",
    "10.1.0.7/32",
    "files.example.com",
    "@netgroup",
    "224.0.0.1",
    "fe80::1%eth0",
    "10.1.0.8, 10.1.0.9",
]


@pytest.mark.parametrize("allowlist", ["0.0.0.0", "*", "0.0.0.0/0,files.example.com,@netgroup"])
@pytest.mark.parametrize("address", HOSTILE_ADDRESSES)
def test_provider_exports_only_literal_single_unit_addresses(address, allowlist, caplog):
    ctx = prov_ctx()
    rel = requirer_relation(
        {"name": "/data", "allowlist": allowlist, "size": "-1"}, addresses=("10.1.0.1", address)
    )
    with caplog.at_level(logging.ERROR):
        out = ctx.run(
            ctx.on.relation_changed(rel, remote_unit=1),
            testing.State(leader=True, relations={rel}),
        )
    clients = [e for e in provider_events(ctx) if e[0] == "clients"]
    assert clients == [("clients", "/data", ["10.1.0.1"])]  # the other unit is left out
    assert "req/1" in caplog.text and "not a single IP address" in caplog.text
    assert out.unit_status == testing.BlockedStatus(
        "ignoring req/1 of req: its address is not a single IP"
    )


@pytest.mark.parametrize(
    ("request_data", "field"),
    [
        ({"name": "/data", "allowlist": "0.0.0.0", "size": "9" * 5000}, "size"),
        ({"name": "/data", "allowlist": "0.0.0.0", "size": "-" + "9" * 5000}, "size"),
        ({"name": "/data", "allowlist": "0.0.0.0", "size": str(10**12)}, "size"),
        ({"name": "/" + "a" * 300, "allowlist": "0.0.0.0", "size": "1"}, "name"),
        ({"name": "a" * 65, "allowlist": "0.0.0.0", "size": "1"}, "name"),
        ({"name": "/data\n/x", "allowlist": "0.0.0.0", "size": "1"}, "name"),
        ({"name": "a b", "allowlist": "0.0.0.0", "size": "1"}, "name"),
        ({"name": "/x/../../etc", "allowlist": "0.0.0.0", "size": "1"}, "name"),
        ({"name": "/data", "allowlist": "0.0.0.0," * 2000, "size": "1"}, "allowlist"),
    ],
)
def test_provider_out_of_bounds_request_is_blocked_not_raised(request_data, field):
    ctx = prov_ctx()
    rel = requirer_relation(request_data)
    out = testing.State(leader=True, relations={rel})
    # update-status shows what the relation-changed saw (stored state): it reads no relation.
    for event in (ctx.on.relation_changed(rel, remote_unit=0), ctx.on.update_status()):
        out = ctx.run(event, out)
        assert out.unit_status == testing.BlockedStatus(f"invalid share request from req: {field}")
    assert provider_events(ctx) == []


def test_size_gb_of_a_huge_size_is_none_not_an_error():
    class Charm(ProviderCharm):
        def __init__(self, framework):
            super().__init__(framework)
            framework.observe(self.on.update_status, self._on_update)

        def _on_update(self, _event):
            rel = self.model.get_relation("nfs-share")
            assert rel is not None
            event = ShareRequestedEvent(ops.Handle(None, "x", "1"), rel, app=rel.app)
            self.seen = event.size_gb

    ctx = testing.Context(Charm, meta=PROV_META)
    rel = requirer_relation({"name": "/data", "allowlist": "0.0.0.0", "size": "9" * 5000})
    with ctx(ctx.on.update_status(), testing.State(leader=True, relations={rel})) as manager:
        manager.run()
        assert manager.charm.seen is None


@pytest.mark.parametrize("name", ["/data\nx", "a" * 65, "/x/y", "../x"])
def test_request_share_refuses_names_the_provider_would_refuse(name):
    with pytest.raises(testing.errors.UncaughtCharmError) as info:
        run_direct({"name": name})
    assert "invalid share name" in str(info.value.__cause__)


@pytest.mark.parametrize("cache", ["[" * 4000, "[" * 50_000, '{"a":' * 1500])
def test_deeply_nested_anchor_cache_is_ignored_and_removed(cache):
    ctx = req_ctx()
    rel = provider_relation("nfs://10.0.0.5/data", local_unit_data={"cache": cache})
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel}))
    assert nfs_events(ctx) == [("mount", "nfs://10.0.0.5/data")]
    assert "cache" not in out.get_relation(rel.id).local_unit_data


def test_huge_endpoint_is_refused_quickly():
    with pytest.raises(ValueError, match="longer than"):
        parse_endpoint("nfs://10.0.0.5/" + "a" * 100_000)
