"""The remount part of the `one-lock` engine (see engines.py): an endpoint change mid-roll.

- `NfsProviderCharm` (nfs_provider_charm/): a stand-in NFS server; its leader publishes its
  `endpoint` config in the `nfs-share` relation (the provider's app databag key `endpoint`, as
  charms.storage_libs.v0.nfs_interfaces reads it). The stand-in serves whatever is asked: the
  demo charm's request is not what is under test here.
- `setup`: deploy it, integrate, and run `nfs-mount` on the leader, so that every unit has the
  share mounted once the deployment settles.
- `request_remount`: the provider moves the share (`juju config nfs-provider endpoint=...`),
  once per schedule; every member that has the old share mounted then owes one remount (I4).
- `NfsFakes`: the machine side: `nfs.mount`, `nfs.umount` and `nfs.mounted_source` on a mount
  table per unit, kept in the unit's FakeService (the fstab goes to the unit's own root); a
  mount or an umount costs a tick.
"""

from __future__ import annotations

import pathlib

import ops

from jujusim.runner import CharmSpec
from jujusim.simulator import Simulator

from .upgrade_engine import UpgradeFakes

APP = "coordinated-ops"
PROVIDER_APP = "nfs-provider"
SPEC_DIR = pathlib.Path(__file__).with_name("nfs_provider_charm")
NEW_ENDPOINT = "nfs://10.0.0.9/demo"
MOVED_KEY = "nfs.moved"  # sim.extras: the endpoint change was requested in this schedule
MOUNT_TICKS = 1  # an umount or a mount costs a tick on top of its hook
MOUNTPOINT = "/srv/demo-share"  # never created: nfs.mount and nfs.umount are stood in for
NFS_FUNCTIONS = ("mount", "umount", "mounted_source")


class NfsProviderCharm(ops.CharmBase):
    """Publishes its `endpoint` config to every requirer (leader only)."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        for event in (
            self.on.config_changed,
            self.on.leader_elected,
            self.on["nfs-share"].relation_joined,
            self.on["nfs-share"].relation_changed,
        ):
            framework.observe(event, self._publish)

    def _publish(self, _: ops.EventBase) -> None:
        if not self.unit.is_leader():
            return
        endpoint = str(self.config["endpoint"])
        for relation in self.model.relations["nfs-share"]:
            bag = relation.data[self.app]
            if bag.get("endpoint") != endpoint:
                bag["endpoint"] = endpoint


def setup(sim: Simulator) -> None:
    """Deploy the provider, integrate, and ask for the share (before the deployment settles)."""
    sim.deploy(PROVIDER_APP, CharmSpec.from_dir(NfsProviderCharm, SPEC_DIR), units=1)
    sim.integrate(APP, "nfs-share", PROVIDER_APP, "nfs-share")
    sim.run_action(f"{APP}/leader", "nfs-mount", name="demo", mountpoint=MOUNTPOINT)


def request_remount(sim: Simulator) -> None:
    """Move the share once; each member with the old share mounted owes one remount."""
    if sim.extras.get(MOVED_KEY):
        return
    sim.extras[MOVED_KEY] = True
    for unit in sim.members(APP):
        service = sim.workloads.get(unit)
        if getattr(service, "mounts", None) and sim.recorder is not None:
            sim.recorder.request(unit, "remount")
    sim.config(PROVIDER_APP, endpoint=NEW_ENDPOINT)


class NfsFakes(UpgradeFakes):
    """The upgrade engine's fakes plus each unit's mounts (nothing touches the host)."""

    def mount(self, source: str, mountpoint: str, options: list[str]) -> None:
        self._service().mounts[mountpoint] = source
        self.sim.add_cost(MOUNT_TICKS)

    def umount(self, mountpoint: str, source: str) -> None:
        mounts = self._service().mounts
        if mounts.get(mountpoint) != source:  # as src/nfs.py: never unmount what is not ours
            import nfs

            raise nfs.MountError(f"{mountpoint} is not {source}; not unmounting it")
        del mounts[mountpoint]
        self.sim.add_cost(MOUNT_TICKS)

    def mounted_source(self, mountpoint: str) -> str | None:
        return self._service().mounts.get(mountpoint)

    def patches(self) -> list[tuple[object, str, object]]:
        import nfs

        stand_ins = [(nfs, name, getattr(self, name)) for name in NFS_FUNCTIONS]
        return [*super().patches(), *stand_ins]
