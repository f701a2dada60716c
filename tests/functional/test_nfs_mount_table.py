"""src/nfs.py against the real kernel mount table, with tmpfs standing in for NFS.

Real: the `mount`/`umount` commands through `nfs.run_command`, /proc/self/mounts, the fstab file
(under COORDINATED_OPS_ROOT). Stand-in: a tmpfs instead of an NFS share, because this kernel has
no NFS client; what is tested is how the charm reads the table and unmounts, not NFS itself.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import uuid

import pytest

import nfs
import nfs_request


@pytest.fixture
def mountpoint(tmp_path, monkeypatch):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    monkeypatch.setenv("COORDINATED_OPS_ROOT", str(tmp_path / "root"))
    monkeypatch.setattr(nfs, "RETRY_WAIT_MIN", 0)
    monkeypatch.setattr(nfs, "RETRY_WAIT_MAX", 0)
    monkeypatch.setattr(nfs_request, "MOUNT_ROOTS", (str(tmp_path),))  # the test's own /mnt
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

    nfs.umount(mountpoint, source)

    assert nfs.mounted_source(mountpoint) is None
    assert os.path.isdir(mountpoint)
    with open(underneath) as f:
        assert f.read() == "under the mount\n"
    assert nfs.FSTAB_MARK not in nfs._fstab_path().read_text()


def test_failed_command_reports_its_stderr(mountpoint):
    with pytest.raises(nfs.MountError, match=r"umount: .*not mounted"):
        nfs.run_command(["umount", mountpoint])


def test_a_real_mount_lands_on_the_held_directory_after_a_symlink_swap(mountpoint, tmp_path):
    """The race with the real kernel: the path is swapped for a symlink after the walk.

    tmpfs stands in for NFS (no NFS client here); the target is named as nfs.mount names it.
    """
    outside = tmp_path / "outside"
    (outside / "share").mkdir(parents=True)
    parent = pathlib.Path(mountpoint) / "parent"
    fd = nfs.open_mountpoint(str(parent / "share"), create=True)
    try:
        parent.rename(parent.with_name("parent.moved"))
        parent.symlink_to(outside)
        source = f"share-{uuid.uuid4().hex[:8]}"
        argv = ["mount", "--no-canonicalize", "-t", "tmpfs", source, f"/proc/self/fd/{fd}"]
        nfs.run_command(argv, pass_fds=(fd,))
    finally:
        os.close(fd)
    held = str(parent.with_name("parent.moved") / "share")
    try:
        assert nfs.mounted_source(held) == source
        assert nfs.mounted_source(str(outside / "share")) is None
        with pytest.raises(nfs.MountError, match="parent is a symlink"):
            nfs.umount(str(parent / "share"), source)
        nfs.umount(held, source)
        assert nfs.mounted_source(held) is None
    finally:
        subprocess.run(["umount", "-l", held], capture_output=True, check=False)


def test_umount_never_follows_a_symlink_to_another_mount(mountpoint, tmp_path):
    """A mount point replaced by a symlink to someone else's mount: that mount stays.

    Unmounting by path (the old code) followed the symlink and unmounted the victim.
    """
    victim = tmp_path / "victim"
    victim.mkdir()
    source = f"victim-{uuid.uuid4().hex[:8]}"
    try:
        nfs.run_command(["mount", "-t", "tmpfs", source, str(victim)])
    except nfs.MountError as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    try:
        link = pathlib.Path(mountpoint) / "share"
        link.symlink_to(victim)
        with pytest.raises(nfs.MountError, match="share is a symlink"):
            nfs.umount(str(link), source)
        (link.parent / "plain").mkdir()
        with pytest.raises(nfs.MountError, match="not a mount point"):
            nfs.umount(str(link.parent / "plain"), source)
        assert nfs.mounted_source(str(victim)) == source
    finally:
        subprocess.run(["umount", "-l", str(victim)], capture_output=True, check=False)
