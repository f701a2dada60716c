"""Dispatch smoke test: the charm as packed, run through its real `dispatch` with stub hook tools.

ops.testing imports the charm from the test's sys.path, so it cannot see packaging mistakes: a
module missing from lib/, an import that only works from the repository root, a dependency not in
requirements.txt, a dispatch script that cannot find the charm. This test assembles the charm
directory the way `charmcraft pack` does (tests/dispatch/charmdir.py documents the layout, the
generated dispatch script and what differs from a real pack), then runs `dispatch` as the unit
agent would, for install, start, update-status and the `restart` action of every engine listed in
actions.yaml.

Real here: the dispatch script, the charm and its libraries, a virtual environment holding only
requirements.txt's packages, the demo service (a local process: COORDINATED_OPS_SERVICE_MANAGER=
process, COORDINATED_OPS_ROOT=<tmp>), the journal, the libraries' juju-exec wake-ups (run by a stub
juju-exec under the unit's hook lock). Stubbed, because no Juju agent can run here: the hook tools
(tests/dispatch/hooktool.py, backed by a JSON state file; one unit, leader, peer relations with no
other unit).

Needs network access to PyPI once per session (the venv is built with pip, like charmcraft does).
"""

from __future__ import annotations

import json
import pathlib
import time
import urllib.request

import pytest
import yaml

from tests.dispatch import charmdir

ROOT = charmdir.ROOT
UNIT = "coordinated-ops/0"
ENGINES = yaml.safe_load((ROOT / "actions.yaml").read_text())["restart"]["params"]["engine"][
    "enum"
]
DEFAULT_VERSION = "1.0.0"  # workload.DEFAULT_VERSION; read from the service, never imported here


@pytest.fixture(scope="session")
def venv(tmp_path_factory) -> pathlib.Path:
    """The charm's virtual environment, built once per session from requirements.txt."""
    return charmdir.build_venv(
        tmp_path_factory.mktemp("charm-venv") / "venv", ROOT / "requirements.txt"
    )


@pytest.fixture
def unit(tmp_path, venv):
    unit = charmdir.Unit(tmp_path, venv, unit=UNIT, leader=True)
    yield unit
    unit.close()


def http_get(unit: charmdir.Unit, path: str) -> dict | None:
    try:
        url = f"http://127.0.0.1:{unit.port}{path}"
        with urllib.request.urlopen(url, timeout=2) as answer:
            return json.loads(answer.read())
    except OSError:
        return None


def journal(unit: charmdir.Unit) -> list[dict]:
    path = unit.root / "var" / "lib" / "coordinated-ops" / "coordinated-ops-journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(condition, timeout: float, what: str):
    """Test-side wait for something a detached wake-up does (tests may poll; libraries never)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def check(run: charmdir.Dispatched) -> None:
    assert run.returncode == 0, f"{run.dispatch_path} exited {run.returncode}:\n{run.output}"


def install_and_start(unit: charmdir.Unit) -> None:
    check(unit.dispatch("hooks/install"))
    check(unit.dispatch("hooks/start"))


def test_install_start_update_status(unit):
    run = unit.dispatch("hooks/install")
    check(run)
    installed = unit.root / "opt" / "coordinated-ops"
    assert (installed / "VERSION").read_text().strip() == DEFAULT_VERSION
    assert unit.state()["unit-status"]["status"] in ("maintenance", "blocked", "waiting", "active")
    log = (unit.work / "juju-log.txt").read_text()
    assert "install" in log  # ops logs each event it emits through juju-log

    check(unit.dispatch("hooks/start"))
    health = http_get(unit, "/health")
    assert health is not None, "the demo service does not answer after start"
    assert health["version"] == DEFAULT_VERSION
    state = unit.state()
    assert state["unit-status"]["status"] == "active", state["unit-status"]
    assert DEFAULT_VERSION in state["unit-status"]["message"]
    assert state["app-status"]["status"] == "active", state["app-status"]
    assert state["workload-version"] == DEFAULT_VERSION

    unit.update_state(**{"unit-status": {"status": "unknown", "message": ""}})
    check(unit.dispatch("hooks/update-status"))
    assert unit.state()["unit-status"]["status"] == "active"
    assert http_get(unit, "/health") == health  # update-status does not restart the service


@pytest.mark.parametrize("engine", ENGINES)
def test_restart_action_restarts_through_the_engine(unit, engine):
    install_and_start(unit)
    before = http_get(unit, "/health")
    assert before is not None

    run = unit.run_action("restart", {"engine": engine, "delay": 0})
    check(run)
    action = unit.state()["action"]
    assert action["failed"] is None, f"restart failed: {action['failed']}\n{run.output}"
    assert action["results"].get("engine") == engine, action["results"]

    # The restart itself runs when the engine grants the lock: in this dispatch or in a wake-up
    # dispatched through juju-exec once the action's hook has ended.
    entries = wait_for(
        lambda: [
            e for e in journal(unit) if e["operation"] == "restart" and e["engine"] == engine
        ],
        timeout=90,
        what=f"a journal entry of a {engine} restart",
    )
    assert len(entries) == 1, entries
    assert entries[0]["unit"] == UNIT
    assert entries[0]["result"] == "ok", entries[0]
    after = http_get(unit, "/health")
    assert after is not None and after["pid"] != before["pid"], (before, after)

    with unit.hook_lock():  # the wake-ups queued behind the action have run by now
        pass
    check(unit.dispatch("hooks/update-status"))
    assert unit.state()["unit-status"]["status"] == "active", unit.state()["unit-status"]
    assert len([e for e in journal(unit) if e["engine"] == engine]) == 1  # no second restart


def test_a_packaging_mistake_fails_the_hook(unit):
    """The smoke test can fail: the same charm without lib/ cannot import its libraries."""
    for path in sorted((unit.charm_dir / "lib").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    run = unit.dispatch("hooks/install")
    assert run.returncode != 0
    assert "ModuleNotFoundError" in run.output
