"""Where the charm's files live: every path is under `root()`.

`root()` is `/` on a unit. Tests set `COORDINATED_OPS_ROOT` to a temporary directory, so the real
service, the fstab edits and the libraries' state run unprivileged; this is the one place that
reads it.
"""

from __future__ import annotations

import os
import pathlib


def root() -> pathlib.Path:
    """The machine's root directory as the charm sees it (`COORDINATED_OPS_ROOT`, default `/`)."""
    return pathlib.Path(os.environ.get("COORDINATED_OPS_ROOT", "/"))
