"""The `nfs-mount` request: its fields and their rules, in plain Python.

The action validates its parameters with pydantic (`models.NfsMountParams`, for pydantic's
messages that name the bad parameter), using the rules below; every unit reads the stored request
back with `ShareRequest`, which applies the same rules without pydantic, because every hook reads
the request once a share is served and importing pydantic costs about half of importing ops
(tests/unit/test_lazy_imports.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, cast

from charms.storage_libs.v0.nfs_interfaces import MAX_SIZE_GB

DEFAULT_MOUNTPOINT = "/srv/demo-share"
# The mount point policy: strictly under one of these directories, after following symlinks.
MOUNT_ROOTS = ("/srv", "/mnt", "/media")
MAX_MOUNTPOINT = 512  # characters of the whole path
MAX_COMPONENT = 255  # bytes of one path component (NAME_MAX)
# Plain characters only: nothing fstab or mount decodes (`\040`), no whitespace, no controls.
_COMPONENT = re.compile(r"[A-Za-z0-9._+@-]+")
MAX_REQUEST = 4096  # characters of the stored request JSON; longer is not ours
_NAME = re.compile(r"/?[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def echo(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: error messages never echo a whole input back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _under_a_root(path: str) -> bool:
    for root in MOUNT_ROOTS:
        for base in {root, os.path.realpath(root)}:
            if path.startswith(base.rstrip("/") + "/"):
                return True
    return False


def normalise_mountpoint(path: object) -> str:
    r"""Return the mount point with symlinks resolved, or raise ValueError saying what is wrong.

    The policy: an absolute path strictly under /srv, /mnt or /media (`MOUNT_ROOTS`), also once
    the symlinks of its existing part are followed; components of letters, digits and `._+@-`
    only (so nothing that fstab or mount would decode, such as `\057`), no `.` or `..`, each
    component at most 255 bytes, at most 512 characters in all; and if it exists, a directory.
    """
    roots = ", ".join(MOUNT_ROOTS)
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"must be an absolute path under {roots}, got {echo(path)}")
    if len(path) > MAX_MOUNTPOINT:
        raise ValueError(f"must be at most {MAX_MOUNTPOINT} characters, got {len(path)}")
    parts = [part for part in path.split("/") if part]
    for part in parts:
        if part in (".", ".."):
            raise ValueError("must not contain '.' or '..' components")
        if not _COMPONENT.fullmatch(part):
            raise ValueError(
                "may contain only letters, digits and '.', '_', '+', '@', '-' between slashes "
                "(no spaces, backslashes or control characters)"
            )
        if len(part.encode()) > MAX_COMPONENT:
            raise ValueError(f"a path component is longer than {MAX_COMPONENT} bytes")
    normal = "/" + "/".join(parts)
    if not _under_a_root(normal):
        raise ValueError(f"{normal} is not under {roots}; use e.g. {DEFAULT_MOUNTPOINT}")
    resolved = os.path.realpath(normal)
    if not _under_a_root(resolved):
        raise ValueError(f"{normal} resolves to {echo(resolved)}, which is not under {roots}")
    if os.path.lexists(resolved) and not os.path.isdir(resolved):
        raise ValueError(f"{resolved} exists and is not a directory")
    return resolved


def check_name(name: object) -> str:
    """Return the share name, or raise ValueError saying what is wrong."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            "must be 1-63 letters, digits, '.', '_' or '-' (a leading '/' is allowed)"
        )
    return name


@dataclasses.dataclass(frozen=True)
class ShareRequest:
    """The request the action stored in the peer app bag, read back with the action's rules."""

    name: str
    size: int | None = None
    mountpoint: str = DEFAULT_MOUNTPOINT

    def __post_init__(self):
        check_name(self.name)
        if self.size is not None and (
            type(self.size) is not int or not 1 <= self.size <= MAX_SIZE_GB
        ):
            raise ValueError(f"size must be an integer from 1 to {MAX_SIZE_GB}, not {self.size!r}")
        object.__setattr__(self, "mountpoint", normalise_mountpoint(self.mountpoint))

    @classmethod
    def from_json(cls, raw: str) -> ShareRequest:
        """Parse the stored JSON; ValueError when invalid (too long, too deep, an unknown key)."""
        if len(raw) > MAX_REQUEST:
            raise ValueError(f"longer than {MAX_REQUEST} characters")
        try:
            data = json.loads(raw)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        try:
            return cls(**cast("dict[str, Any]", data))  # a JSON object's keys are strings
        except TypeError as error:
            raise ValueError(str(error)) from None
