"""Fixtures of the functional tests: a real etcd with mutual TLS (see etcd_server.py)."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator

import pytest

from tests.functional.etcd_server import EtcdServer, find_etcd


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd (mTLS, client-cert auth) per test module; skipped if no etcd binary."""
    if find_etcd() is None:
        pytest.skip("no etcd binary found (install etcd-server or set ETCD_BIN_DIR)")
    with EtcdServer(pathlib.Path(tmp_path_factory.mktemp("etcd"))) as server:
        yield server


@pytest.fixture
def etcd_prefix() -> str:
    """A fresh lock prefix ``P`` per test, so tests sharing one etcd never meet."""
    return f"/coordinated-ops/rollingops/v1/test-{uuid.uuid4().hex[:12]}/"
