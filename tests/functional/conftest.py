"""Fixtures of the functional tests: a real etcd set up as charmed-etcd does (etcd_server.py)."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Iterator

import pytest

from tests.functional.etcd_server import EtcdServer, find_etcd


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One real etcd (mTLS, common-name auth, RBAC) per test module; skipped without etcd."""
    if find_etcd() is None:
        pytest.skip("no etcd/etcdctl binary found (install etcd-server and etcd-client)")
    with EtcdServer(pathlib.Path(tmp_path_factory.mktemp("etcd"))) as server:
        yield server


@pytest.fixture
def etcd_prefix(etcd_server: EtcdServer) -> str:
    """A fresh lock prefix ``P`` per test, which our etcd user may read and write (only it)."""
    return etcd_server.allow(f"/coordinated-ops/rollingops/v1/test-{uuid.uuid4().hex[:12]}/")
