"""Stage the nfs-share-server test charm for packing: its own files plus the libraries from lib/.

The test charm keeps no copy of `charms.storage_libs.v0.nfs_interfaces`: it uses the repository's
lib/ file, brought in at pack time. A charmcraft part cannot do that: in charmcraft's LXD build
only the project directory is mounted, so a part whose `source` points above it (`../../../../lib`)
works with `--destructive-mode` only. Instead the charm's directory is copied to a staging
directory with LIBRARIES added under lib/, and `charmcraft pack --project-dir STAGED` packs that.
`tox -e pack` and the integration conftest both pack this way; packing the bare directory fails
at the build step, saying to stage first (the check in its charmcraft.yaml).

    python -m tests.integration.stage DEST     # then: charmcraft pack --project-dir DEST
"""

from __future__ import annotations

import pathlib
import shutil
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
NFS_SERVER_DIR = ROOT / "tests" / "integration" / "charms" / "nfs-share-server"
# The repository's libraries the test charm imports, relative to lib/.
LIBRARIES = ("charms/storage_libs/v0/nfs_interfaces.py",)
_NOT_STAGED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.charm", "build", ".tox", "lib")


def stage_nfs_share_server(dest: pathlib.Path) -> pathlib.Path:
    """Copy the test charm to `dest` (replacing it) with LIBRARIES from lib/; return `dest`."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(NFS_SERVER_DIR, dest, ignore=_NOT_STAGED)
    for library in LIBRARIES:
        target = dest / "lib" / library
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "lib" / library, target)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.integration.stage DEST", file=sys.stderr)
        return 2
    print(stage_nfs_share_server(pathlib.Path(argv[0]).resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
