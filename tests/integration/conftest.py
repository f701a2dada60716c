"""Integration fixtures: a Juju model with coordinated-ops, charmed-etcd and the NFS test server.

Every Juju call goes through jubilant (the model's lifecycle too: `jubilant.temp_model`); we do not
use pytest-operator, whose python-libjuju client would be a second, asyncio-based way of talking
to Juju next to jubilant's CLI calls, for the only two things it would give us here (a temporary
model and `charmcraft pack`), each a few lines with jubilant and subprocess.

Where `juju` is missing or has no controller, every test is skipped with one line naming what is
missing (in the header and in pytest's `-rs` summary), never an error.

Options:
    --model NAME        use this existing model (nothing created or destroyed; applications and
                        relations already there are reused, missing ones are added)
    --keep-models       keep the temporary model after the run (to look at it, or to pass it
                        to --model next time)
    --controller NAME   controller for the temporary model (default: the current one)
    --constraints TEXT  constraints of the coordinated-ops and NFS server machines (default
                        "virt-type=virtual-machine": NFS mounts need a VM's kernel on LXD)
    --clock-skew SECS   clock difference tolerated between units when comparing intervals
Environment: CHARM_PATH (the packed coordinated-ops charm) and NFS_SERVER_CHARM_PATH (the packed
nfs-share-server charm); each is packed with `charmcraft pack` when unset.
"""

from __future__ import annotations

import logging
import os
import pathlib
import platform
import shutil
import subprocess
from collections.abc import Iterator

import jubilant
import pytest

from tests.integration import helpers

logger = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parents[2]
NFS_SERVER_DIR = ROOT / "tests" / "integration" / "charms" / "nfs-share-server"
_MISSING = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coordinated-ops integration")
    group.addoption("--model", help="use this existing Juju model (not created nor destroyed)")
    group.addoption("--keep-models", action="store_true", help="keep the temporary model")
    group.addoption("--controller", help="controller for the temporary model")
    group.addoption(
        "--constraints",
        default="virt-type=virtual-machine",
        help="constraints of the coordinated-ops and nfs-share-server machines",
    )
    group.addoption(
        "--clock-skew",
        type=float,
        default=0.25,
        help="seconds of clock difference tolerated between units",
    )


def _what_is_missing() -> str:
    """Empty when a controller answers; else one line saying what is missing."""
    juju_cli = shutil.which("juju")
    if juju_cli is None:
        return "no `juju` on PATH: integration tests need the Juju CLI and a controller"
    try:
        jubilant.Juju().cli("show-controller", "--format", "json", include_model=False)
    except jubilant.CLIError as error:
        detail = (error.stderr or error.stdout or "").strip().splitlines()
        return f"no Juju controller: `juju show-controller` failed: {detail[0] if detail else ''}"
    except OSError as error:
        return f"cannot run {juju_cli}: {error}"
    return ""


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_MISSING] = _what_is_missing()


def pytest_report_header(config: pytest.Config) -> str:
    missing = config.stash.get(_MISSING, "")
    return f"integration: SKIPPED, {missing}" if missing else "integration: Juju controller found"


@pytest.fixture(autouse=True, scope="session")
def _require_controller(request: pytest.FixtureRequest) -> None:
    """Skip every integration test (one grouped line in -rs) when there is no controller."""
    missing = request.config.stash.get(_MISSING, "")
    if missing:
        pytest.skip(missing)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Report the no-controller skip at one place, so `-rs` prints it as one line, not per test."""
    report = yield
    missing = item.config.stash.get(_MISSING, "")
    if missing and report.skipped and isinstance(report.longrepr, tuple):
        where = str(pathlib.Path(__file__).relative_to(ROOT))
        report.longrepr = (where, _what_is_missing.__code__.co_firstlineno, f"Skipped: {missing}")
    return report


def _pack(directory: pathlib.Path, variable: str, out: pathlib.Path) -> pathlib.Path:
    """`charmcraft pack` the charm in `directory`; the .charm for this machine's architecture."""
    if shutil.which("charmcraft") is None:
        pytest.skip(
            f"{variable} is unset and `charmcraft` is not on PATH to pack {directory.name}"
        )
    out.mkdir(parents=True, exist_ok=True)
    logger.info("packing %s (set %s to skip this)", directory, variable)
    subprocess.run(["charmcraft", "pack", "--project-dir", str(directory)], cwd=out, check=True)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    found = sorted(out.glob(f"*_{arch}.charm")) or sorted(out.glob("*.charm"))
    if not found:
        pytest.fail(f"charmcraft pack of {directory} produced no .charm in {out}")
    return found[-1].resolve()


@pytest.fixture(scope="session")
def charm_path(tmp_path_factory) -> pathlib.Path:
    """The coordinated-ops charm under test: CHARM_PATH, or packed now."""
    if os.environ.get("CHARM_PATH"):
        return pathlib.Path(os.environ["CHARM_PATH"]).resolve()
    return _pack(ROOT, "CHARM_PATH", tmp_path_factory.mktemp("charm"))


@pytest.fixture(scope="session")
def nfs_server_charm_path(tmp_path_factory) -> pathlib.Path:
    """The nfs-share-server test charm: NFS_SERVER_CHARM_PATH, or packed now."""
    if os.environ.get("NFS_SERVER_CHARM_PATH"):
        return pathlib.Path(os.environ["NFS_SERVER_CHARM_PATH"]).resolve()
    return _pack(NFS_SERVER_DIR, "NFS_SERVER_CHARM_PATH", tmp_path_factory.mktemp("nfs-server"))


@pytest.fixture(scope="session")
def juju(request: pytest.FixtureRequest) -> Iterator[jubilant.Juju]:
    """The model: --model, or a temporary one (kept with --keep-models)."""
    model = request.config.getoption("--model")
    if model:
        juju = jubilant.Juju(model=model, wait_timeout=helpers.DEPLOY_TIMEOUT)
        yield juju
        return
    keep = bool(request.config.getoption("--keep-models"))
    with jubilant.temp_model(
        keep=keep, controller=request.config.getoption("--controller")
    ) as juju:
        juju.wait_timeout = helpers.DEPLOY_TIMEOUT
        yield juju
        if request.session.testsfailed:
            logger.info("debug log of %s:\n%s", juju.model, juju.debug_log(limit=500))
        if keep:
            logger.info("kept model %s (run again with --model %s)", juju.model, juju.model)


@pytest.fixture(scope="session")
def deployment(request, juju, charm_path, nfs_server_charm_path) -> helpers.Deployment:
    """Deploy (or reuse) the four applications and their relations; wait until they settle."""
    constraints = helpers.parse_constraints(request.config.getoption("--constraints"))
    deployment = helpers.Deployment(
        juju=juju, constraints=constraints, skew=request.config.getoption("--clock-skew")
    )
    deployment.deploy(charm_path, nfs_server_charm_path)
    return deployment


@pytest.fixture(scope="session")
def share(deployment: helpers.Deployment) -> helpers.Deployment:
    """The NFS share requested and mounted on every coordinated-ops unit (idempotent)."""
    deployment.mount_share()
    return deployment


@pytest.fixture
def three_units(share: helpers.Deployment) -> helpers.Deployment:
    """Three coordinated-ops units, each with the share mounted (re-adds units tests removed)."""
    share.ensure_units(3)
    return share
