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

The request's fields and the mount point policy are in nfs_request.py (plain Python; the action's
pydantic model in models.py applies the same rules). Every command goes through `run_command`, the
one function tests replace (the kernel of a test machine may have no NFS client). Mounting retries
with tenacity (bounded); when the retries are exhausted the unit is Blocked with the error and the
next event tries again. Unmounting never removes the mount point or anything in it.
"""

from __future__ import annotations

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

import paths
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
MOUNT_OPTIONS = ["rw", "nosuid", "nodev", "hard", "proto=tcp", "retry=0"]
FSTAB_MARK = "# coordinated-ops nfs-share"
MOUNTS_FILE = pathlib.Path("/proc/self/mounts")

# Bounded retry of mount/umount: 5 attempts, waits 1, 2, 4, 8 s (tests set the waits to 0).
RETRY_ATTEMPTS = 5
RETRY_WAIT_MIN = 1.0
RETRY_WAIT_MAX = 10.0


class MountError(Exception):
    """A mount or umount command failed; the message says which and why."""


# ------------------------------------------------------------------------------------------------
# The machine: commands, mount table, fstab
# ------------------------------------------------------------------------------------------------


def run_command(argv: list[str]) -> str:
    """Run one command (mount, umount); raise MountError with its stderr when it fails."""
    logger.info("running %s", " ".join(argv))
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
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


def mount(source: str, mountpoint: str, options: list[str]) -> None:
    """Mount NFSv4 `source` at `mountpoint` (created if missing), retrying; add the fstab line."""
    pathlib.Path(mountpoint).mkdir(parents=True, exist_ok=True)
    opts = ",".join(options)
    for attempt in _retrying():
        with attempt:
            run_command(["mount", "-t", "nfs4", "-o", opts, source, mountpoint])
    set_fstab_entry(mountpoint, fstab_line(source, mountpoint, options))


def umount(mountpoint: str) -> None:
    """Unmount `mountpoint` (retrying, then lazily); drop the fstab line. Never deletes files."""
    try:
        for attempt in _retrying():
            with attempt:
                run_command(["umount", mountpoint])
    except MountError as error:
        logger.warning("umount %s failed (%s); detaching lazily", mountpoint, error)
        run_command(["umount", "-l", mountpoint])
    set_fstab_entry(mountpoint, None)


# ------------------------------------------------------------------------------------------------
# The charm's NFS concern
# ------------------------------------------------------------------------------------------------


class NfsShare(ops.Object):
    """Requests the share (leader, action) and keeps it mounted on this unit."""

    _stored = ops.StoredState()

    def __init__(self, charm: ops.CharmBase):
        super().__init__(charm, "nfs")
        self.charm = charm
        self.requirer = NFSRequires(charm, RELATION)
        # endpoint: of the last mount_share not followed by umount_share.
        # mounted_at / source: what this unit mounted. error: why the last mount failed.
        self._stored.set_default(endpoint=None, mounted_at=None, source=None, error=None)
        self._problem: str | None = None  # why the stored request was ignored, this hook
        self.framework.observe(charm.on.nfs_mount_action, self.run_action)
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
        elif isinstance(event, UmountShareEvent):
            self._stored.endpoint = None
        self.reconcile()

    def _rerequest(self, relation: ops.Relation) -> None:
        """A (new) provider joined: repeat the request the action stored, if any."""
        wanted = self._wanted()
        if wanted is not None:
            self.requirer.request_share(relation.id, wanted.name, size=wanted.size)

    def reconcile(self) -> None:
        """Make this unit's mount match the desired one (idempotent; never raises on failure).

        Only what this unit mounted (`mounted_at`, `source` in its local stored state) is ever
        unmounted: a mount point holding anything else is left alone and the unit is Blocked.
        """
        self._problem = None
        target = self._target()
        previous, ours = self._stored.mounted_at, self._stored.source
        try:
            if previous and (target is None or target[1] != previous):
                if ours is not None and mounted_source(previous) == ours:
                    umount(previous)
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
                    umount(mountpoint)
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
        if relation.app is None:
            return None
        return relation.data[relation.app].get("endpoint") or None
