"""The demo charm's NFS concern (src/nfs.py): the `nfs-mount` action and the mount on each unit.

What is simulated, and why: ops.testing stands in for Juju, and the `mount`/`umount` commands are
replaced (`nfs.run_command`) by FakeMachine, because the kernel of the test machine has no NFS
client. FakeMachine records every command and keeps a mount table file in the format of
/proc/self/mounts, which the real `nfs.mounted_source` parser reads. The charm names its target
as `/proc/self/fd/N` of a directory it holds open; FakeMachine checks that N is passed to the
command and resolves it as the kernel does (the directory behind the descriptor), recording the
resolved path. The mount point directories, the fstab file and the operation journal are real
files under tmp_path (tests/functional/test_nfs_mount_table.py mounts a real tmpfs the same way).
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
LOCK = "rollingops"  # the peer relation of the one lock (charmlibs.rollingops)
PLANNED = 2  # Juju's planned units: no unit looks like it is being removed
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
        self.before_command = None  # a test's hook: runs before the command "runs"
        # As the kernel does, a mount belongs to the directory it was made on (not to its path).
        self.on_directory: dict[tuple[int, int], str] = {}

    @staticmethod
    def resolve(target: str, pass_fds: tuple[int, ...]) -> str:
        """What the kernel mounts on: `/proc/self/fd/N[/name]` is the held directory's path."""
        if not target.startswith("/proc/self/fd/"):
            return os.path.realpath(target)  # a plain path: symlinks followed
        number, _, rest = target.removeprefix("/proc/self/fd/").partition("/")
        assert int(number) in pass_fds, "the command must inherit the descriptor it names"
        held = os.readlink(f"/proc/self/fd/{number}")  # this process holds it too
        return os.path.join(held, rest) if rest else held

    def run(self, argv: list[str], pass_fds: tuple[int, ...] = ()) -> str:
        if self.before_command is not None:
            self.before_command(argv)
        argv = [*argv[:-1], self.resolve(argv[-1], pass_fds)]
        self.commands.append(list(argv))
        if argv[0] == "mount":
            if self.failures_left:
                self.failures_left -= 1
                raise nfs.MountError(self.error)
            source, target = argv[-2], argv[-1]
            assert pathlib.Path(target).is_dir(), "mount point must exist before mount"
            with self.mounts.open("a") as f:
                f.write(f"{source} {target} nfs4 rw,relatime 0 0\n")
            self.on_directory[self._identity(os.stat(target))] = source
        elif argv[0] == "umount":
            target = argv[-1]
            lines = self.mounts.read_text().splitlines()
            kept = [line for line in lines if line.split()[1] != target]
            if kept == lines:
                raise nfs.MountError(f"umount: {target}: not mounted")
            self.mounts.write_text("".join(f"{line}\n" for line in kept))
            self.on_directory.pop(self._identity(os.stat(target)), None)
        return ""

    @staticmethod
    def _identity(info: os.stat_result) -> tuple[int, int]:
        return info.st_dev, info.st_ino

    def mount_of(self, fd: int) -> tuple[str, str] | None:
        """nfs.mount_of of the fake: what was mounted on this very directory, and its path."""
        source = self.on_directory.get(self._identity(os.fstat(fd)))
        return (source, os.readlink(f"/proc/self/fd/{fd}")) if source else None

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
    monkeypatch.setattr(nfs, "mount_of", fake.mount_of)
    monkeypatch.setattr(nfs, "RETRY_WAIT_MIN", 0)
    monkeypatch.setattr(nfs, "RETRY_WAIT_MAX", 0)
    # The test's own /srv: the policy admits mount points under it like under the real /srv.
    (tmp_path / "srv").mkdir()  # a root exists, as /srv does on a machine
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
    options = "port=2050,rw,nosuid,nodev,soft,timeo=50,retrans=2,proto=tcp,retry=0"
    return ["mount", "--no-canonicalize", "-t", "nfs4", "-o", options, source, target]


def umount_cmd(target: str) -> list[str]:
    return ["umount", "--no-canonicalize", target]


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
        "port=2050,rw,nosuid,nodev,soft,timeo=50,retrans=2,proto=tcp,retry=0,_netdev,nofail 0 0"
        in fstab
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


def _lock_granted(
    out: testing.State, token: int = 7
) -> tuple[testing.State, testing.RelationBase]:
    """The leader (unit 1) grants the one lock to unit 0's first queued op (wire format v1)."""
    lock = next(r for r in out.relations if r.endpoint == LOCK)
    bag = dict(lock.local_unit_data)
    first = json.loads(bag["rollingops-queue"])[0]
    grant = {"unit": f"{APP}/0", "token": token, "op": first["id"]}
    app = {"rollingops-version": "1", "rollingops-token": str(token), "rollingops-mode": "peer"}
    lock = dataclasses.replace(
        lock, local_unit_data=bag, local_app_data={**app, "rollingops-grant": json.dumps(grant)}
    )
    others = {r for r in out.relations if r.id != lock.id}
    return dataclasses.replace(out, relations={*others, lock}), lock


def _mounted_then_changed(ctx, machine, mountpoint):
    """Unit 0 has the share mounted; the provider then publishes another endpoint."""
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    lock = testing.PeerRelation(LOCK, peers_data={1: {}})
    state = testing.State(relations={rel, prel, lock}, planned_units=PLANNED)
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state)
    rel2 = nfs_rel("10.0.0.9:/demo", id=rel.id)
    machine.commands.clear()
    changed = dataclasses.replace(out, relations={rel2, prel, out.get_relation(lock.id)})
    return ctx.run(ctx.on.relation_changed(rel2, remote_unit=0), changed), lock


def test_endpoint_change_queues_the_remount_on_the_lock_and_keeps_the_old_mount(
    ctx, machine, mountpoint
):
    out, lock = _mounted_then_changed(ctx, machine, mountpoint)
    assert machine.commands == []  # nothing unmounted in the hook that learnt of the change
    assert machine.mounts_of(mountpoint) == [SOURCE]
    queued = json.loads(out.get_relation(lock.id).local_unit_data["rollingops-queue"])
    assert [op["callback_id"] for op in queued] == ["remount"]
    assert out.unit_status == testing.WaitingStatus("remount queued (rollingops, peer)")


def test_remount_runs_under_the_lock_and_the_journal_names_it(ctx, machine, mountpoint):
    out, _ = _mounted_then_changed(ctx, machine, mountpoint)
    granted, lock = _lock_granted(out)
    out = ctx.run(ctx.on.relation_changed(lock, remote_unit=1), granted)
    new_mount = [
        "mount",
        "--no-canonicalize",
        "-t",
        "nfs4",
        "-o",
        "rw,nosuid,nodev,soft,timeo=50,retrans=2,proto=tcp,retry=0",
        "10.0.0.9:/demo",
        mountpoint,
    ]
    assert machine.commands == [umount_cmd(mountpoint), new_mount]
    assert machine.mounts_of(mountpoint) == ["10.0.0.9:/demo"]
    (entry,) = journal.read(journal.local_path())
    assert (entry["operation"], entry["engine"], entry["token"]) == ("remount", "rollingops", 7)
    assert (entry["previous"], entry["source"], entry["result"]) == (
        SOURCE, "10.0.0.9:/demo", "ok",
    )  # fmt: skip
    # ... and on the share mounted by the remount, where every unit's line goes.
    shared = journal.read(pathlib.Path(mountpoint) / journal.JOURNAL_NAME)
    assert [line["operation"] for line in shared] == ["remount"]
    done = json.loads(out.get_relation(lock.id).local_unit_data["rollingops-done"])
    assert done["result"] == "release"


def test_a_remount_whose_hook_failed_is_journalled_when_the_hook_is_retried(
    ctx, machine, mountpoint
):
    """The grant's hook remounted, then failed: Juju discards its writes, not the mount.

    The retry (`juju resolved`, same input state) runs the callback again; it must finish the
    remount under the grant and journal it (no second umount/mount), not adopt it silently.
    """
    out, _ = _mounted_then_changed(ctx, machine, mountpoint)
    granted, lock = _lock_granted(out)
    ctx.run(ctx.on.relation_changed(lock, remote_unit=1), granted)  # its output is discarded
    assert machine.mounts_of(mountpoint) == ["10.0.0.9:/demo"]
    machine.commands.clear()
    retried = ctx.run(ctx.on.relation_changed(lock, remote_unit=1), granted)
    assert machine.commands == []  # the share is already the new one
    lines = journal.read(journal.local_path())
    assert [line["operation"] for line in lines] == ["remount", "remount"]
    assert (lines[-1]["token"], lines[-1]["source"], lines[-1]["result"]) == (
        7, "10.0.0.9:/demo", "ok",
    )  # fmt: skip
    assert retried.unit_status == testing.ActiveStatus(f"mounted 10.0.0.9:/demo at {mountpoint}")


def test_a_restart_asked_while_a_remount_waits_queues_behind_it(ctx, machine, mountpoint):
    out, lock = _mounted_then_changed(ctx, machine, mountpoint)
    params = {"delay": 0, "engine": "rollingops", "sync": False}
    out = ctx.run(ctx.on.action("restart", params=params), out)
    assert "queued" in (ctx.action_results or {})["message"]
    queued = json.loads(out.get_relation(lock.id).local_unit_data["rollingops-queue"])
    assert [op["callback_id"] for op in queued] == ["remount", "restart"]
    assert out.unit_status == testing.WaitingStatus("restart + remount queued (rollingops, peer)")


def test_a_restart_asked_while_a_remount_runs_elsewhere_queues(ctx, machine, mountpoint):
    remount = {"id": 1, "callback_id": "remount", "kwargs": {}, "max_retry": 2, "attempt": 0,
               "requested_at": "2026-01-01T00:00:00.000000Z"}  # fmt: skip
    other = {"rollingops-version": "1", "rollingops-queue": json.dumps([remount]),
             "rollingops-seq": "1", "rollingops-intent": "request",
             "rollingops-backend": "peer"}  # fmt: skip
    grant = json.dumps({"unit": f"{APP}/1", "token": 3, "op": 1})
    app = {"rollingops-version": "1", "rollingops-token": "3", "rollingops-mode": "peer",
           "rollingops-grant": grant}  # fmt: skip
    lock = testing.PeerRelation(LOCK, local_app_data=app, peers_data={1: other})
    params = {"delay": 0, "engine": "rollingops", "sync": False}
    state = testing.State(relations={lock, peer(mountpoint)}, planned_units=PLANNED)
    out = ctx.run(ctx.on.action("restart", params=params), state)
    queued = json.loads(out.get_relation(lock.id).local_unit_data["rollingops-queue"])
    assert [op["callback_id"] for op in queued] == ["restart"]
    assert out.get_relation(lock.id).local_app_data["rollingops-grant"] == grant  # still held


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
    assert machine.commands == [umount_cmd(mountpoint)]
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
    assert machine.commands == [umount_cmd(mountpoint)]


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
    assert machine.commands == [umount_cmd(mountpoint), mount_cmd(other)]


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


def test_the_share_is_mounted_soft_so_a_journal_write_cannot_hang_the_rolling_lock():
    """A dead server must fail a journal write in bounded time, not hang the lock's holder.

    nfs(5), over TCP: `hard` retries forever (`intr` is ignored since Linux 2.6.25); `soft` fails
    a request after `retrans` retransmissions, the wait growing by `timeo` deciseconds each time.
    """
    options = {key: value for key, _, value in (o.partition("=") for o in nfs.MOUNT_OPTIONS)}
    assert "soft" in options and "hard" not in options and "intr" not in options
    assert options["proto"] == "tcp"
    timeo, retrans = int(options["timeo"]), int(options["retrans"])
    worst_case_seconds = sum(timeo * attempt for attempt in range(1, retrans + 2)) / 10
    assert worst_case_seconds == 30
    assert timeo >= 30  # a busy but live server still answers within the first wait
    assert f"soft,timeo={timeo},retrans={retrans}" in (nfs.__doc__ or "")


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
    (tmp_path / "srv").mkdir(exist_ok=True)
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
    (tmp_path / "srv").mkdir(exist_ok=True)
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


# ------------------------------------------------------------------------------------------------
# The mount point race: a component swapped for a symlink after the policy check
# ------------------------------------------------------------------------------------------------


def swap_for_symlink(directory: pathlib.Path, target: pathlib.Path) -> None:
    """What a user who can write to `directory`'s parent does: move it away, plant a symlink."""
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target)


def test_a_symlink_swapped_in_after_the_walk_does_not_move_the_mount(ctx, machine, tmp_path):
    """The swap happens between opening the mount point and the mount command (a test hook).

    The mount command is the fake (no NFS client here); it resolves its target as the kernel
    does. The old code passed the path, which now led through the symlink to `outside`.
    """
    outside = tmp_path / "outside"
    (outside / "demo-share").mkdir(parents=True)
    parent = tmp_path / "srv" / "parent"
    mountpoint = str(parent / "demo-share")
    swapped: list[bool] = []

    def swap(argv: list[str]) -> None:
        if argv[0] == "mount" and not swapped:
            swap_for_symlink(parent, outside)
            swapped.append(True)

    machine.before_command = swap
    rel, prel = nfs_rel(ENDPOINT), peer(mountpoint)
    ctx.run(ctx.on.relation_changed(rel, remote_unit=0), testing.State(relations={rel, prel}))
    assert swapped
    held = str(tmp_path / "srv" / "parent.moved" / "demo-share")
    assert machine.commands == [mount_cmd(held)]
    assert machine.mounts_of(str(outside / "demo-share")) == []


def test_a_symlink_swapped_in_before_the_walk_is_refused(machine, tmp_path):
    """The swap happens after the policy check, before mounting: nothing is made or mounted."""
    outside = tmp_path / "outside"
    outside.mkdir()
    parent = tmp_path / "srv" / "parent"
    parent.mkdir()
    mountpoint = nfs_request.normalise_mountpoint(str(parent / "demo-share"))  # the check
    swap_for_symlink(parent, outside)
    with pytest.raises(nfs.MountError, match="parent is a symlink or not a directory"):
        nfs.mount(SOURCE, mountpoint, ["rw"])
    assert machine.commands == []
    assert list(outside.iterdir()) == []  # no directory was created through the symlink


def test_umount_refuses_a_mount_point_replaced_by_a_symlink(machine, tmp_path):
    elsewhere = tmp_path / "srv" / "elsewhere"
    elsewhere.mkdir()
    mountpoint = tmp_path / "srv" / "demo-share"
    mountpoint.symlink_to(elsewhere)
    with pytest.raises(nfs.MountError, match="demo-share is a symlink"):
        nfs.umount(str(mountpoint), SOURCE)
    assert machine.commands == []


def test_umount_refuses_a_directory_put_where_our_mount_point_was(machine, tmp_path):
    """The parent was moved away (our mount with it) and a plain directory put in its place.

    The path still names our mount in a stale table check; the directory it leads to now is not
    the one our share was mounted on, so nothing is unmounted.
    """
    team = tmp_path / "srv" / "team"
    (team / "share").mkdir(parents=True)
    mountpoint = str(team / "share")
    nfs.mount(SOURCE, mountpoint, ["rw"])
    team.rename(team.with_name("team.moved"))
    (team / "share").mkdir(parents=True)
    machine.commands.clear()
    with pytest.raises(nfs.MountError, match=r"is not a mount point, not '10\.0\.0\.5:/demo'"):
        nfs.umount(mountpoint, SOURCE)
    assert machine.commands == []
    assert machine.on_directory  # our mount, now under team.moved, is still there
