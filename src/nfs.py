"""The demo's NFS share: the `nfs-mount` action and the mount on every unit.

How it fits together:

1. `juju run coordinated-ops/leader nfs-mount name=demo mountpoint=/srv/demo-share` runs
   `NfsShare.run_action` on the leader: it writes the request in the `nfs-share` relation (through
   charms.storage_libs.v0.nfs_interfaces) and `{"name", "size", "mountpoint"}` in the peer
   application bag, so that every unit learns where to mount.
2. The provider serves the share and publishes its endpoint; the library emits `mount_share` on
   every unit (and `umount_share` when the share goes away). `NfsShare.handle_event` remembers that
   endpoint and reconciles: what should be mounted where, against `/proc/self/mounts`.
3. Each unit publishes `nfs-mount-state` (`mounted <source>` or `failed`) in its peer unit bag; the
   action reports how many units have the share mounted.

A remount (the provider's endpoint changed while this unit has the old share mounted) disrupts
whatever uses the share, so it does not run in the hook that learns of the change: it is queued
on the charm's one lock (`restart.OperationLock`) as the operation `remount` and runs when this
unit holds it (`run_remount`), one unit at a time and in line with restarts and upgrade steps;
the journal records it. The old share stays mounted until then. A first mount, an unmount and a
move to another mount point are not remounts: they run at once.

The request's fields and the mount point policy are in nfs_request.py (plain Python; the action's
pydantic model in models.py applies the same rules). Every command goes through `run_command`, the
one function tests replace (the kernel of a test machine may have no NFS client). Mounting retries
with tenacity (bounded); when the retries are exhausted the unit is Blocked with the error and the
next event tries again. Unmounting never removes the mount point or anything in it. Neither
`mount` nor `umount` is given the mount point's path: it is walked without following symlinks
and named as `/proc/self/fd/N` (see `open_mountpoint` and docs/nfs-share.md).

Soft, bounded mount: the share holds a copy of the operation journal, and a journal line is
written at the end of each restart or upgrade, while the unit still holds the rolling lock. On a
`hard` mount a request to an unreachable server is retried forever (and `intr` is ignored since
Linux 2.6.25: only SIGKILL interrupts the write), so a dead NFS server would hang the hook and
keep the lock of every unit. The share is therefore mounted `soft,timeo=50,retrans=2`: over TCP
the client waits 5 s, then 10 s, then 15 s (linear backoff, nfs(5)) and returns an error, so one
NFS request fails after about 30 s. The journal then logs a warning and the line is lost on the
share only: the unit's local journal, which is the record, keeps it. The price of `soft` (nfs(5)
warns that a timed-out write can be lost silently) is acceptable for a copy of an append-only log
whose writer starts each line afresh and whose reader skips a cut line; it would not be for
application data. docs/nfs-share.md has the alternatives that were weighed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pathlib
import re
import stat
import subprocess
from typing import TYPE_CHECKING

import ops
from charms.storage_libs.v0.nfs_interfaces import (
    MountShareEvent,
    NFSRequires,
    ServerConnectedEvent,
    UmountShareEvent,
    parse_endpoint,
)

import journal
import nfs_request
import paths
import restart
from nfs_request import ShareRequest, echo

if TYPE_CHECKING:
    import tenacity

logger = logging.getLogger(__name__)

RELATION = "nfs-share"
PEER = "nfs-peers"  # its own peer relation: NFS writes never wake the restart engines
PEER_KEY = "nfs-mount"  # peer app bag: the requested share, JSON
STATE_KEY = "nfs-mount-state"  # peer unit bag: "mounted <source>" or "failed"
# retry=0: mount.nfs tries once (its default keeps trying for 2 minutes); tenacity retries.
# nosuid,nodev: files on a share another application writes never become setuid or devices here.
# soft,timeo=50,retrans=2: see "Soft, bounded mount" in the module docstring.
MOUNT_OPTIONS = ["rw", "nosuid", "nodev", "soft", "timeo=50", "retrans=2", "proto=tcp", "retry=0"]
FSTAB_MARK = "# coordinated-ops nfs-share"
MOUNTS_FILE = pathlib.Path("/proc/self/mounts")
MOUNTINFO_FILE = pathlib.Path("/proc/self/mountinfo")
LOCK_OPERATION = "remount"  # the remount's callback id on the one lock

# Bounded retry of mount/umount: 5 attempts, waits 1, 2, 4, 8 s (tests set the waits to 0).
RETRY_ATTEMPTS = 5
RETRY_WAIT_MIN = 1.0
RETRY_WAIT_MAX = 10.0


class MountError(Exception):
    """A mount or umount command failed; the message says which and why."""


# ------------------------------------------------------------------------------------------------
# The machine: commands, mount table, fstab
# ------------------------------------------------------------------------------------------------


def run_command(argv: list[str], pass_fds: tuple[int, ...] = ()) -> str:
    """Run one command (mount, umount); raise MountError with its stderr when it fails.

    `pass_fds`: descriptors the command inherits under the same numbers (`/proc/self/fd/N`).
    """
    logger.info("running %s", " ".join(argv))
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, check=False, timeout=60, pass_fds=pass_fds
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise MountError(f"{argv[0]}: {error}") from error
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip() or f"exit status {proc.returncode}"
        raise MountError(f"{argv[0]}: {detail}")
    return proc.stdout


def _unescape(field: str) -> str:
    r"""Decode the octal escapes of /proc/self/mounts (`\040` is a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounted_source(mountpoint: str) -> str | None:
    """What is mounted at `mountpoint` now (the last entry wins), from the mount table."""
    try:
        lines = MOUNTS_FILE.read_text().splitlines()
    except OSError:
        return None
    source = None
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and _unescape(fields[1]) == mountpoint:
            source = _unescape(fields[0])
    return source


def _fstab_path() -> pathlib.Path:
    return paths.root() / "etc" / "fstab"


def _escape(field: str) -> str:
    r"""Escape one fstab field as fstab(5) reads it: space `\040`, tab, newline, backslash."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in field)


def fstab_line(source: str, mountpoint: str, options: list[str]) -> list[str]:
    """The fields of our fstab entry (escaped when written by `set_fstab_entry`)."""
    return [source, mountpoint, "nfs4", ",".join([*options, "_netdev", "nofail"]), "0", "0"]


def set_fstab_entry(mountpoint: str, fields: list[str] | None) -> None:
    """Put (or with None remove) our marked fstab entry for `mountpoint`; others are kept.

    The file is replaced atomically (a temporary file, fsync, rename) with the original's mode
    (0644 for a new file), so a crash leaves either the old or the new fstab, never half of one.
    """
    path = _fstab_path()
    try:
        text = path.read_text()
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        text, mode = "", 0o644
    lines = text.splitlines()
    marker = f"{FSTAB_MARK} {_escape(mountpoint)}"
    kept: list[str] = []
    skip_next = False
    for current in lines:
        if skip_next:
            skip_next = False
            continue
        if current == marker:
            skip_next = True
            continue
        kept.append(current)
    if fields is not None:
        kept += [marker, " ".join(_escape(field) for field in fields)]
    if kept == lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".coordinated-ops")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask does not narrow it
        with os.fdopen(fd, "w", closefd=False) as out:
            out.write("".join(f"{x}\n" for x in kept))
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: pathlib.Path) -> None:
    """Make a rename in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _retrying() -> tenacity.Retrying:
    import tenacity  # here, not at the top: only a mount or umount retries

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(RETRY_ATTEMPTS),
        wait=tenacity.wait_exponential(min=RETRY_WAIT_MIN, max=RETRY_WAIT_MAX),
        retry=tenacity.retry_if_exception_type(MountError),
        before_sleep=lambda state: logger.warning(
            "attempt %s failed: %s",
            state.attempt_number,
            state.outcome and state.outcome.exception(),
        ),
        reraise=True,
    )


_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_mountpoint(mountpoint: str, *, create: bool = False, parent: bool = False) -> int:
    """An O_PATH descriptor of `mountpoint` (or, with `parent`, of its directory), no symlinks.

    The policy check (nfs_request.normalise_mountpoint) resolves symlinks, but whoever can write
    to a directory on the way may swap a component for a symlink between that check and the
    mount. So the path is walked again from the allowed root that holds it (opened as the system
    has it), one component at a time, each opened relative to the previous one with O_NOFOLLOW
    and O_DIRECTORY: a symlink or a file is refused, never followed. With `create`, a missing
    component is made (mode 0755) under the held parent. The caller closes the descriptor.
    """
    allowed = nfs_request.MOUNT_ROOTS  # read at call time (tests add their own root)
    roots = {os.path.realpath(r) for r in allowed} | set(allowed)
    under = [r for r in roots if mountpoint.startswith(r.rstrip("/") + "/")]
    if not under:
        raise MountError(f"{mountpoint} is not under {', '.join(allowed)}")
    root = max(under, key=len)
    names = [name for name in mountpoint[len(root) :].split("/") if name]
    if parent:
        names = names[:-1]
    fd = os.open(root, _WALK & ~os.O_NOFOLLOW)  # the root itself is the system's
    try:
        for name in names:
            if name in (".", ".."):
                raise MountError(f"{mountpoint}: '.' and '..' are not followed")
            child = _open_dir(fd, name, create, mountpoint)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_dir(parent: int, name: str, create: bool, mountpoint: str) -> int:
    """Open directory `name` under `parent` (O_PATH, no symlink), made first with `create`."""
    try:
        try:
            return os.open(name, _WALK, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
        with contextlib.suppress(FileExistsError):  # made meanwhile: opened (and checked) below
            os.mkdir(name, 0o755, dir_fd=parent)
        return os.open(name, _WALK, dir_fd=parent)
    except OSError as error:
        if error.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        raise MountError(
            f"{mountpoint}: {name} is a symlink or not a directory; not following it"
        ) from None


def mount(source: str, mountpoint: str, options: list[str]) -> None:
    """Mount NFSv4 `source` at `mountpoint` (created if missing), retrying; add the fstab line.

    The target is `/proc/self/fd/N` of the directory `open_mountpoint` holds, and mount(8) is
    told not to canonicalise it: the kernel resolves that link to the held directory itself, so
    what is mounted on is the directory that was walked, whatever the path names by then.
    """
    fd = open_mountpoint(mountpoint, create=True)
    try:
        opts = ",".join(options)
        target = f"/proc/self/fd/{fd}"
        argv = ["mount", "--no-canonicalize", "-t", "nfs4", "-o", opts, source, target]
        for attempt in _retrying():
            with attempt:
                run_command(argv, pass_fds=(fd,))
    finally:
        os.close(fd)
    set_fstab_entry(mountpoint, fstab_line(source, mountpoint, options))


def mount_of(fd: int) -> tuple[str, str] | None:
    """(source, mount point) of the mount whose root directory `fd` is; None if it is no root.

    From the kernel: the descriptor's mount id (/proc/self/fdinfo) looked up in
    /proc/self/mountinfo, and the descriptor's own path, which is the mount point only for the
    mount's root.
    """
    try:
        info = pathlib.Path(f"/proc/self/fdinfo/{fd}").read_text().split()
        mount_id = info[info.index("mnt_id:") + 1]
        where = os.readlink(f"/proc/self/fd/{fd}")
        table = MOUNTINFO_FILE.read_text().splitlines()
    except (OSError, ValueError, IndexError):
        return None
    for line in table:
        fields, _, tail = line.partition(" - ")
        fields_list, tail_list = fields.split(), tail.split()
        if len(fields_list) >= 5 and len(tail_list) >= 2 and fields_list[0] == mount_id:
            point = _unescape(fields_list[4])
            return (_unescape(tail_list[1]), point) if point == where else None
    return None


def umount(mountpoint: str, source: str) -> None:
    """Unmount our `source` from `mountpoint` (retrying, then lazily); drop the fstab line.

    Never deletes files, and never unmounts what is not `source` mounted at `mountpoint`: the
    parent directory is walked as for mounting and held, the mount point opened under it without
    following a symlink, and the kernel asked which mount that directory is the root of
    (`mount_of`). Only then is `/proc/self/fd/N/name` unmounted (N the parent; a descriptor of
    the mount point itself would keep it busy): a mount point cannot be renamed or removed while
    mounted (EBUSY), so the name still denotes the checked mount when umount(8) runs.
    """
    fd = open_mountpoint(mountpoint, parent=True)
    try:
        name = os.path.basename(mountpoint)
        held = _open_dir(fd, name, False, mountpoint)  # a symlink is refused
        try:
            found = mount_of(held)
        finally:
            os.close(held)
        if found != (source, mountpoint):
            what = f"{echo(found[0])} mounted at {found[1]}" if found else "not a mount point"
            raise MountError(f"{mountpoint} is {what}, not {echo(source)}; not unmounting it")
        target = f"/proc/self/fd/{fd}/{name}"
        try:
            for attempt in _retrying():
                with attempt:
                    run_command(["umount", "--no-canonicalize", target], pass_fds=(fd,))
        except MountError as error:
            logger.warning("umount %s failed (%s); detaching lazily", mountpoint, error)
            run_command(["umount", "--no-canonicalize", "-l", target], pass_fds=(fd,))
    finally:
        os.close(fd)
    set_fstab_entry(mountpoint, None)


# ------------------------------------------------------------------------------------------------
# The charm's NFS concern
# ------------------------------------------------------------------------------------------------


class NfsShare(ops.Object):
    """Requests the share (leader, action) and keeps it mounted on this unit."""

    _stored = ops.StoredState()

    def __init__(self, charm: ops.CharmBase, *, lock: restart.OperationLock):
        super().__init__(charm, "nfs")
        self.charm = charm
        self._lock = lock
        lock.register(LOCK_OPERATION, self.run_remount)
        self.requirer = NFSRequires(charm, RELATION)
        # endpoint: of the last mount_share not followed by umount_share.
        # mounted_at / source: what this unit mounted. error: why the last mount failed.
        self._stored.set_default(endpoint=None, mounted_at=None, source=None, error=None)
        self._problem: str | None = None  # why the stored request was ignored, this hook
        self._umount_seen = False  # an umount_share came in this dispatch: settle after it
        self.framework.observe(charm.on.nfs_mount_action, self.run_action)
        # The library sends an endpoint change as umount_share then mount_share in one of these
        # hooks; observed after the library's own observers, `_settle` acts on the outcome.
        share = charm.on[RELATION]
        for event in (
            share.relation_joined,
            share.relation_changed,
            share.relation_departed,
            share.relation_broken,
            charm.on.upgrade_charm,
        ):
            self.framework.observe(event, self._settle)
        for event in (
            self.requirer.on.server_connected,
            self.requirer.on.mount_share,
            self.requirer.on.umount_share,
            charm.on[PEER].relation_changed,
            charm.on.config_changed,
            charm.on.update_status,
        ):
            self.framework.observe(event, self.handle_event)

    # -- the action ---------------------------------------------------------------------------

    def run_action(self, event: ops.ActionEvent) -> None:
        """`nfs-mount`: validate, request the share, publish the mount point, report."""
        import pydantic  # here, not at the top: only actions validate with pydantic

        from models import NfsMountParams, explain

        try:
            params = NfsMountParams(**event.params)
        except pydantic.ValidationError as error:
            event.fail(explain(error))
            return
        if not self.model.unit.is_leader():
            event.fail("nfs-mount must run on the leader unit")
            return
        relation = self.model.get_relation(RELATION)
        if relation is None:
            app = self.model.app.name
            event.fail(
                f"no NFS provider: juju integrate {app}:nfs-share nfs-share-server:nfs-share"
            )
            return
        peer = self.model.get_relation(PEER)
        if peer is None:
            event.fail(f"the peer relation '{PEER}' is not ready yet; run the action again")
            return
        request = json.dumps(params.model_dump(), sort_keys=True)
        if peer.data[self.model.app].get(PEER_KEY) != request:
            peer.data[self.model.app][PEER_KEY] = request
        self.requirer.request_share(relation.id, params.name, size=params.size)
        self.reconcile()  # the leader's own mount, e.g. when only the mount point changed
        endpoint = self._provider_endpoint(relation)
        mounted, total = self._mounted_units(peer)
        event.set_results(
            {
                "name": params.name,
                "size": "unlimited" if params.size is None else str(params.size),
                "mountpoint": params.mountpoint,
                "endpoint": endpoint or "pending",
                "mounted-units": f"{mounted}/{total}",
                "message": (
                    f"share requested; {mounted} of {total} units have it mounted at "
                    f"{params.mountpoint}"
                    + ("" if endpoint else "; waiting for the provider's endpoint")
                ),
            }
        )

    # -- events -------------------------------------------------------------------------------

    def handle_event(self, event: ops.EventBase) -> None:
        """Any event that may change what should be mounted: update, then reconcile."""
        if isinstance(event, ServerConnectedEvent):
            self._rerequest(event.relation)
            return
        if isinstance(event, (ops.UpdateStatusEvent, ops.ConfigChangedEvent)) and self._settled():
            return  # a new request or endpoint arrives as a relation event: nothing to read
        if isinstance(event, MountShareEvent):
            self._stored.endpoint = event.endpoint
            self._umount_seen = False
        elif isinstance(event, UmountShareEvent):
            # Unmount in `_settle`, once it is known whether a mount_share follows in this
            # hook: then the endpoint changed, and the remount waits for the one lock.
            self._stored.endpoint = None
            self._umount_seen = True
            return
        self.reconcile()

    def _settle(self, _: ops.EventBase) -> None:
        """After the library's observers: an umount_share not followed by a mount_share."""
        if self._umount_seen:
            self._umount_seen = False
            self.reconcile()

    def _rerequest(self, relation: ops.Relation) -> None:
        """A (new) provider joined: repeat the request the action stored, if any."""
        wanted = self._wanted()
        if wanted is not None:
            self.requirer.request_share(relation.id, wanted.name, size=wanted.size)

    def reconcile(self, *, remount: bool = False) -> None:
        """Make this unit's mount match the desired one (idempotent; never raises on failure).

        Only what this unit mounted (`mounted_at`, `source` in its local stored state) is ever
        unmounted: a mount point holding anything else is left alone and the unit is Blocked.
        A remount is queued on the one lock instead, unless `remount` says the caller holds it.
        """
        self._problem = None
        target = self._target()
        if not remount and self._remount_due(target):
            self._queue_remount()
            return
        previous, ours = self._stored.mounted_at, self._stored.source
        try:
            if previous and (target is None or target[1] != previous):
                if ours is not None and mounted_source(previous) == ours:
                    umount(previous, ours)
                else:
                    set_fstab_entry(previous, None)
                self._stored.mounted_at = self._stored.source = None
            if target is None:
                if previous or self._stored.error or self._problem:
                    self._publish("failed" if self._problem else None)
                self._stored.error = self._problem
                return
            source, mountpoint, options = target
            current = mounted_source(mountpoint)
            if current != source:
                if current is not None:
                    if self._stored.mounted_at != mountpoint or current != ours:
                        raise MountError(
                            f"{echo(current)} is mounted at {mountpoint} and was not mounted by "
                            "this charm; unmount it or choose another mountpoint"
                        )
                    umount(mountpoint, current)
                mount(source, mountpoint, options)
            else:
                set_fstab_entry(mountpoint, fstab_line(source, mountpoint, options))
        except (MountError, OSError) as error:
            where = f" of {target[0]} at {target[1]}" if target else ""
            self._stored.error = f"NFS mount{where} failed: {error}"
            logger.error("%s", self._stored.error)
            self._publish("failed")
            return
        self._stored.mounted_at, self._stored.source, self._stored.error = mountpoint, source, None
        self._publish(f"mounted {source}")

    # -- the remount, under the one lock ------------------------------------------------------

    def _remount_due(self, target: tuple[str, str, list[str]] | None) -> bool:
        """Whether reaching `target` replaces a share this unit has mounted by another source.

        Also when the machine already shows `target`'s source while the stored state still
        names the old one: a remount ran in a hook that then failed, so Juju discarded its
        writes (this state, the lock's grant) but not the mount. The remount is still owed on
        the lock's books: its callback runs again and must finish and journal it under the
        grant, not adopt the new mount silently.
        """
        mountpoint, ours = self._stored.mounted_at, self._stored.source
        return (
            target is not None
            and ours is not None
            and target[0] != ours
            and target[1] == mountpoint
            and mounted_source(mountpoint) in (ours, target[0])
        )

    def _queue_remount(self) -> None:
        if self._lock.queued(LOCK_OPERATION):
            return
        try:
            self._lock.queue(LOCK_OPERATION)
        except restart.EngineNotReady as error:  # the next event tries again
            logger.warning("remount not queued yet: %s", error)
            return
        logger.info("the NFS endpoint changed: remount queued on the lock")

    def run_remount(self) -> None:
        """Under the one lock: remount the share from the provider's new endpoint, journalled.

        If no remount is due any more (the endpoint changed back, the share went away), this
        only reconciles. The journal line also goes to the share mounted afterwards.
        """
        target = self._target()
        if not self._remount_due(target):
            self.reconcile()
            return
        assert target is not None
        token, backend = self._lock.grant()
        dirs: list[pathlib.Path] = []  # read when the line is written, after the remount
        unit = self.charm.unit.name
        try:
            with journal.operation(unit, "remount", "rollingops", token, dirs=dirs) as entry:
                entry.update(backend=backend, source=target[0], previous=self._stored.source)
                self.reconcile(remount=True)
                if self._stored.error:
                    raise MountError(self._stored.error)
                dirs.extend(self.journal_dirs())
        except MountError:
            pass  # logged, published and shown by reconcile; the next event mounts afresh

    # -- what the charm asks ------------------------------------------------------------------

    def unit_status(self) -> ops.StatusBase | None:
        """Blocked when the last mount failed; Active naming the mount when mounted."""
        if self._stored.error:
            return ops.BlockedStatus(self._stored.error)
        if self._stored.mounted_at and self._stored.source:
            return ops.ActiveStatus(f"mounted {self._stored.source} at {self._stored.mounted_at}")
        return None

    def journal_dirs(self) -> list[pathlib.Path]:
        """The mounted share, if any: the operation journal is also appended there."""
        mountpoint, source = self._stored.mounted_at, self._stored.source
        if mountpoint and source and mounted_source(mountpoint) == source:
            return [pathlib.Path(mountpoint)]
        return []

    # -- helpers ------------------------------------------------------------------------------

    def _settled(self) -> bool:
        """From local state only: no share served and none mounted, or ours still mounted.

        Periodic hooks then read no relation. A failed mount (`error`) or a mount gone from
        the machine is not settled: the full reconcile retries it.
        """
        if self._stored.error:
            return False
        mounted_at, source = self._stored.mounted_at, self._stored.source
        if self._stored.endpoint is None:
            return mounted_at is None
        return bool(mounted_at and source) and mounted_source(mounted_at) == source

    def _wanted(self) -> ShareRequest | None:
        """The request the action stored in the peer app bag (None if absent or unreadable)."""
        peer = self.model.get_relation(PEER)
        if peer is None:
            return None
        raw = peer.data[self.model.app].get(PEER_KEY)
        if not raw:
            return None
        try:
            return ShareRequest.from_json(raw)
        except ValueError as error:
            self._problem = f"ignoring the invalid NFS request in the peer data: {error}"[:200]
            logger.error("%s", self._problem)
            return None

    def _target(self) -> tuple[str, str, list[str]] | None:
        """(source, mount point, options) that should be mounted here, or None."""
        if self._stored.endpoint is None:  # no share served: no need to read the request
            return None
        wanted = self._wanted()
        if wanted is None:
            return None
        try:
            endpoint = parse_endpoint(self._stored.endpoint)
        except ValueError as error:
            logger.error("not mounting invalid endpoint %r: %s", self._stored.endpoint, error)
            return None
        return endpoint.mount_source, wanted.mountpoint, endpoint.mount_options + MOUNT_OPTIONS

    def _publish(self, state: str | None) -> None:
        peer = self.model.get_relation(PEER)
        if peer is None:
            return
        bag = peer.data[self.model.unit]
        if state is None:
            bag.pop(STATE_KEY, None)
        elif bag.get(STATE_KEY) != state:
            bag[STATE_KEY] = state

    def _mounted_units(self, peer: ops.Relation) -> tuple[int, int]:
        units = [self.model.unit, *peer.units]
        mounted = sum(1 for u in units if peer.data[u].get(STATE_KEY, "").startswith("mounted "))
        return mounted, len(units)

    @staticmethod
    def _provider_endpoint(relation: ops.Relation) -> str | None:
        # ops types Relation.app as always set, but it is None when Juju names no remote app.
        if relation.app is None:  # pyright: ignore[reportUnnecessaryComparison]
            return None
        return relation.data[relation.app].get("endpoint") or None
