"""The demo charm's NFS concern (src/nfs.py): the `nfs-mount` action and the mount on each unit.

What is simulated, and why: ops.testing stands in for Juju, and the `mount`/`umount` commands are
replaced (`nfs.run_command`) by FakeMachine, because the kernel of the test machine has no NFS
client. FakeMachine records every command and keeps a mount table file in the format of
/proc/self/mounts, which the real `nfs.mounted_source` parser reads. The mount point directories,
the fstab file and the operation journal are real files under tmp_path.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import pytest
from ops import testing

import journal
import models
import nfs
import nfs_request
from tests.unit.conftest import charm_context

APP = "coordinated-ops"
ENDPOINT = "nfs://10.0.0.5:2050/demo"
SOURCE = "10.0.0.5:/demo"


class FakeMachine:
    """Records mount/umount commands and keeps a fake mount table; can fail on purpose."""

    def __init__(self, mounts: pathlib.Path):
        self.mounts = mounts
        self.mounts.write_text("proc /proc proc rw 0 0\n")
        self.commands: list[list[str]] = []
        self.failures_left = 0  # fail this many mount commands first
        self.error = "mount.nfs4: Connection refused"

    def run(self, argv: list[str]) -> str:
        self.commands.append(list(argv))
        if argv[0] == "mount":
            if self.failures_left:
                self.failures_left -= 1
                raise nfs.MountError(self.error)
            source, target = argv[-2], argv[-1]
            assert pathlib.Path(target).is_dir(), "mount point must exist before mount"
            with self.mounts.open("a") as f:
                f.write(f"{source} {target} nfs4 rw,relatime 0 0\n")
        elif argv[0] == "umount":
            target = argv[-1]
            lines = self.mounts.read_text().splitlines()
            kept = [line for line in lines if line.split()[1] != target]
            if kept == lines:
                raise nfs.MountError(f"umount: {target}: not mounted")
            self.mounts.write_text("".join(f"{line}\n" for line in kept))
        return ""

    def mounts_of(self, target: str) -> list[str]:
        return [
            line.split()[0]
            for line in self.mounts.read_text().splitlines()
            if line.split()[1] == target
        ]


@pytest.fixture
def machine(monkeypatch, tmp_path, fake_workload):
    fake_workload.installed, fake_workload.running = "1.0.0", True
    fake = FakeMachine(tmp_path / "proc-self-mounts")
    monkeypatch.setattr(nfs, "run_command", fake.run)
    monkeypatch.setattr(nfs, "MOUNTS_FILE", fake.mounts)
    monkeypatch.setattr(nfs, "RETRY_WAIT_MIN", 0)
    monkeypatch.setattr(nfs, "RETRY_WAIT_MAX", 0)
    # The test's own /srv: the policy admits mount points under it like under the real /srv.
    roots = (*nfs_request.MOUNT_ROOTS, str(tmp_path / "srv"))
    monkeypatch.setattr(nfs_request, "MOUNT_ROOTS", roots)
    return fake


@pytest.fixture
def ctx(machine):
    return charm_context(app_name=APP, unit_id=0)


@pytest.fixture
def mountpoint(tmp_path) -> str:
    return str(tmp_path / "srv" / "demo-share")


def nfs_rel(endpoint: str | None = None, **kwargs) -> testing.Relation:
    return testing.Relation(
        "nfs-share",
        remote_app_name="nfs-share-server",
        remote_app_data={"endpoint": endpoint} if endpoint else {},
        remote_units_data={0: {"ingress-address": "10.0.0.5"}},
        **kwargs,
    )


def peer(mountpoint: str | None, **kwargs) -> testing.PeerRelation:
    app_data = {}
    if mountpoint:
        request = {"name": "demo", "size": None, "mountpoint": mountpoint}
        app_data = {nfs.PEER_KEY: json.dumps(request, sort_keys=True)}
    return testing.PeerRelation(nfs.PEER, local_app_data=app_data, **kwargs)


def nfs_stored(endpoint=None, mounted_at=None, source=None, error=None) -> testing.StoredState:
    return testing.StoredState(
        owner_path="CoordinatedOpsCharm/NfsShare[nfs]",
        content={"endpoint": endpoint, "mounted_at": mounted_at, "source": source, "error": error},
    )


def failed_state(info: pytest.ExceptionInfo[testing.ActionFailed]) -> testing.State:
    """The output state of a failed action (its writes are kept, as Juju does)."""
    state = info.value.state
    assert isinstance(state, testing.State)
    return state


def mount_cmd(target: str, source: str = SOURCE) -> list[str]:
    options = "port=2050,rw,nosuid,nodev,hard,proto=tcp,retry=0"
    return ["mount", "-t", "nfs4", "-o", options, source, target]


# ------------------------------------------------------------------------------------------------
# The action
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"name": "demo", "mountpoint": "srv/share"},
            "mountpoint: Value error, must be an absolute",
        ),
        ({"name": ""}, "name: Value error, must be 1-63 letters"),
        ({"name": "demo", "size": -5}, "size: Input should be greater than or equal to 1"),
        ({"name": "demo", "mountpoint": "/etc/x"}, "/etc/x is not under /srv, /mnt, /media"),
        ({"name": "demo", "mountpoint": "/"}, "/ is not under /srv"),
        ({"name": "a/b"}, "name: Value error"),
    ],
)
def test_action_bad_params_fail_clearly_and_write_nothing(ctx, machine, params, message):
    rel, prel = nfs_rel(), peer(None)
    state = testing.State(leader=True, relations={rel, prel})
    with pytest.raises(testing.ActionFailed) as info:
        ctx.run(ctx.on.action("nfs-mount", params=params), state)
    assert message in info.value.message
    out = failed_state(info)
    assert out.get_relation(rel.id).local_app_data == {}
    assert nfs.PEER_KEY not in out.get_relation(prel.id).local_app_data
    assert machine.commands == []


def test_action_without_relation_says_how_to_integrate(ctx, machine):
    state = testing.State(leader=True, relations={peer(None)})
    with pytest.raises(testing.ActionFailed) as info:
        ctx.run(ctx.on.action("nfs-mount", params={"name": "demo"}), state)
    assert info.value.message == (
        "no NFS provider: juju integrate coordinated-ops:nfs-share nfs-share-server:nfs-share"
    )
    (prel,) = failed_state(info).relations
    assert nfs.PEER_KEY not in prel.local_app_data


def test_action_on_non_leader_fails(ctx, machine):
    rel, prel = nfs_rel(), peer(None)
    with pytest.raises(testing.ActionFailed) as info:
        ctx.run(
            ctx.on.action("nfs-mount", params={"name": "demo"}),
            testing.State(leader=False, relations={rel, prel}),
        )
    assert info.value.message == "nfs-mount must run on the leader unit"
    assert failed_state(info).get_relation(rel.id).local_app_data == {}


def test_action_requests_share_and_publishes_mountpoint(ctx, machine, mountpoint):
    rel, prel = nfs_rel(), peer(None, peers_data={1: {}, 2: {}})
    out = ctx.run(
        ctx.on.action("nfs-mount", params={"name": "demo", "size": 3, "mountpoint": mountpoint}),
        testing.State(leader=True, relations={rel, prel}),
    )
    assert out.get_relation(rel.id).local_app_data == {
        "name": "demo",
        "allowlist": "0.0.0.0",
        "size": "3",
    }
    stored = json.loads(out.get_relation(prel.id).local_app_data[nfs.PEER_KEY])
    assert stored == {"name": "demo", "size": 3, "mountpoint": mountpoint}
    assert ctx.action_results is not None
    assert ctx.action_results["endpoint"] == "pending"
    assert ctx.action_results["mounted-units"] == "0/3"
    assert ctx.action_results["size"] == "3"
    assert ctx.action_results["mountpoint"] == mountpoint
    assert machine.commands == []  # the action itself mounts nothing before the endpoint


def test_action_rerun_reports_current_state_and_changes_nothing(ctx, machine, mountpoint):
    pathlib.Path(mountpoint).mkdir(parents=True)
    machine.run(mount_cmd(mountpoint))  # already mounted by an earlier hook
    machine.commands.clear()
    rel = nfs_rel(ENDPOINT, local_app_data={"name": "demo", "allowlist": "0.0.0.0", "size": "-1"})
    prel = peer(
        mountpoint,
        local_unit_data={nfs.STATE_KEY: f"mounted {SOURCE}"},
        peers_data={1: {nfs.STATE_KEY: f"mounted {SOURCE}"}, 2: {nfs.STATE_KEY: "failed"}},
    )
    state = testing.State(
        leader=True,
        relations={rel, prel},
        stored_states={nfs_stored(ENDPOINT, mountpoint, SOURCE)},
    )
    out = ctx.run(
        ctx.on.action("nfs-mount", params={"name": "demo", "mountpoint": mountpoint}), state
    )
    assert ctx.action_results is not None
    assert ctx.action_results["endpoint"] == ENDPOINT
    assert ctx.action_results["mounted-units"] == "2/3"
    assert out.get_relation(rel.id).local_app_data == rel.local_app_data
    assert out.get_relation(prel.id).local_app_data == prel.local_app_data
    assert machine.commands == []


# ------------------------------------------------------------------------------------------------
# Mounting on every unit
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("leader", [True, False])
def test_endpoint_arrival_mounts_on_every_unit(ctx, machine, mountpoint, tmp_path, leader):
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    state = testing.State(leader=leader, relations={rel, prel})
    with ctx(ctx.on.relation_changed(rel, remote_unit=0), state) as manager:
        out = manager.run()
        dirs = manager.charm.nfs.journal_dirs()
    assert machine.commands == [mount_cmd(mountpoint)]
    assert machine.mounts_of(mountpoint) == [SOURCE]
    assert out.unit_status == testing.ActiveStatus(f"mounted {SOURCE} at {mountpoint}")
    assert out.get_relation(prel.id).local_unit_data[nfs.STATE_KEY] == f"mounted {SOURCE}"
    assert dirs == [pathlib.Path(mountpoint)]
    fstab = (tmp_path / "etc" / "fstab").read_text()
    assert (
        f"{SOURCE} {mountpoint} nfs4 "
        "port=2050,rw,nosuid,nodev,hard,proto=tcp,retry=0,_netdev,nofail 0 0" in fstab
    )
    # Later events with nothing new: no more commands.
    machine.commands.clear()
    ctx.run(ctx.on.update_status(), out)
    assert machine.commands == []


def test_journal_lines_go_to_the_mounted_share(ctx, machine, mountpoint):
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    with ctx(ctx.on.update_status(), out) as manager:
        with journal.operation(
            "coordinated-ops/0", "restart", "v0", dirs=manager.charm.nfs.journal_dirs()
        ):
            pass
        manager.run()
    lines = journal.read(pathlib.Path(mountpoint) / journal.JOURNAL_NAME)
    assert [(e["unit"], e["operation"], e["result"]) for e in lines] == [
        ("coordinated-ops/0", "restart", "ok")
    ]


def test_mount_waits_for_mountpoint_from_peer_data(ctx, machine, mountpoint):
    rel = nfs_rel(ENDPOINT)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, peer(None)})
    )
    assert machine.commands == []
    # The leader's peer write arrives: now it mounts.
    prel = peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(prel, remote_unit=1),
        testing.State(relations={rel, prel}, stored_states=out.stored_states),
    )
    assert machine.commands == [mount_cmd(mountpoint)]


def test_endpoint_change_unmounts_then_mounts(ctx, machine, mountpoint):
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    rel2 = nfs_rel("10.0.0.9:/demo", id=rel.id)
    machine.commands.clear()
    ctx.run(
        ctx.on.relation_changed(rel2, remote_unit=0),
        testing.State(relations={rel2, prel}, stored_states=out.stored_states),
    )
    new_mount = [
        "mount",
        "-t",
        "nfs4",
        "-o",
        "rw,nosuid,nodev,hard,proto=tcp,retry=0",
        "10.0.0.9:/demo",
        mountpoint,
    ]
    assert machine.commands == [["umount", mountpoint], new_mount]
    assert machine.mounts_of(mountpoint) == ["10.0.0.9:/demo"]


def test_withdrawn_endpoint_unmounts_and_keeps_files(ctx, machine, mountpoint, tmp_path):
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    (pathlib.Path(mountpoint) / "keep.txt").write_text("data")
    rel2 = nfs_rel(None, id=rel.id)
    machine.commands.clear()
    out = ctx.run(
        ctx.on.relation_changed(rel2, remote_unit=0),
        testing.State(relations={rel2, prel}, stored_states=out.stored_states),
    )
    assert machine.commands == [["umount", mountpoint]]
    assert (pathlib.Path(mountpoint) / "keep.txt").read_text() == "data"
    assert "nfs-share" not in (tmp_path / "etc" / "fstab").read_text()
    assert nfs.STATE_KEY not in out.get_relation(prel.id).local_unit_data
    assert out.unit_status != testing.ActiveStatus(f"mounted {SOURCE} at {mountpoint}")


def test_last_provider_unit_departing_unmounts(ctx, machine, mountpoint):
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    machine.commands.clear()
    state = testing.State(relations={rel, prel}, stored_states=out.stored_states)
    ctx.run(ctx.on.relation_departed(rel, remote_unit=0, departing_unit=0), state)
    assert machine.commands == [["umount", mountpoint]]


def test_mountpoint_change_moves_the_mount(ctx, machine, mountpoint, tmp_path):
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    other = str(tmp_path / "srv" / "elsewhere")
    prel2 = peer(other, id=prel.id)
    machine.commands.clear()
    ctx.run(
        ctx.on.relation_changed(prel2, remote_unit=1),
        testing.State(relations={rel, prel2}, stored_states=out.stored_states),
    )
    assert machine.commands == [["umount", mountpoint], mount_cmd(other)]


def test_a_settled_unit_reads_no_request_in_update_status_but_remounts_a_lost_mount(
    ctx, machine, mountpoint, tmp_path
):
    """update-status does not poll the request, but mounts a share that vanished again.

    A new request arrives as a relation-changed; the mount table is local state.
    """
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    moved = peer(str(tmp_path / "srv" / "elsewhere"), id=prel.id)
    machine.commands.clear()
    ctx.run(
        ctx.on.update_status(),
        testing.State(relations={rel, moved}, stored_states=out.stored_states),
    )
    assert machine.commands == []  # settled: the moved request waits for its relation-changed
    machine.mounts.write_text("proc /proc proc rw 0 0\n")  # the share was unmounted meanwhile
    ctx.run(ctx.on.update_status(), out)
    assert machine.commands == [mount_cmd(mountpoint)]


def test_mount_retries_then_succeeds(ctx, machine, mountpoint):
    machine.failures_left = 2
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    assert machine.commands == [mount_cmd(mountpoint)] * 3
    assert out.unit_status == testing.ActiveStatus(f"mounted {SOURCE} at {mountpoint}")


def test_mount_failure_blocks_without_failing_the_hook_and_next_event_retries(
    ctx, machine, mountpoint
):
    machine.failures_left = 99
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    assert len(machine.commands) == nfs.RETRY_ATTEMPTS
    assert out.unit_status == testing.BlockedStatus(
        f"NFS mount of {SOURCE} at {mountpoint} failed: mount.nfs4: Connection refused"
    )
    assert out.get_relation(prel.id).local_unit_data[nfs.STATE_KEY] == "failed"
    # The server comes back: the next update-status mounts.
    machine.failures_left = 0
    out = ctx.run(ctx.on.update_status(), out)
    assert machine.mounts_of(mountpoint) == [SOURCE]
    assert out.unit_status == testing.ActiveStatus(f"mounted {SOURCE} at {mountpoint}")


def test_invalid_endpoint_is_reported_and_never_mounted(ctx, machine, mountpoint):
    rel, prel = nfs_rel("nfs:/demo"), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    assert machine.commands == []
    assert out.unit_status == testing.BlockedStatus(
        "invalid NFS endpoint from nfs-share-server; see debug-log"
    )


def test_server_connected_repeats_a_stored_request(ctx, machine, mountpoint):
    rel, prel = nfs_rel(), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_joined(rel, remote_unit=0),
        testing.State(leader=True, relations={rel, prel}),
    )
    assert out.get_relation(rel.id).local_app_data == {
        "name": "demo",
        "allowlist": "0.0.0.0",
        "size": "-1",
    }


def test_mounted_source_reads_the_kernel_table_format(tmp_path, monkeypatch):
    table = tmp_path / "mounts"
    table.write_text(
        "10.0.0.5:/a /srv/with\\040space nfs4 rw 0 0\n"
        "10.0.0.5:/old /srv/x nfs4 rw 0 0\n"
        "10.0.0.5:/new /srv/x nfs4 rw 0 0\n"
    )
    monkeypatch.setattr(nfs, "MOUNTS_FILE", table)
    assert nfs.mounted_source("/srv/with space") == "10.0.0.5:/a"
    assert nfs.mounted_source("/srv/x") == "10.0.0.5:/new"
    assert nfs.mounted_source("/srv/y") is None


def test_fstab_entry_keeps_other_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("COORDINATED_OPS_ROOT", str(tmp_path))
    fstab = tmp_path / "etc" / "fstab"
    fstab.parent.mkdir()
    fstab.write_text("LABEL=root / ext4 defaults 0 1\n")
    nfs.set_fstab_entry("/srv/d", nfs.fstab_line("h:/d", "/srv/d", ["rw"]))
    nfs.set_fstab_entry("/srv/d", nfs.fstab_line("h:/e", "/srv/d", ["rw"]))
    assert fstab.read_text() == (
        "LABEL=root / ext4 defaults 0 1\n"
        f"{nfs.FSTAB_MARK} /srv/d\nh:/e /srv/d nfs4 rw,_netdev,nofail 0 0\n"
    )
    nfs.set_fstab_entry("/srv/d", None)
    assert fstab.read_text() == "LABEL=root / ext4 defaults 0 1\n"


def test_params_model_rejects_unknown_keys_and_normalises_mountpoint():
    with pytest.raises(ValueError, match="colour"):
        models.NfsMountParams(name="demo", colour="red")  # pyright: ignore[reportCallIssue]
    assert models.NfsMountParams(name="/demo", mountpoint="/srv//a/b/").mountpoint == "/srv/a/b"
    with pytest.raises(ValueError, match=r"'\.' or '\.\.'"):
        models.NfsMountParams(name="demo", mountpoint="/srv/../proc/x")


@pytest.mark.parametrize(
    "request_",
    [
        {"name": "demo", "size": None, "mountpoint": "/srv//a/b/"},
        {"name": "/demo", "size": 5, "mountpoint": "/srv/b"},
        {"name": "demo"},
    ],
)
def test_stored_request_is_read_with_the_action_rules(request_):
    """ShareRequest (plain Python, every hook) accepts what NfsMountParams (the action) accepts."""
    raw = json.dumps(request_)
    got = nfs_request.ShareRequest.from_json(raw)
    assert dataclasses.asdict(got) == models.NfsMountParams.model_validate_json(raw).model_dump()


@pytest.mark.parametrize(
    "request_",
    [
        {"name": "demo", "colour": "red"},
        {"size": 5},
        {"name": "no spaces"},
        {"name": 7},
        {"name": "demo", "size": 0},
        {"name": "demo", "size": "big"},
        {"name": "demo", "mountpoint": "relative"},
        {"name": "demo", "mountpoint": "/srv/../proc/x"},
        ["demo"],
    ],
)
def test_stored_request_rejects_what_the_action_rejects(request_):
    raw = json.dumps(request_)
    with pytest.raises(ValueError):
        models.NfsMountParams.model_validate_json(raw)
    with pytest.raises((ValueError, TypeError)):
        nfs_request.ShareRequest.from_json(raw)


# ------------------------------------------------------------------------------------------------
# Hostile or mistaken input: the review's cases, replayed
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mountpoint_", "message"),
    [
        ("/var", "/var is not under /srv, /mnt, /media"),
        ("/usr", "/usr is not under"),
        ("/home", "/home is not under"),
        ("/var/lib/juju", "/var/lib/juju is not under"),
        ("/var/run/share", "/var/run/share is not under"),
        ("/srv", "/srv is not under"),
        ("/srv/x\\057..\\057etc", "may contain only letters, digits"),
        ("/srv/../etc", "must not contain '.' or '..'"),
        ("/srv/demo\n", "may contain only letters, digits"),
        ("/srv/with space", "may contain only letters, digits"),
        ("/srv/" + "a" * 256, "longer than 255 bytes"),
        ("/srv/" + "/".join(["abcdefg"] * 80), "at most 512 characters"),
    ],
)
def test_action_refuses_mountpoints_outside_the_policy(ctx, machine, mountpoint_, message):
    rel, prel = nfs_rel(), peer(None)
    with pytest.raises(testing.ActionFailed) as info:
        ctx.run(
            ctx.on.action("nfs-mount", params={"name": "demo", "mountpoint": mountpoint_}),
            testing.State(leader=True, relations={rel, prel}),
        )
    assert info.value.message.startswith("mountpoint: Value error, ")
    assert message in info.value.message
    assert len(info.value.message) < 250  # a long input is not echoed whole
    assert failed_state(info).get_relation(rel.id).local_app_data == {}


def test_action_refuses_a_symlink_into_a_system_tree(ctx, machine, tmp_path):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "link").symlink_to("/etc")
    with pytest.raises(testing.ActionFailed) as info:
        ctx.run(
            ctx.on.action(
                "nfs-mount", params={"name": "demo", "mountpoint": str(tmp_path / "srv/link/x")}
            ),
            testing.State(leader=True, relations={nfs_rel(), peer(None)}),
        )
    assert "resolves to '/etc/x', which is not under" in info.value.message


def test_action_refuses_an_existing_file_as_mountpoint(ctx, machine, tmp_path):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "file").write_text("not a directory")
    with pytest.raises(testing.ActionFailed) as info:
        ctx.run(
            ctx.on.action(
                "nfs-mount", params={"name": "demo", "mountpoint": str(tmp_path / "srv/file")}
            ),
            testing.State(leader=True, relations={nfs_rel(), peer(None)}),
        )
    assert "exists and is not a directory" in info.value.message


def test_action_refuses_a_name_with_a_trailing_newline(ctx, machine):
    rel, prel = nfs_rel(), peer(None)
    with pytest.raises(testing.ActionFailed) as info:
        ctx.run(
            ctx.on.action("nfs-mount", params={"name": "demo\n"}),
            testing.State(leader=True, relations={rel, prel}),
        )
    assert info.value.message.startswith("name: Value error, must be 1-63 letters")
    assert failed_state(info).get_relation(rel.id).local_app_data == {}


def test_a_mount_this_charm_did_not_make_is_never_unmounted(ctx, machine, mountpoint):
    pathlib.Path(mountpoint).mkdir(parents=True)
    machine.run(["mount", "-t", "ext4", "/dev/sdb1", mountpoint])  # the operator's own mount
    machine.commands.clear()
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    assert machine.commands == []
    assert machine.mounts_of(mountpoint) == ["/dev/sdb1"]
    assert out.unit_status == testing.BlockedStatus(
        f"NFS mount of {SOURCE} at {mountpoint} failed: '/dev/sdb1' is mounted at {mountpoint} "
        "and was not mounted by this charm; unmount it or choose another mountpoint"
    )
    assert out.get_relation(prel.id).local_unit_data[nfs.STATE_KEY] == "failed"


def test_moving_away_leaves_a_mount_that_replaced_ours_alone(ctx, machine, mountpoint, tmp_path):
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    machine.run(["umount", mountpoint])  # someone unmounts ours and mounts their own disk
    machine.run(["mount", "-t", "ext4", "/dev/sdb1", mountpoint])
    machine.commands.clear()
    other = str(tmp_path / "srv" / "elsewhere")
    prel2 = peer(other, id=prel.id)
    ctx.run(
        ctx.on.relation_changed(prel2, remote_unit=1),
        testing.State(relations={rel, prel2}, stored_states=out.stored_states),
    )
    assert machine.commands == [mount_cmd(other)]
    assert machine.mounts_of(mountpoint) == ["/dev/sdb1"]


@pytest.mark.parametrize("raw", ["[" * 4000, "[" * 100_000, '"' + "x" * 5000 + '"', "null"])
def test_hostile_peer_request_is_logged_shown_and_ignored(ctx, machine, raw):
    rel = nfs_rel(ENDPOINT)
    prel = testing.PeerRelation(nfs.PEER, local_app_data={nfs.PEER_KEY: raw})
    out = ctx.run(
        ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel})
    )
    assert machine.commands == []
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith("ignoring the invalid NFS request in the peer data")
    assert out.get_relation(prel.id).local_unit_data[nfs.STATE_KEY] == "failed"


def test_fstab_is_replaced_atomically_keeping_its_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("COORDINATED_OPS_ROOT", str(tmp_path))
    fstab = tmp_path / "etc" / "fstab"
    fstab.parent.mkdir()
    fstab.write_text("LABEL=root / ext4 defaults 0 1\n")
    fstab.chmod(0o600)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    (tmp_path / "etc" / "fstab.coordinated-ops").symlink_to(victim)  # a stale or planted temp
    nfs.set_fstab_entry("/srv/d", nfs.fstab_line("h:/a b", "/srv/d", ["rw"]))
    assert not fstab.is_symlink()
    assert fstab.stat().st_mode & 0o777 == 0o600
    assert victim.read_text() == "untouched\n"
    assert fstab.read_text().splitlines()[-1] == "h:/a\\040b /srv/d nfs4 rw,_netdev,nofail 0 0"
    assert sorted(p.name for p in fstab.parent.iterdir()) == ["fstab"]


def test_a_new_fstab_is_0644(tmp_path, monkeypatch):
    monkeypatch.setenv("COORDINATED_OPS_ROOT", str(tmp_path))
    old_umask = os.umask(0o077)
    try:
        nfs.set_fstab_entry("/srv/d", nfs.fstab_line("h:/d", "/srv/d", ["rw"]))
    finally:
        os.umask(old_umask)
    assert (tmp_path / "etc" / "fstab").stat().st_mode & 0o777 == 0o644
