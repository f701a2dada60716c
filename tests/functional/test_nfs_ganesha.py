"""The NFS share end to end against a real nfs-ganesha, with a real userspace NFS client.

Real here: ganesha.nfsd serving the configuration the nfs-share-server charm renders, the
charm's own handlers (driven by ops.testing, which stands in for the Juju controller), the demo
charm's `nfs-mount` request and the libnfs client tools.

Mocked, and only this: the demo charm's kernel `mount` call (`nfs.run_command`). This machine's
kernel has no NFS client, so the replacement "mounts" by listing the share with the userspace
client at exactly the source and port the `mount` command names, and fails as `mount` would when
the server refuses.

How per-client access is shown from one machine: every connection from this host to 127.0.0.1
has source address 127.0.0.1 (the kernel's route `local 127.0.0.0/8 dev lo src 127.0.0.1`), so an
export whose client list names 127.0.0.1 admits us and one naming only 127.0.0.2 (another
requirer unit's address in these tests) refuses us. The network-namespace test shows two
different client addresses at the same time against one server.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import yaml
from ops import testing

from tests.functional.nfs_ganesha import (
    SERVER_CHARM,
    GaneshaServer,
    free_port,
    missing_requirements,
    nfs_cat,
    nfs_ls,
    nfs_url,
    nfs_write,
    server_charm_module,
)

REASON = missing_requirements()
if REASON:
    print(f"skipping the nfs-ganesha functional tests: {REASON}")
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

ROOT = pathlib.Path(__file__).resolve().parents[2]
ganesha = server_charm_module("ganesha")
server_charm = server_charm_module("charm")


@pytest.fixture
def server(tmp_path: pathlib.Path) -> Iterator[GaneshaServer]:
    """A ganesha on 127.0.0.1:<free port>; started by each test with its configuration."""
    with GaneshaServer(tmp_path / "ganesha", port=free_port()) as ganesha_server:
        yield ganesha_server
    print(f"ganesha start times (s): {[round(s, 3) for s in ganesha_server.start_seconds]}")


def render(server: GaneshaServer, exports, bind: str = "127.0.0.1") -> str:
    settings = ganesha.Settings(bind, server.port, str(server.recovery_root))
    return ganesha.render(exports, settings)


def test_listed_client_reads_and_writes_unlisted_is_refused(server, tmp_path):
    allowed, denied = tmp_path / "exports" / "allowed", tmp_path / "exports" / "denied"
    allowed.mkdir(parents=True)
    denied.mkdir(parents=True)
    (denied / "secret.txt").write_bytes(b"not for you\n")
    server.start(
        render(
            server,
            [
                ganesha.Export(1, str(allowed), "/allowed", ("127.0.0.1",)),
                ganesha.Export(2, str(denied), "/denied", ("127.0.0.2",)),
            ],
        )
    )
    payload = b"written over NFSv4\n\x00\xff binary too\n"

    wrote = nfs_write(nfs_url("127.0.0.1", server.port, "allowed/hello.bin"), payload, tmp_path)
    assert wrote.returncode == 0, wrote.stderr
    read = nfs_cat(nfs_url("127.0.0.1", server.port, "allowed/hello.bin"))
    assert read.returncode == 0, read.stderr
    assert read.stdout == payload
    assert (allowed / "hello.bin").read_bytes() == payload  # really on the export directory

    refused_write = nfs_write(nfs_url("127.0.0.1", server.port, "denied/x.bin"), b"x", tmp_path)
    refused_read = nfs_cat(nfs_url("127.0.0.1", server.port, "denied/secret.txt"))
    refused_list = nfs_ls(nfs_url("127.0.0.1", server.port, "denied"))
    assert refused_write.returncode != 0
    assert refused_read.returncode != 0 and refused_read.stdout == b""
    assert refused_list.returncode != 0
    assert b"NFS4ERR_NOENT" in refused_list.stderr  # the v4 pseudo-fs hides the export
    assert sorted(p.name for p in denied.iterdir()) == ["secret.txt"]


# ------------------------------------------------------------------------------------------------
# Through both charms: the requirer set decides who may use the share.
# ------------------------------------------------------------------------------------------------


class UserspaceMount:
    """Stands in for the kernel `mount` (mocked: no NFS client in this kernel).

    It checks the share the way `mount` would, with the userspace client at exactly the source
    and port of the command, and keeps a /proc/self/mounts-style table for the charm to read.
    """

    def __init__(self, table: pathlib.Path):
        self.table = table
        self.table.write_text("")
        self.commands: list[list[str]] = []

    def run(self, argv: list[str], pass_fds: tuple[int, ...] = ()) -> str:
        import nfs

        target = argv[-1]  # /proc/self/fd/N of the directory the charm holds: its path
        if target.startswith("/proc/self/fd/"):
            assert int(target.split("/")[4]) in pass_fds
            argv = [*argv[:-1], os.path.realpath(target)]
        self.commands.append(list(argv))
        if argv[0] != "mount":
            return ""
        options: dict[str, str] = {}
        for option in argv[argv.index("-o") + 1].split(","):
            key, _, value = option.partition("=")
            options[key] = value
        host, _, path = argv[-2].partition(":")
        listing = nfs_ls(nfs_url(host, int(options.get("port", "2049")), path))
        if listing.returncode != 0:
            raise nfs.MountError(f"mount.nfs4: access denied ({listing.stderr.decode().strip()})")
        with self.table.open("a") as table:
            table.write(f"{argv[-2]} {argv[-1]} nfs4 rw 0 0\n")
        return ""


@pytest.fixture
def demo(monkeypatch, tmp_path):
    """The demo charm's Context with its workload stubbed as healthy and mount as above."""
    import nfs
    import nfs_request
    import workload

    monkeypatch.setenv("COORDINATED_OPS_ROOT", str(tmp_path / "demo-root"))
    monkeypatch.setattr(workload, "is_installed", lambda: True)
    monkeypatch.setattr(workload, "get_version", lambda: "1.0.0")
    monkeypatch.setattr(workload, "health", lambda: {"status": "ok", "version": "1.0.0"})
    monkeypatch.setattr(workload, "ensure_config", lambda *_: False)
    monkeypatch.setattr(workload, "start", lambda: None)
    mounter = UserspaceMount(tmp_path / "mounts")
    monkeypatch.setattr(nfs, "run_command", mounter.run)
    monkeypatch.setattr(nfs, "MOUNTS_FILE", mounter.table)
    monkeypatch.setattr(nfs, "RETRY_WAIT_MIN", 0)
    monkeypatch.setattr(nfs, "RETRY_WAIT_MAX", 0)
    (tmp_path / "mnt").mkdir()  # a root exists, as /mnt does on a machine
    monkeypatch.setattr(
        nfs_request, "MOUNT_ROOTS", (*nfs_request.MOUNT_ROOTS, str(tmp_path / "mnt"))
    )
    from charm import CoordinatedOpsCharm

    ctx = testing.Context(
        CoordinatedOpsCharm,
        meta=yaml.safe_load((ROOT / "metadata.yaml").read_text()),
        actions=yaml.safe_load((ROOT / "actions.yaml").read_text()),
        config=yaml.safe_load((ROOT / "config.yaml").read_text()),
        app_name="coordinated-ops",
        unit_id=0,
    )
    return ctx, mounter


@pytest.fixture
def provider(monkeypatch, tmp_path, server):
    """The nfs-share-server charm's Context; its config file and restart are the real server's."""
    monkeypatch.setattr(server_charm, "CONFIG_FILE", server.config_path)
    monkeypatch.setattr(server_charm, "STATE_DIR", tmp_path / "server-state")
    monkeypatch.setattr(server_charm, "restart_ganesha", server.restart)
    monkeypatch.setattr(server_charm, "run", lambda argv: None)  # apt/systemctl: not used here
    return testing.Context(
        server_charm.NfsShareServerCharm,
        meta=yaml.safe_load((SERVER_CHARM / "metadata.yaml").read_text()),
        config=yaml.safe_load((SERVER_CHARM / "config.yaml").read_text()),
    )


def test_requirer_units_decide_access_end_to_end(demo, provider, server, tmp_path):
    demo_ctx, mounter = demo
    mountpoint = str(tmp_path / "mnt" / "demo-share")
    began = time.monotonic()

    # 1. The demo leader asks for the share (real action, real library).
    nfs_rel = testing.Relation("nfs-share", remote_app_name="nfs-share-server")
    peer = testing.PeerRelation("nfs-peers")
    out = demo_ctx.run(
        demo_ctx.on.action("nfs-mount", params={"name": "data", "mountpoint": mountpoint}),
        testing.State(leader=True, relations={nfs_rel, peer}),
    )
    request = dict(out.get_relation(nfs_rel.id).local_app_data)
    peer_app_data = dict(out.get_relation(peer.id).local_app_data)
    assert request == {"name": "data", "allowlist": "0.0.0.0", "size": "-1"}

    # 2. The server charm serves it to the two demo units: 127.0.0.1 (us) and 127.0.0.2.
    units = {0: {"ingress-address": "127.0.0.1"}, 1: {"ingress-address": "127.0.0.2"}}
    server_rel = testing.Relation(
        "nfs-share",
        remote_app_name="coordinated-ops",
        remote_app_data=request,
        remote_units_data=units,
    )
    config = {
        "export-root": str(tmp_path / "exports"),
        "nfs-port": server.port,
        "bind-address": "127.0.0.1",
    }
    served = provider.run(
        provider.on.relation_changed(server_rel, remote_unit=0),
        testing.State(leader=True, relations={server_rel}, config=config),
    )
    endpoint = served.get_relation(server_rel.id).local_app_data["endpoint"]
    share = f"r{server_rel.id}-data"  # the relation's own directory and pseudo path
    assert endpoint == f"nfs://127.0.0.1:{server.port}/{share}"
    assert "Clients = 127.0.0.1, 127.0.0.2;" in server.config_path.read_text()

    # 3. Demo unit 0 gets mount_share and "mounts" (userspace check of the same source/port).
    def demo_unit_sees(endpoint_data: dict, stored=()):
        rel = testing.Relation(
            "nfs-share",
            id=nfs_rel.id,
            remote_app_name="nfs-share-server",
            remote_app_data=endpoint_data,
            remote_units_data={0: {"ingress-address": "127.0.0.1"}},
        )
        prel = testing.PeerRelation("nfs-peers", id=peer.id, local_app_data=peer_app_data)
        return demo_ctx.run(
            demo_ctx.on.relation_changed(rel, remote_unit=0),
            testing.State(relations={rel, prel}, stored_states=set(stored)),
        )

    mounted = demo_unit_sees({"endpoint": endpoint})
    source = f"127.0.0.1:/{share}"
    assert mounter.commands[-1] == [
        "mount",
        "--no-canonicalize",
        "-t",
        "nfs4",
        "-o",
        f"port={server.port},rw,nosuid,nodev,soft,timeo=50,retrans=2,proto=tcp,retry=0",
        source,
        mountpoint,
    ]
    assert mounted.unit_status == testing.ActiveStatus(f"mounted {source} at {mountpoint}")
    file_url = nfs_url("127.0.0.1", server.port, f"{share}/journal-probe.txt")
    assert nfs_write(file_url, b"unit 0 was here\n", tmp_path).returncode == 0
    assert nfs_cat(file_url).stdout == b"unit 0 was here\n"
    assert (tmp_path / "exports" / share / "journal-probe.txt").exists()

    # 4. Unit 0 (127.0.0.1) is removed: the export is re-rendered for 127.0.0.2 only; we are out.
    server_rel = served.get_relation(server_rel.id)
    served = provider.run(
        provider.on.relation_departed(server_rel, remote_unit=0, departing_unit=0), served
    )
    assert "Clients = 127.0.0.2;" in server.config_path.read_text()
    assert nfs_cat(file_url).returncode != 0
    assert nfs_write(file_url, b"overwrite", tmp_path).returncode != 0
    mounter.table.write_text("")  # a fresh unit at 127.0.0.1 (nothing mounted) cannot mount
    refused = demo_unit_sees({"endpoint": endpoint})
    assert refused.unit_status.name == "blocked"
    assert refused.unit_status.message.startswith(f"NFS mount of {source} at {mountpoint} failed")
    assert (
        tmp_path / "exports" / share / "journal-probe.txt"
    ).read_bytes() == b"unit 0 was here\n"

    # 5. A unit at 127.0.0.1 joins again: access is back.
    server_rel = served.get_relation(server_rel.id)
    rejoined = testing.Relation(
        "nfs-share",
        id=server_rel.id,
        remote_app_name="coordinated-ops",
        remote_app_data=request,
        remote_units_data={1: units[1], 2: {"ingress-address": "127.0.0.1"}},
        local_app_data=server_rel.local_app_data,
    )
    provider.run(
        provider.on.relation_joined(rejoined, remote_unit=2),
        testing.State(
            leader=True, relations={rejoined}, config=config, stored_states=served.stored_states
        ),
    )
    assert "Clients = 127.0.0.1, 127.0.0.2;" in server.config_path.read_text()
    assert nfs_cat(file_url).stdout == b"unit 0 was here\n"
    print(f"end-to-end scenario took {time.monotonic() - began:.2f} s")


# ------------------------------------------------------------------------------------------------
# Two client addresses at once: network namespaces (root and `ip` needed).
# ------------------------------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    """Server namespace joined to two client namespaces by one veth pair each.

    srv 10.231.1.1 <-> client-a 10.231.1.2 and srv 10.231.2.1 <-> client-b 10.231.2.2. Deleting
    the namespaces at teardown removes the veth pairs too.
    """
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2)")
    tag = uuid.uuid4().hex[:6]
    names = {"srv": f"co-nfs-srv-{tag}", "a": f"co-nfs-a-{tag}", "b": f"co-nfs-b-{tag}"}
    created: list[str] = []
    try:
        for name in names.values():
            _ip("netns", "add", name)
            created.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        for side, net in (("a", 1), ("b", 2)):
            srv_if, cli_if = f"v{side}{tag}s", f"v{side}{tag}c"
            _ip(
                "link",
                "add",
                srv_if,
                "netns",
                names["srv"],
                "type",
                "veth",
                "peer",
                "name",
                cli_if,
                "netns",
                names[side],
            )
            _ip("-n", names["srv"], "addr", "add", f"10.231.{net}.1/24", "dev", srv_if)
            _ip("-n", names[side], "addr", "add", f"10.231.{net}.2/24", "dev", cli_if)
            _ip("-n", names["srv"], "link", "set", srv_if, "up")
            _ip("-n", names[side], "link", "set", cli_if, "up")
    except subprocess.CalledProcessError as error:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False)
        pytest.skip(f"cannot create network namespaces here: {error.stderr.decode().strip()}")
    yield names
    for name in created:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_two_clients_at_once_only_the_listed_one_gets_in(namespaces, tmp_path):
    shared = tmp_path / "exports" / "shared"
    shared.mkdir(parents=True)
    with GaneshaServer(tmp_path / "ganesha-ns", port=free_port(), netns=namespaces["srv"]) as srv:
        # Listen on every address of the server namespace (it has one per client link).
        text = ganesha.render(
            [ganesha.Export(1, str(shared), "/shared", ("10.231.1.2",))],
            ganesha.Settings("0.0.0.0", srv.port, str(srv.recovery_root)),
        )
        srv.start(text)
        url_a = nfs_url("10.231.1.1", srv.port, "shared/from-a.txt")
        url_b = nfs_url("10.231.2.1", srv.port, "shared/from-b.txt")
        wrote_a = nfs_write(url_a, b"client a\n", tmp_path, netns=namespaces["a"])
        wrote_b = nfs_write(url_b, b"client b\n", tmp_path, netns=namespaces["b"])
        assert wrote_a.returncode == 0, wrote_a.stderr
        assert nfs_cat(url_a, netns=namespaces["a"]).stdout == b"client a\n"
        assert wrote_b.returncode != 0
        assert (
            nfs_cat(
                nfs_url("10.231.2.1", srv.port, "shared/from-a.txt"), netns=namespaces["b"]
            ).returncode
            != 0
        )
        assert sorted(p.name for p in shared.iterdir()) == ["from-a.txt"]

        # The requirer set changes: b's unit replaces a's; access follows after a restart.
        srv.config_path.write_text(text.replace("10.231.1.2", "10.231.2.2"))
        srv.restart()
        assert nfs_cat(url_a, netns=namespaces["a"]).returncode != 0
        assert (
            nfs_cat(
                nfs_url("10.231.2.1", srv.port, "shared/from-a.txt"), netns=namespaces["b"]
            ).stdout
            == b"client a\n"
        )


@pytest.mark.parametrize("hostile", ["*", "0.0.0.0/0", "10.231.0.0/16", "10.231.2.2/32"])
def test_a_requirer_unit_cannot_open_the_export_to_another_address(
    namespaces, tmp_path, monkeypatch, hostile
):
    """The review's attack, replayed against real ganesha through the server charm.

    Requirer unit 0 is at 10.231.1.2 (client a); unit 1 publishes `hostile` as its address. The
    export must list 10.231.1.2 only, so client b (10.231.2.2) is refused.
    """
    from charms.storage_libs.v0.nfs_interfaces import parse_endpoint

    with GaneshaServer(tmp_path / "ganesha-ns", port=free_port(), netns=namespaces["srv"]) as srv:
        monkeypatch.setattr(server_charm, "CONFIG_FILE", srv.config_path)
        monkeypatch.setattr(server_charm, "STATE_DIR", tmp_path / "server-state")
        monkeypatch.setattr(server_charm, "restart_ganesha", srv.restart)
        monkeypatch.setattr(server_charm, "run", lambda argv: None)
        ctx = testing.Context(
            server_charm.NfsShareServerCharm,
            meta=yaml.safe_load((SERVER_CHARM / "metadata.yaml").read_text()),
            config=yaml.safe_load((SERVER_CHARM / "config.yaml").read_text()),
        )
        rel = testing.Relation(
            "nfs-share",
            remote_app_name="tenant",
            remote_app_data={"name": "shared", "allowlist": "0.0.0.0", "size": "-1"},
            remote_units_data={
                0: {"ingress-address": "10.231.1.2"},
                1: {"ingress-address": hostile},
            },
        )
        config = {
            "export-root": str(tmp_path / "exports"),
            "nfs-port": srv.port,
            "bind-address": "0.0.0.0",  # every address of the server namespace
        }
        out = ctx.run(
            ctx.on.relation_changed(rel, remote_unit=1),
            testing.State(leader=True, relations={rel}, config=config),
        )
        assert srv.process is not None, "the charm did not start ganesha"
        path = parse_endpoint(out.get_relation(rel.id).local_app_data["endpoint"]).path
        clients = [x for x in srv.config_path.read_text().splitlines() if "Clients" in x]
        print(f"unit 1 at {hostile!r}; rendered: {clients}")

        url_a = nfs_url("10.231.1.1", srv.port, f"{path}/from-a.txt")
        wrote_a = nfs_write(url_a, b"tenant unit 0\n", tmp_path, netns=namespaces["a"])
        assert wrote_a.returncode == 0, wrote_a.stderr
        assert nfs_cat(url_a, netns=namespaces["a"]).stdout == b"tenant unit 0\n"

        read_b = nfs_cat(nfs_url("10.231.2.1", srv.port, f"{path}/from-a.txt"), namespaces["b"])
        wrote_b = nfs_write(
            nfs_url("10.231.2.1", srv.port, f"{path}/from-b.txt"),
            b"intruder\n",
            tmp_path,
            netns=namespaces["b"],
        )
        assert read_b.returncode != 0 and read_b.stdout == b""
        assert wrote_b.returncode != 0
        directory = tmp_path / "exports" / path.lstrip("/")
        assert sorted(p.name for p in directory.iterdir()) == ["from-a.txt"]
        assert out.unit_status.name == "blocked"  # the bad address is shown, not silently used
