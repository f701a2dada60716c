"""The nfs-share-server test charm: its pure renderer (golden file) and its event handling.

ops.testing stands in for Juju; the machine commands (apt-get, systemctl) are replaced by a
recorder, and the configuration file, state and export directories are real files under
tmp_path. tests/functional/test_nfs_ganesha.py runs a real ganesha with the same rendering.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
import sys
import types

import pytest
import yaml
from ops import testing

from tests.integration import stage

ROOT = pathlib.Path(__file__).resolve().parents[2]
SERVER = ROOT / "tests" / "integration" / "charms" / "nfs-share-server"
GOLDEN = pathlib.Path(__file__).parent / "data" / "ganesha-two-exports.conf"


def load_server_module(name: str) -> types.ModuleType:
    """Import the server charm's src/<name>.py without clashing with the demo charm's modules."""
    if str(SERVER / "src") not in sys.path:
        sys.path.append(str(SERVER / "src"))  # for the charm's own `import ganesha`
    spec = importlib.util.spec_from_file_location(
        f"nfs_share_server_{name}", SERVER / "src" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ganesha = load_server_module("ganesha")
server = load_server_module("charm")


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


def test_render_matches_golden_file():
    exports = [
        ganesha.Export(2, "/srv/nfs-share-server/closed", "/closed", ()),
        ganesha.Export(1, "/srv/nfs-share-server/data", "/data", ("10.1.0.1", "10.1.0.2")),
    ]
    settings = ganesha.Settings("10.0.0.5", 2050, "/var/lib/nfs-share-server/recovery")
    assert ganesha.render(exports, settings) == GOLDEN.read_text()


@pytest.mark.parametrize(
    ("exports", "settings", "match"),
    [
        ([ganesha.Export(1, "/srv/a b", "/a", ())], ganesha.Settings("10.0.0.5"), "path"),
        ([ganesha.Export(1, "/srv/a;", "/a", ())], ganesha.Settings("10.0.0.5"), "path"),
        ([ganesha.Export(1, "/srv/a", "/a}", ())], ganesha.Settings("10.0.0.5"), "pseudo"),
        ([ganesha.Export(1, "srv/a", "/a", ())], ganesha.Settings("10.0.0.5"), "not absolute"),
        ([ganesha.Export(1, "/a", "/a", ('10.0.0.1"',))], ganesha.Settings("10.0.0.5"), "client"),
        ([ganesha.Export(1, "/a", "/a", ("1.2.3.4,5",))], ganesha.Settings("10.0.0.5"), "client"),
        ([ganesha.Export(0, "/a", "/a", ())], ganesha.Settings("10.0.0.5"), "Export_Id 0"),
        (
            [ganesha.Export(1, "/a", "/a", ()), ganesha.Export(1, "/b", "/b", ())],
            ganesha.Settings("10.0.0.5"),
            "used twice",
        ),
        ([], ganesha.Settings("not-an-ip"), "does not appear to be an IPv4 or IPv6"),
        ([], ganesha.Settings("10.0.0.5", 0), "port 0"),
    ],
)
def test_render_refuses_unsafe_values(exports, settings, match):
    with pytest.raises(ValueError, match=match):
        ganesha.render(exports, settings)


@pytest.mark.parametrize(
    ("name", "expected"), [("/data", "data"), ("demo.v2", "demo.v2"), ("a_b-c", "a_b-c")]
)
def test_slug(name, expected):
    assert ganesha.slug(name) == expected


@pytest.mark.parametrize("name", ["", "/", "../x", "a/b", "-x", "a b", ".."])
def test_slug_rejects(name):
    with pytest.raises(ValueError, match="share name"):
        ganesha.slug(name)


def test_endpoint_format():
    assert ganesha.endpoint("10.0.0.5", "data") == "nfs://10.0.0.5/data"
    assert ganesha.endpoint("10.0.0.5", "data", 2050) == "nfs://10.0.0.5:2050/data"
    assert ganesha.endpoint("fd00::5", "data") == "nfs://[fd00::5]/data"


def test_the_server_charm_keeps_no_copy_of_the_library():
    """lib/ is the only copy: the test charm's src imports it from there (PYTHONPATH here)."""
    assert not (SERVER / "lib").exists()
    assert server.NFSProvides.__module__ == "charms.storage_libs.v0.nfs_interfaces"
    assert sys.modules[server.NFSProvides.__module__].__file__ == str(
        ROOT / "lib" / "charms" / "storage_libs" / "v0" / "nfs_interfaces.py"
    )


def _lib_imports(directory: pathlib.Path) -> set[str]:
    """`charms...` modules imported by the .py files under `directory`, as lib/-relative paths."""
    found = set()
    for path in directory.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith("charms."):
                found.add(module.replace(".", "/") + ".py")
    return found


def test_packing_stages_every_library_the_server_charm_imports_from_lib(tmp_path):
    """The staged copy `tox -e pack` and the integration conftest pack holds lib/'s files."""
    staged = stage.stage_nfs_share_server(tmp_path / "nfs-share-server")
    needed = _lib_imports(SERVER / "src")
    assert needed == {"charms/storage_libs/v0/nfs_interfaces.py"}
    assert needed <= set(stage.LIBRARIES)
    for library in needed:
        assert (staged / "lib" / library).read_bytes() == (ROOT / "lib" / library).read_bytes()
    assert (staged / "src" / "charm.py").read_bytes() == (SERVER / "src" / "charm.py").read_bytes()
    build = yaml.safe_load((staged / "charmcraft.yaml").read_text())
    assert "lib" in build["parts"]["charm"]["prime"]
    assert (
        "lib/charms/storage_libs/v0/nfs_interfaces.py" in build["parts"]["charm"]["override-build"]
    )


def test_tox_pack_packs_the_staged_copy():
    tox = (ROOT / "tox.ini").read_text()
    pack = tox[tox.index("[testenv:pack]") :]
    assert "python -m tests.integration.stage {env_tmp_dir}/nfs-share-server" in pack
    assert "charmcraft pack --project-dir {env_tmp_dir}/nfs-share-server" in pack


# ------------------------------------------------------------------------------------------------
# The charm
# ------------------------------------------------------------------------------------------------


class Machine:
    def __init__(self):
        self.commands: list[list[str]] = []
        self.restarts = 0

    def run(self, argv):
        self.commands.append(list(argv))

    def restart(self):
        self.restarts += 1


@pytest.fixture
def machine(monkeypatch, tmp_path):
    fake = Machine()
    monkeypatch.setattr(server, "run", fake.run)
    monkeypatch.setattr(server, "restart_ganesha", fake.restart)
    monkeypatch.setattr(server, "CONFIG_FILE", tmp_path / "etc" / "ganesha" / "ganesha.conf")
    monkeypatch.setattr(server, "STATE_DIR", tmp_path / "state")
    return fake


@pytest.fixture
def ctx(machine):
    return testing.Context(
        server.NfsShareServerCharm,
        meta=yaml.safe_load((SERVER / "metadata.yaml").read_text()),
        config=yaml.safe_load((SERVER / "config.yaml").read_text()),
    )


def requirer(addresses=("10.1.0.1", "10.1.0.2", "10.1.0.3"), name="/data", size="-1", **kw):
    return testing.Relation(
        "nfs-share",
        remote_app_name="coordinated-ops",
        remote_app_data={"name": name, "allowlist": "0.0.0.0", "size": size},
        remote_units_data={i: {"ingress-address": a} for i, a in enumerate(addresses)},
        **kw,
    )


def state(tmp_path, *relations, stored=()) -> testing.State:
    return testing.State(
        leader=True,
        relations=set(relations),
        config={"export-root": str(tmp_path / "exports"), "bind-address": "10.0.0.5"},
        stored_states=set(stored),
    )


def conf(tmp_path) -> str:
    return (tmp_path / "etc" / "ganesha" / "ganesha.conf").read_text()


def test_install_installs_ganesha_and_writes_config(ctx, machine, tmp_path):
    ctx.run(ctx.on.install(), state(tmp_path))
    assert ["apt-get", "install", "-y", "-q", "nfs-ganesha", "nfs-ganesha-vfs"] in machine.commands
    assert "Bind_addr = 10.0.0.5;" in conf(tmp_path)
    assert "EXPORT" not in conf(tmp_path)


def test_share_request_serves_requirer_units_and_sets_endpoint(ctx, machine, tmp_path):
    rel = requirer(size="3")
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state(tmp_path, rel))
    share = f"r{rel.id}-data"  # the relation's own directory and pseudo path
    directory = tmp_path / "exports" / share
    assert directory.is_dir() and (directory.stat().st_mode & 0o777) == 0o777
    text = conf(tmp_path)
    assert "Export_Id = 1;" in text and f"Path = {directory};" in text
    assert f"Pseudo = /{share};" in text
    assert "Clients = 10.1.0.1, 10.1.0.2, 10.1.0.3;" in text
    assert out.get_relation(rel.id).local_app_data == {"endpoint": f"nfs://10.0.0.5/{share}"}
    assert machine.restarts == 1
    assert out.unit_status == testing.ActiveStatus(f"serving {share} (3 GiB, 3 clients)")

    # Nothing new: no restart.
    rel = out.get_relation(rel.id)
    ctx.run(ctx.on.relation_changed(rel, remote_unit=1), out)
    assert machine.restarts == 1

    # Scale in: re-rendered without the departing unit, restarted once more.
    rel = out.get_relation(rel.id)
    out = ctx.run(ctx.on.relation_departed(rel, remote_unit=2, departing_unit=2), out)
    assert "Clients = 10.1.0.1, 10.1.0.2;" in conf(tmp_path)
    assert machine.restarts == 2

    # Relation removed: the export goes, the directory and its data stay.
    (directory / "keep.txt").write_text("data")
    rel = out.get_relation(rel.id)
    out = ctx.run(ctx.on.relation_broken(rel), out)
    assert "EXPORT" not in conf(tmp_path)
    assert (directory / "keep.txt").read_text() == "data"
    assert out.unit_status == testing.ActiveStatus("no shares")


def test_export_ids_are_stable_per_relation_and_share(ctx, machine, tmp_path):
    a = requirer(name="a", id=1)
    b = requirer(("10.2.0.1",), name="b", id=2)
    out = ctx.run(ctx.on.relation_changed(a, remote_unit=0), state(tmp_path, a, b))
    b = out.get_relation(b.id)
    out = ctx.run(ctx.on.relation_changed(b, remote_unit=0), out)
    text = conf(tmp_path)
    assert text.index("Pseudo = /r1-a;") < text.index("Pseudo = /r2-b;")
    assert "Export_Id = 2;" in text and "Clients = 10.2.0.1;" in text
    out = ctx.run(ctx.on.config_changed(), out)
    assert conf(tmp_path) == text


def test_custom_port_is_in_config_and_endpoint(ctx, machine, tmp_path):
    rel = requirer()
    st = state(tmp_path, rel)
    st = testing.State(leader=True, relations={rel}, config={**st.config, "nfs-port": 2050})
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), st)
    assert "NFS_Port = 2050;" in conf(tmp_path)
    assert out.get_relation(rel.id).local_app_data == {
        "endpoint": f"nfs://10.0.0.5:2050/r{rel.id}-data"
    }


def test_bad_share_name_blocks_and_serves_nothing(ctx, machine, tmp_path):
    rel = requirer(name="a b")
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state(tmp_path, rel))
    assert out.unit_status == testing.BlockedStatus(
        "invalid share request from coordinated-ops: name"
    )
    assert out.get_relation(rel.id).local_app_data == {}
    assert machine.restarts == 0


# ------------------------------------------------------------------------------------------------
# Tenants and hostile requirers
# ------------------------------------------------------------------------------------------------


def test_two_applications_asking_for_the_same_name_get_separate_shares(ctx, machine, tmp_path):
    a = requirer(("10.1.0.1",), name="shared", id=1)
    b = testing.Relation(
        "nfs-share",
        id=2,
        remote_app_name="other-app",
        remote_app_data={"name": "shared", "allowlist": "0.0.0.0", "size": "-1"},
        remote_units_data={0: {"ingress-address": "10.2.0.1"}},
    )
    out = ctx.run(ctx.on.relation_changed(a, remote_unit=0), state(tmp_path, a, b))
    out = ctx.run(ctx.on.relation_changed(out.get_relation(b.id), remote_unit=0), out)
    text = conf(tmp_path)
    assert text.count("EXPORT {") == 2
    assert f"Path = {tmp_path / 'exports' / 'r1-shared'};" in text
    assert f"Path = {tmp_path / 'exports' / 'r2-shared'};" in text
    assert "Pseudo = /r1-shared;" in text and "Pseudo = /r2-shared;" in text
    endpoint_a = out.get_relation(a.id).local_app_data["endpoint"]
    endpoint_b = out.get_relation(b.id).local_app_data["endpoint"]
    assert endpoint_a != endpoint_b

    # Tenant a goes; a later application asking for `shared` never sees a's files.
    (tmp_path / "exports" / "r1-shared" / "secret.txt").write_text("a's data")
    out = ctx.run(ctx.on.relation_broken(out.get_relation(a.id)), out)
    c = testing.Relation(
        "nfs-share",
        id=3,
        remote_app_name="newcomer",
        remote_app_data={"name": "shared", "allowlist": "0.0.0.0", "size": "-1"},
        remote_units_data={0: {"ingress-address": "10.3.0.1"}},
    )
    out = ctx.run(
        ctx.on.relation_changed(c, remote_unit=0),
        dataclasses.replace(out, relations={out.get_relation(b.id), c}),
    )
    text = conf(tmp_path)
    assert "r1-shared" not in text
    assert "Clients = 10.3.0.1;" in text.split("Pseudo = /r3-shared;")[1]
    assert "Clients = 10.2.0.1;" in text.split("Pseudo = /r2-shared;")[1].split("EXPORT")[0]


@pytest.mark.parametrize(
    "address", ["*", "0.0.0.0/0", "::/0", "10.0.0.0/8", "host.example", "@ng"]
)
def test_a_hostile_unit_address_never_reaches_the_export(ctx, machine, tmp_path, address):
    rel = requirer(("10.1.0.1", address))
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=1), state(tmp_path, rel))
    assert "Clients = 10.1.0.1;" in conf(tmp_path)
    assert address not in conf(tmp_path).split("EXPORT")[1]
    assert out.unit_status == testing.BlockedStatus(
        "ignoring coordinated-ops/1 of coordinated-ops: its address is not a single IP"
    )


@pytest.mark.parametrize(
    ("name", "size"), [("/data", "9" * 5000), ("/" + "a" * 300, "1"), ("x" * 300, "-1")]
)
def test_absurd_requests_block_and_never_crash(ctx, machine, tmp_path, name, size):
    rel = requirer(name=name, size=size)
    out = state(tmp_path, rel)
    # update-status shows what the relation-changed saw (stored state): it reads no relation.
    for event in (ctx.on.relation_changed(rel, remote_unit=0), ctx.on.update_status()):
        out = ctx.run(event, out)
        assert out.unit_status.name == "blocked"
    assert not (tmp_path / "exports").exists()
    assert machine.restarts == 0


@pytest.mark.parametrize(
    ("exports", "match"),
    [
        ([ganesha.Export(1, "/srv/a", "/a", ("*",))], "not a single IP address"),
        ([ganesha.Export(1, "/srv/a", "/a", ("10.0.0.0/8",))], "not a single IP address"),
        ([ganesha.Export(1, "/srv/a", "/a", ("@netgroup",))], "not a single IP address"),
        ([ganesha.Export(1, "/srv/a", "/a", ("0.0.0.0",))], "not a single host address"),
        (
            [ganesha.Export(1, "/srv/a", "/a"), ganesha.Export(2, "/srv/b", "/a")],
            "pseudo path '/a' is used by two exports",
        ),
        (
            [ganesha.Export(1, "/srv/a", "/a"), ganesha.Export(2, "/srv/a", "/b")],
            "path '/srv/a' is used by two exports",
        ),
    ],
)
def test_render_refuses_wide_clients_and_duplicates(exports, match):
    with pytest.raises(ValueError, match=match):
        ganesha.render(exports, ganesha.Settings("10.0.0.5"))


def test_an_export_directory_that_cannot_be_made_blocks_without_failing_the_hook(
    ctx, machine, tmp_path
):
    (tmp_path / "exports").write_text("a file where the export root should be")
    rel = requirer()
    out = ctx.run(ctx.on.relation_changed(rel, remote_unit=0), state(tmp_path, rel))
    assert out.unit_status.name == "blocked"
    assert out.unit_status.message.startswith("bad share request: ")
    assert out.get_relation(rel.id).local_app_data == {}
    assert machine.restarts == 0
