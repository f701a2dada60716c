"""nfs-mount on the leader mounts the NFS share on every unit, and it really is one share."""

from __future__ import annotations

import secrets
import shlex

from tests.integration import helpers


def test_nfs_mount_mounts_the_share_on_every_unit(deployment: helpers.Deployment):
    task = deployment.mount_share()
    assert task.results.get("mountpoint") == helpers.MOUNTPOINT, task.results
    assert task.results.get("name", "").lstrip("/") == helpers.SHARE_NAME, task.results

    units = deployment.units()
    assert len(units) == 3
    mounts = {unit: deployment.mount_of(unit) for unit in units}
    for unit, mount in mounts.items():
        assert mount is not None, f"{unit}: nothing mounted at {helpers.MOUNTPOINT}"
        assert mount[0].startswith("nfs"), f"{unit}: {mount}"
    assert len({mount[1] for mount in mounts.values() if mount}) == 1, mounts

    # One share: what a unit writes, every other unit and the server's export directory see.
    probe = f"probe-{secrets.token_hex(4)}"
    path = f"{helpers.MOUNTPOINT}/{probe}"
    deployment.sh(units[0], f"echo {probe} > {shlex.quote(path)}")
    for unit in units[1:]:
        assert deployment.sh(unit, f"cat {shlex.quote(path)}").strip() == probe
    on_server = f"{deployment.share_dir_on_server()}/{probe}"
    assert deployment.sh(deployment.nfs_server_unit(), f"cat {on_server}").strip() == probe

    status = deployment.juju.status()
    for unit in units:
        message = status.apps[helpers.APP].units[unit].workload_status.message
        assert status.apps[helpers.APP].units[unit].workload_status.current == "active", message
