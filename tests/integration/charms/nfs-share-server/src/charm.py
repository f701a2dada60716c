#!/usr/bin/env python3
"""nfs-share-server: serves each requested share with nfs-ganesha (a test charm).

On `share_requested` (leader) the charm creates `<export-root>/r<relation id>-<slug>`, gives the
share a stable Export_Id, renders /etc/ganesha/ganesha.conf with src/ganesha.py, restarts ganesha
when the text changed, and publishes `nfs://<address>[:<port>]/r<relation id>-<slug>`.

Shares belong to one relation: two applications that both ask for `shared` get two directories
and two pseudo paths, and a later relation never serves the files of an earlier one (relation ids
are never reused in a model). On `clients_changed` it re-renders with
the new client list (the library computes it from the requirer units' addresses). On
relation-broken the export goes away; the directory and its data stay.
"""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess

import ganesha
import ops
from charms.storage_libs.v0.nfs_interfaces import (
    ClientsChangedEvent,
    NFSProvides,
    ShareRequestedEvent,
)

logger = logging.getLogger(__name__)

RELATION = "nfs-share"
CONFIG_FILE = pathlib.Path("/etc/ganesha/ganesha.conf")
STATE_DIR = pathlib.Path("/var/lib/nfs-share-server")
PACKAGES = ["nfs-ganesha", "nfs-ganesha-vfs"]
SERVICE = "nfs-ganesha"


def run(argv: list[str]) -> None:
    """Run one machine command (apt-get, systemctl); tests replace this function."""
    logger.info("running %s", " ".join(argv))
    subprocess.run(argv, check=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def restart_ganesha() -> None:
    """Restart the service so it reads the new configuration (no D-Bus live updates here)."""
    run(["systemctl", "restart", SERVICE])


class NfsShareServerCharm(ops.CharmBase):
    """One ganesha export per nfs-share relation, open only to that requirer's units."""

    _stored = ops.StoredState()

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        # exports: relation id -> {"slug", "clients", "size"}, where slug is the per-relation
        # directory and pseudo name; ids: "<relation id>/<slug>" -> Export_Id; problems: relation
        # id -> why its request is not served.
        self._stored.set_default(exports={}, ids={}, next_id=1, problems={})
        self.nfs = NFSProvides(self, RELATION)
        framework.observe(self.on.install, self._on_install)
        framework.observe(self.on.config_changed, self._on_config_changed)
        framework.observe(self.nfs.on.share_requested, self._on_share_requested)
        framework.observe(self.nfs.on.clients_changed, self._on_clients_changed)
        framework.observe(self.on[RELATION].relation_broken, self._on_relation_broken)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)

    def _on_install(self, _event: ops.InstallEvent):
        run(["apt-get", "update", "-q"])
        run(["apt-get", "install", "-y", "-q", *PACKAGES])
        run(["systemctl", "enable", SERVICE])
        self.apply()

    def _on_config_changed(self, _event: ops.ConfigChangedEvent):
        self.apply()
        for relation in self.model.relations[RELATION]:
            self._publish_endpoint(relation)

    def _on_share_requested(self, event: ShareRequestedEvent):
        relation_id = str(event.relation.id)
        try:
            share = ganesha.share_dir(event.relation.id, event.name or "")
            directory = self._export_root() / share
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o777)
        except (ValueError, OSError) as error:
            self._stored.problems[relation_id] = str(error)[:200]
            logger.error("relation %s: %s", relation_id, error)
            return
        self._stored.problems.pop(relation_id, None)
        key = f"{event.relation.id}/{share}"
        if key not in self._stored.ids:
            self._stored.ids[key] = self._stored.next_id
            self._stored.next_id += 1
        self._stored.exports[str(event.relation.id)] = {
            "slug": share,
            "clients": event.clients,
            "size": event.size_gb,
        }
        self.apply()
        self._publish_endpoint(event.relation)

    def _on_clients_changed(self, event: ClientsChangedEvent):
        export = self._stored.exports.get(str(event.relation.id))
        if export is not None and event.relation.active:  # broken: relation-broken drops it
            export["clients"] = list(event.clients)
            self.apply()

    def _on_relation_broken(self, event: ops.RelationBrokenEvent):
        self._stored.problems.pop(str(event.relation.id), None)
        if self._stored.exports.pop(str(event.relation.id), None) is not None:
            self.apply()

    def _on_collect_status(self, event: ops.CollectStatusEvent):
        for problem in self._stored.problems.values():
            event.add_status(ops.BlockedStatus(f"bad share request: {problem}"))
        if self._address() is None:
            event.add_status(ops.WaitingStatus("waiting for an address to serve on"))
        shares = [
            f"{e['slug']} ({'unlimited' if e['size'] is None else str(e['size']) + ' GiB'},"
            f" {len(e['clients'])} clients)"
            for e in self._stored.exports.values()
        ]
        event.add_status(
            ops.ActiveStatus(f"serving {', '.join(shares)}" if shares else "no shares")
        )

    # -- helpers ------------------------------------------------------------------------------

    def _export_root(self) -> pathlib.Path:
        return pathlib.Path(str(self.config["export-root"]))

    def _port(self) -> int:
        return int(self.config["nfs-port"])  # pyright: ignore[reportArgumentType]

    def _address(self) -> str | None:
        configured = str(self.config.get("bind-address") or "")
        if configured:
            return configured
        binding = self.model.get_binding(RELATION)
        if binding is None or binding.network.ingress_address is None:
            return None
        return str(binding.network.ingress_address)

    def exports(self) -> list[ganesha.Export]:
        """The exports to serve now, from what was requested and who may mount it."""
        root = self._export_root()
        return [
            ganesha.Export(
                export_id=self._stored.ids[f"{relation_id}/{e['slug']}"],
                path=str(root / e["slug"]),
                pseudo=f"/{e['slug']}",
                clients=tuple(e["clients"]),
            )
            for relation_id, e in self._stored.exports.items()
        ]

    def apply(self) -> None:
        """Render the configuration; write it and restart ganesha only if the text changed."""
        address = self._address()
        if address is None:
            return
        settings = ganesha.Settings(address, self._port(), str(STATE_DIR / "recovery"))
        text = ganesha.render(self.exports(), settings)
        try:
            if CONFIG_FILE.read_text() == text:
                return
        except FileNotFoundError:
            pass
        (STATE_DIR / "recovery").mkdir(parents=True, exist_ok=True)
        CONFIG_FILE.parent.mkdir(parents=True, exist_ok=True)
        CONFIG_FILE.write_text(text)
        restart_ganesha()

    def _publish_endpoint(self, relation: ops.Relation) -> None:
        export = self._stored.exports.get(str(relation.id))
        address = self._address()
        if export is None or address is None:
            return
        self.nfs.set_endpoint(relation.id, ganesha.endpoint(address, export["slug"], self._port()))


if __name__ == "__main__":  # pragma: nocover
    ops.main(NfsShareServerCharm)
