"""The etcd worker never dies unmarked (issue 16): it marks itself failed and falls back.

The worker runs in this process (``Worker.run``) with a stand-in ``juju-exec`` that records the
dispatches it is asked for; the fault is injected where a real one was found (building the lock
from a bad local config) or anywhere in a turn (a bug). Real-process versions with a real etcd are
in tests/functional/test_rollingops_worker.py.
"""

from __future__ import annotations

import pathlib

import pytest
from charmlibs.rollingops import _files, _worker


@pytest.fixture
def unit(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
    base, charm = tmp_path / "base", tmp_path / "charm"
    charm.mkdir()
    calls = tmp_path / "juju-exec-calls"
    juju_exec = tmp_path / "juju-exec"
    juju_exec.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    juju_exec.chmod(0o755)
    _files.write_config(
        base,
        endpoints=["127.0.0.1:2379"],
        prefix="/p/",
        owner="m.app-0",
        server_ca_pem="not used",
        cert_pem="not used",
        key_pem="not used",
    )
    with _files.queue_lock(base):
        _files.write_work(base, 1, 1)
    return {"base": base, "charm": charm, "calls": calls, "juju_exec": juju_exec}


def run_worker(unit: dict[str, pathlib.Path]) -> int:
    worker = _worker.Worker(
        str(unit["base"]), "app/0", str(unit["charm"]), juju_exec=str(unit["juju_exec"])
    )
    return worker.run()


def assert_failed_and_fell_back(unit: dict[str, pathlib.Path]) -> None:
    status = _files.read_worker_status(unit["base"])
    assert status is not None and status.failed
    calls = unit["calls"].read_text().splitlines()
    assert len(calls) == 1 and f"hooks/{_worker.ETCD_FAILED_EVENT}" in calls[0]
    assert not _files.worker_alive(unit["base"])


def test_endpoint_without_a_port_marks_failed_and_falls_back(unit):
    config_file = _files.etcd_dir(unit["base"]) / _files.CONFIG_FILE
    config_file.write_text(config_file.read_text().replace("127.0.0.1:2379", "127.0.0.1"))
    assert run_worker(unit) == 1
    assert_failed_and_fell_back(unit)


def test_any_unexpected_exception_marks_failed_and_falls_back(unit, monkeypatch):
    def surprise(self: _worker.Worker) -> bool:
        raise KeyError("a bug")

    monkeypatch.setattr(_worker.Worker, "_step", surprise)
    assert run_worker(unit) == 1
    assert_failed_and_fell_back(unit)
