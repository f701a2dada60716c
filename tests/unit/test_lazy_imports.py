"""Hooks import only what they use (tests/benchmarks/dispatch.py, import_cost.py).

Importing pydantic costs about 60% of importing ops, and every hook is a fresh interpreter. Only
the actions and the upgrade's version checks validate with pydantic; they import it themselves.
Likewise grpc (the etcd transport of charmlibs.rollingops, ~60 ms): only the etcd worker and the
hooks that really talk to etcd (a fence check, a sync lock, a clean-up, `busy_units` in an
action) import it.
Each check runs in a fresh interpreter: this test process has long imported pydantic.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.unit.conftest import ROOT

PRELUDE = f"import sys; sys.path[:0] = [{str(ROOT)!r}, 'lib', 'src']\n"


def _run(code: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_importing_the_charm_does_not_import_pydantic():
    _run("import charm\nassert 'pydantic' not in sys.modules, 'import charm loaded pydantic'")


def test_the_upgrade_lib_builds_its_pydantic_names_on_first_use():
    out = _run(
        "import charms.data_platform_libs.v0.upgrade as lib\n"
        "assert 'pydantic' not in sys.modules\n"
        "from charms.data_platform_libs.v0.upgrade import BaseModel, DependencyModel\n"
        "import pydantic\n"
        "assert BaseModel is pydantic.BaseModel and issubclass(DependencyModel, BaseModel)\n"
        "assert lib.DependencyModel is DependencyModel\n"
        "print(sorted(set(lib.__all__) - set(dir(lib))))\n"
    )
    assert json.loads(out.replace("'", '"')) == []


# update-status, config-changed and the peer relation-changed hooks of a unit with stored upgrade
# dependencies, a finished workload rollout and a mounted NFS share (as in test_charm_nfs.py,
# which this script does not import: it imports pydantic).
HOOKS = """
import json, os, pathlib, tempfile
os.environ["COORDINATED_OPS_ROOT"] = tmp = tempfile.mkdtemp()
from ops import testing
import nfs, nfs_request, upgrade, workload
from tests.unit.conftest import charm_context

workload.is_installed, workload.get_version = lambda: True, lambda: "1.0.0"
workload.health = lambda: {"status": "ok", "version": "1.0.0"}
commands = []
nfs.run_command = lambda argv, pass_fds=(): commands.append(argv) or ""
nfs_request.MOUNT_ROOTS = (*nfs_request.MOUNT_ROOTS, f"{tmp}/srv")
source, mountpoint = "10.0.0.5:/demo", f"{tmp}/srv/demo-share"
pathlib.Path(mountpoint).mkdir(parents=True)
nfs.MOUNTS_FILE = pathlib.Path(tmp) / "mounts"
nfs.MOUNTS_FILE.write_text(f"{source} {mountpoint} nfs4 rw 0 0\\n")
rollout = {"round": 1, "target": "1.1.0", "previous": "1.0.0", "done": True}
up = testing.PeerRelation(
    "upgrade",
    local_app_data={
        "dependencies": json.dumps(upgrade.DEPENDENCIES),
        "workload-rollout": json.dumps(rollout),
    },
    local_unit_data={"state": "idle"},
    peers_data={1: {"state": "idle"}},
)
share = testing.Relation(
    "nfs-share",
    remote_app_name="nfs-share-server",
    remote_app_data={"endpoint": "nfs://10.0.0.5:2050/demo"},
)
request = {"name": "demo", "size": None, "mountpoint": mountpoint}
nfs_peer = testing.PeerRelation(
    nfs.PEER, local_app_data={nfs.PEER_KEY: json.dumps(request)}, peers_data={1: {}}
)
stored = testing.StoredState(
    owner_path="CoordinatedOpsCharm/NfsShare[nfs]",
    content={"endpoint": "nfs://10.0.0.5:2050/demo", "mounted_at": mountpoint, "source": source},
)
state = testing.State(
    leader=sys.argv[1] == "leader",
    relations={up, share, nfs_peer},
    stored_states={stored},
    planned_units=2,
)
ctx = charm_context(app_name="coordinated-ops", unit_id=0)
for event in (
    ctx.on.update_status(),
    ctx.on.config_changed(),
    ctx.on.relation_changed(up, remote_unit=1),
    ctx.on.relation_changed(nfs_peer, remote_unit=1),
):
    out = ctx.run(event, state)
    status = out.unit_status
    assert status == testing.ActiveStatus(f"mounted {source} at {mountpoint}"), status
    assert commands == [], commands
    loaded = [name for name in ("pydantic", "poetry", "grpc") if name in sys.modules]
    assert not loaded, f"{event.name} imported {loaded}"
"""


def test_hooks_that_validate_nothing_do_not_import_pydantic():
    for leader in ("leader", "follower"):
        _run(HOOKS, leader)


# Hooks of a rollingops charm with the etcd relation and a local etcd config, on the peer and on
# the etcd backend, that do not talk to etcd: update-status, and a request in etcd mode (which
# writes the queue and starts the worker process). The control at the end shows that a fence
# check does import grpc, so the assertion can fail.
ROLLINGOPS_HOOKS = """
import json, subprocess
from ops import testing
from tests.unit import test_rollingops_etcd as t

t.BASE[0] = tmp = sys.argv[2]
creds = t._certs.generate_client_credentials("lazy-imports")
t._files.write_config(tmp, endpoints=["127.0.0.1:2379"], prefix="/p/", owner="o",
                      server_ca_pem=creds["client-ca"], cert_pem=creds["client-cert"],
                      key_pem=creds["client-key"])
started = []
subprocess.Popen = lambda argv, **kw: started.append(argv)
leader = sys.argv[1] == "leader"
import charmlibs.rollingops._etcd_client, charmlibs.rollingops._etcd_lock  # EtcdError & co
for backend, mode in (("peer", "peer"), ("etcd", "etcd")):
    t.run(t.unit_bag(backend=backend), t.app_bag(mode), leader=leader)
    t.run(t.unit_bag(backend=backend), t.app_bag(mode), event="config_changed", leader=leader)
ctx = testing.Context(t.EtcdCharm, meta=t.META, app_name=t.APP, unit_id=1)
rel = testing.PeerRelation("restart", local_app_data=t.app_bag("etcd"))
state = testing.State(planned_units=t.PLANNED, leader=leader,
                      relations={rel, testing.Relation("etcd")})
with ctx(ctx.on.update_status(), state) as mgr:
    mgr.charm.rolling.request_async_lock("restart", {"a": 1}, 0)
    mgr.run()
assert len(started) == 1, started
assert "grpc" not in sys.modules, "a hook that does not talk to etcd imported grpc"
lock = t._etcd_lock.EtcdLock.from_config(t._files.read_config(tmp), "app/1")
print("control", "grpc" in sys.modules)
"""


def test_rollingops_hooks_that_do_not_talk_to_etcd_do_not_import_grpc(tmp_path):
    for leader in ("leader", "follower"):
        out = _run(ROLLINGOPS_HOOKS, leader, str(tmp_path / leader))
        assert out.splitlines()[-1] == "control True"


# An idle update-status of the charm, every library quiet (as its last reconcile remembered):
# charmlibs.rollingops answers from stored state without building its etcd backend, whose import
# (and its helpers') costs a few per cent of a dispatch. The control shows the check can fail.
IDLE_ROLLINGOPS = """
from ops import testing
from tests.unit.conftest import charm_context
import workload

workload.is_installed, workload.get_version = lambda: True, lambda: "1.0.0"
workload.health = lambda: {"status": "ok", "version": "1.0.0"}
quiet = testing.StoredState(
    owner_path="CoordinatedOpsCharm/RollingOpsManager[rolling-ops-manager]",
    content={"quiet": True, "quiet_backend": "peer", "quiet_cluster_id": "coordinated-ops"},
)
state = testing.State(
    leader=True,
    relations={testing.PeerRelation("rollingops"), testing.Relation("etcd")},
    stored_states={quiet},
)
ctx = charm_context(app_name="coordinated-ops", unit_id=0)
ctx.run(ctx.on.update_status(), state)
print("idle", "charmlibs.rollingops._etcd_backend" in sys.modules)
ctx.run(ctx.on.update_status(), testing.State(leader=True, relations=state.relations))
print("control", "charmlibs.rollingops._etcd_backend" in sys.modules)
"""


def test_an_idle_update_status_does_not_build_the_etcd_backend():
    assert _run(IDLE_ROLLINGOPS).splitlines()[-2:] == ["idle False", "control True"]
