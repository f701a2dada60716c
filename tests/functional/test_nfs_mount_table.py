"""src/nfs.py against the real kernel mount table, with tmpfs standing in for NFS.

Real: the `mount`/`umount` commands through `nfs.run_command`, /proc/self/mounts, the fstab file
(under COORDINATED_OPS_ROOT). Stand-in: a tmpfs instead of an NFS share, because this kernel has
no NFS client; what is tested is how the charm reads the table and unmounts, not NFS itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

import nfs


@pytest.fixture
def mountpoint(tmp_path, monkeypatch):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    monkeypatch.setenv("COORDINATED_OPS_ROOT", str(tmp_path / "root"))
    monkeypatch.setattr(nfs, "RETRY_WAIT_MIN", 0)
    monkeypatch.setattr(nfs, "RETRY_WAIT_MAX", 0)
    path = tmp_path / "mnt with space"
    path.mkdir()
    yield str(path)
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def test_mount_table_and_umount_keep_the_mountpoint_and_its_files(mountpoint):
    source = f"share-{uuid.uuid4().hex[:8]}"
    underneath = os.path.join(mountpoint, "kept.txt")
    with open(underneath, "w") as f:
        f.write("under the mount\n")
    try:
        nfs.run_command(["mount", "-t", "tmpfs", source, mountpoint])
    except nfs.MountError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    assert nfs.mounted_source(mountpoint) == source  # octal-escaped space decoded
    assert not os.path.exists(underneath)  # hidden by the mount
    nfs.set_fstab_entry(mountpoint, [source, mountpoint, "tmpfs", "rw", "0", "0"])
    escaped = mountpoint.replace(" ", "\\040")
    assert f"{source} {escaped} tmpfs rw 0 0" in nfs._fstab_path().read_text()
    fields = subprocess.run(  # findmnt reads fstab as mount(8) does: the space comes back
        ["findmnt", "--fstab", "--tab-file", str(nfs._fstab_path()), "-n", "-o", "TARGET"],
        capture_output=True,
        text=True,
        check=False,
    )
    if fields.returncode == 0:
        assert fields.stdout.strip() == mountpoint
    else:
        print(f"findmnt could not check the fstab: {fields.stderr.strip()}")

    nfs.umount(mountpoint)

    assert nfs.mounted_source(mountpoint) is None
    assert os.path.isdir(mountpoint)
    with open(underneath) as f:
        assert f.read() == "under the mount\n"
    assert nfs.FSTAB_MARK not in nfs._fstab_path().read_text()


def test_failed_command_reports_its_stderr(mountpoint):
    with pytest.raises(nfs.MountError, match=r"umount: .*not mounted"):
        nfs.run_command(["umount", mountpoint])
