"""A stand-in for the charmed-etcd provider side of `etcd_client` (metadata in etcd_provider/).

Its leader answers every requirer with `endpoints` and `tls-ca` in the application databag, as
charmed-etcd does once the requirer's request (prefix and client certificate) is published. The
etcd behind it is the simulator's in-memory `FakeEtcd`; the addresses are never dialled.
"""

from __future__ import annotations

import pathlib

import ops

SPEC_DIR = pathlib.Path(__file__).with_name("etcd_provider")
ENDPOINTS = "10.99.0.1:2379,10.99.0.2:2379"
SERVER_CA = "-----BEGIN CERTIFICATE-----\nsimulated etcd server CA\n-----END CERTIFICATE-----\n"


class EtcdProviderCharm(ops.CharmBase):
    """Publishes endpoints and the server CA to requirers that asked for a resource."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        events = self.on["etcd-client"]
        for event in (events.relation_joined, events.relation_changed, self.on.leader_elected):
            framework.observe(event, self._answer)

    def _answer(self, _: ops.EventBase) -> None:
        if not self.unit.is_leader():
            return
        for relation in self.model.relations["etcd-client"]:
            if relation.app is None or not relation.data[relation.app].get("requests"):
                continue
            bag = relation.data[self.app]
            if bag.get("endpoints") != ENDPOINTS:
                bag["endpoints"] = ENDPOINTS
            if bag.get("tls-ca") != SERVER_CA:
                bag["tls-ca"] = SERVER_CA
