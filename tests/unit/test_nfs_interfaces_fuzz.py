"""Property test: no relation data another application writes can make nfs_interfaces raise.

Hypothesis feeds arbitrary strings and JSON (deeply nested, huge numbers, wildcards, networks,
broken URLs) into every key the library reads, on the requirer and the provider, leader and not,
and runs one hook of each kind. A hook that raised would fail the test (ops.testing re-raises).
The test charms use the events the way a charm would (event.name, size_gb, clients, endpoint),
so the values the library hands them are covered too: an endpoint it emits must parse, a client
list must hold single IP addresses only.

Derandomized (the examples are the same on every run) and bounded to keep `tox -e unit` fast.
"""

from __future__ import annotations

import ipaddress
import json

import ops
import pytest
from charms.storage_libs.v0.nfs_interfaces import (
    ClientsChangedEvent,
    MountShareEvent,
    NFSProvides,
    NFSRequires,
    ShareRequestedEvent,
    UmountShareEvent,
    parse_endpoint,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ops import testing

FUZZ = settings(
    max_examples=10,  # per hook and leadership: 14 combinations per side
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Text Juju could carry (no lone surrogates: bags are UTF-8).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
).map(json.dumps)
NASTY = st.sampled_from(
    [
        "",
        " ",
        "*",
        "0.0.0.0",
        "0.0.0.0/0",
        "::/0",
        "10.0.0.0/8",
        "@netgroup",
        "files.example.com",
        "fe80::1%eth0",
        "10.1.0.1,10.1.0.2",
        "-1",
        "0",
        "1.5",
        "9" * 5000,
        "-" + "9" * 400,
        "/" + "a" * 300,
        "../x",
        "/data\n",
        "nfs://10.0.0.5/data",
        "nfs://[::1/x",
        "nfs:/x",
        "host:relative",
        "nfs://10.0.0.5:99999/x",
        "nfs://" + "a" * 5000 + "/x",
        "[" * 5000,
        '{"a":' * 900,
        '{"endpoint": "nfs://10.0.0.5/data"}',
        '{"endpoint": ' + "[" * 2000 + "}",
    ]
)
VALUE = st.one_of(NASTY, TEXT, JSON)
MAYBE = st.one_of(st.none(), VALUE)  # None: the key is absent


def bag(**values: str | None) -> dict[str, str]:
    return {key: value for key, value in values.items() if value is not None}


HOOKS = ["joined", "changed", "departed", "broken", "leader_elected", "upgrade", "update_status"]


def event_for(ctx: testing.Context, hook: str, relation: testing.Relation):
    if hook == "joined":
        return ctx.on.relation_joined(relation, remote_unit=0)
    if hook == "changed":
        return ctx.on.relation_changed(relation, remote_unit=1)
    if hook == "departed":
        return ctx.on.relation_departed(relation, remote_unit=1, departing_unit=1)
    if hook == "broken":
        return ctx.on.relation_broken(relation)
    if hook == "leader_elected":
        return ctx.on.leader_elected()
    if hook == "upgrade":
        return ctx.on.upgrade_charm()
    return ctx.on.update_status()


# ------------------------------------------------------------------------------------------------
# Requirer: the provider's app bag (endpoint, anything else), our unit bag (the old `cache`),
# our app bag (name, read at leader-elected).
# ------------------------------------------------------------------------------------------------


class Requirer(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.nfs = NFSRequires(self, "nfs-share")
        framework.observe(self.nfs.on.server_connected, self._on_connected)
        framework.observe(self.nfs.on.mount_share, self._on_mount)
        framework.observe(self.nfs.on.umount_share, self._on_umount)

    def _on_connected(self, event):
        self.nfs.request_share(event.relation.id, name="/data", size=10)
        self.nfs.fetch_data()

    def _on_mount(self, event: MountShareEvent):
        assert event.endpoint is not None
        parse_endpoint(event.endpoint)  # what the library emits always parses

    def _on_umount(self, event: UmountShareEvent):
        _ = event.endpoint


@pytest.mark.parametrize("leader", [True, False])
@pytest.mark.parametrize("hook", HOOKS)
@FUZZ
@given(endpoint=MAYBE, other=MAYBE, cache=MAYBE, name=MAYBE)
# The review's cases, always run: a deeply nested old `cache`, a huge endpoint.
@example(endpoint=None, other=None, cache="[" * 5000, name=None)
@example(endpoint="nfs://" + "a" * 5000, other=None, cache=None, name=None)
def test_requirer_hooks_never_raise(endpoint, other, cache, name, leader, hook):
    ctx = testing.Context(
        Requirer, meta={"name": "req", "requires": {"nfs-share": {"interface": "nfs_share"}}}
    )
    relation = testing.Relation(
        "nfs-share",
        remote_app_name="prov",
        remote_app_data=bag(endpoint=endpoint, other=other),
        local_app_data=bag(name=name),
        local_unit_data=bag(cache=cache),
        remote_units_data={0: {}, 1: {}},
    )
    ctx.run(event_for(ctx, hook, relation), testing.State(leader=leader, relations={relation}))


# ------------------------------------------------------------------------------------------------
# Provider: the requirer's app bag (name, allowlist, size) and its unit bags (addresses).
# ------------------------------------------------------------------------------------------------


class Provider(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.nfs = NFSProvides(self, "nfs-share")
        framework.observe(self.nfs.on.share_requested, self._on_requested)
        framework.observe(self.nfs.on.clients_changed, self._on_clients)

    def _on_requested(self, event: ShareRequestedEvent):
        _ = (event.name, event.allowlist, event.size, event.size_gb)
        self._check_clients(event.clients)
        self._check_clients(self.nfs.get_clients(event.relation.id))
        self.nfs.set_endpoint(event.relation.id, "nfs://10.0.0.5/data")

    def _on_clients(self, event: ClientsChangedEvent):
        self._check_clients(event.clients)

    @staticmethod
    def _check_clients(clients: list[str]):
        for client in clients:  # a literal single address, nothing wider
            address = ipaddress.ip_address(client)
            assert not address.is_unspecified and not address.is_multicast


@pytest.mark.parametrize("leader", [True, False])
@pytest.mark.parametrize("hook", HOOKS)
@FUZZ
@given(
    name=MAYBE,
    allowlist=MAYBE,
    size=MAYBE,
    ingress=st.tuples(MAYBE, MAYBE),
    private=st.tuples(MAYBE, MAYBE),
)
# The review's cases, always run: a 5000-digit size, a 300-character name, a wildcard unit.
@example(
    name="/data",
    allowlist="0.0.0.0",
    size="9" * 5000,
    ingress=("10.1.0.1", None),
    private=(None, None),
)
@example(
    name="/" + "a" * 300,
    allowlist="0.0.0.0",
    size="1",
    ingress=("10.1.0.1", None),
    private=(None, None),
)
@example(
    name="/data", allowlist="0.0.0.0", size="-1", ingress=("10.1.0.1", "*"), private=(None, None)
)
@example(
    name="/data",
    allowlist="*",
    size="-1",
    ingress=("0.0.0.0/0", None),
    private=(None, "@netgroup"),
)
def test_provider_hooks_never_raise(name, allowlist, size, ingress, private, leader, hook):
    ctx = testing.Context(
        Provider, meta={"name": "prov", "provides": {"nfs-share": {"interface": "nfs_share"}}}
    )
    relation = testing.Relation(
        "nfs-share",
        remote_app_name="req",
        remote_app_data=bag(name=name, allowlist=allowlist, size=size),
        remote_units_data={
            unit: bag(**{"ingress-address": ingress[unit], "private-address": private[unit]})
            for unit in (0, 1)
        },
    )
    ctx.run(event_for(ctx, hook, relation), testing.State(leader=leader, relations={relation}))
