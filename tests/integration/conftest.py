"""Integration fixtures: a Juju model with coordinated-ops, charmed-etcd and the NFS test server.

Every Juju call goes through jubilant, and the models come from pytest-jubilant (the plugin the
Ops documentation recommends): its module-scoped `juju` fixture gives each test module a
temporary model of its own, named `<prefix>-<module>` and destroyed after the module; we do not
use pytest-operator, whose python-libjuju client would be a second, asyncio-based way of talking
to Juju. Each module deploys what it needs into its model (`deployment`, `share`, `three_units`).

Where `juju` is missing or has no controller, every test is skipped with one line naming what is
missing (in the header and in pytest's `-rs` summary), never an error.

Options of pytest-jubilant (see its documentation):
    --juju-model PREFIX   name the models PREFIX-<module> instead of jubilant-<random>-<module>;
                          models that exist already are reused (applications and relations
                          already there are kept, missing ones are added)
    --no-juju-teardown    keep the models after the run (to look at them, or to reuse them)
    --no-juju-setup       with --juju-model: skip model creation (reuse kept models)
    --juju-controller NAME, --juju-dump-logs [DIR], --juju-switch
Ours:
    --constraints TEXT  constraints of the coordinated-ops and NFS server machines (default
                        "virt-type=virtual-machine": NFS mounts need a VM's kernel on LXD)
    --clock-skew SECS   clock difference tolerated between units when comparing intervals
Environment: CHARM_PATH (the packed coordinated-ops charm) and NFS_SERVER_CHARM_PATH (the packed
nfs-share-server charm); each is packed with `charmcraft pack` when unset (the test charm from a
staged copy that adds lib/'s nfs_interfaces: tests/integration/stage.py).
"""

from __future__ import annotations

import logging
import os
import pathlib
import platform
import shutil
import subprocess

import jubilant
import pytest

from tests.integration import helpers, stage

logger = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parents[2]
_MISSING = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("coordinated-ops integration")
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
    """The nfs-share-server test charm: NFS_SERVER_CHARM_PATH, or staged and packed now."""
    if os.environ.get("NFS_SERVER_CHARM_PATH"):
        return pathlib.Path(os.environ["NFS_SERVER_CHARM_PATH"]).resolve()
    staged = stage.stage_nfs_share_server(tmp_path_factory.mktemp("staged") / "nfs-share-server")
    return _pack(staged, "NFS_SERVER_CHARM_PATH", tmp_path_factory.mktemp("nfs-server"))


@pytest.fixture(scope="module")
def deployment(
    request, juju: jubilant.Juju, charm_path, nfs_server_charm_path
) -> helpers.Deployment:
    """Deploy (or reuse) the four applications and their relations in this module's model."""
    juju.wait_timeout = helpers.DEPLOY_TIMEOUT
    constraints = helpers.parse_constraints(request.config.getoption("--constraints"))
    deployment = helpers.Deployment(
        juju=juju, constraints=constraints, skew=request.config.getoption("--clock-skew")
    )
    deployment.deploy(charm_path, nfs_server_charm_path)
    return deployment


@pytest.fixture(scope="module")
def share(deployment: helpers.Deployment) -> helpers.Deployment:
    """The NFS share requested and mounted on every coordinated-ops unit (idempotent)."""
    deployment.mount_share()
    return deployment


@pytest.fixture
def three_units(share: helpers.Deployment) -> helpers.Deployment:
    """Three coordinated-ops units, each with the share mounted (re-adds units tests removed)."""
    share.ensure_units(3)
    return share
