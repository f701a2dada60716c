"""R9: per-call latency of the etcd client, measured on a real mTLS etcd on 127.0.0.1.

    python -m tests.benchmarks.etcd_client --json [--calls 300]

Measures the library's own client (``charmlibs.rollingops._etcd_client``, kept-alive HTTPS
connection) for each call the lock makes: get, put, txn (the acquire transaction), lease
keep-alive, and a watch round trip (put by one client, event seen by another watching one).
For the record of docs/adr/0001-etcd-client.md it also measures, when available, the
alternatives: etcd3gw with an injected ``requests.Session`` (``trust_env=False``, our CA and
certificate), and ``etcdctl`` (one process per call), plus the cold-import cost of each client.
The last line is JSON; times are milliseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from tests.benchmarks import _setup  # noqa: F401  (puts lib/ on sys.path)
from tests.functional.etcd_server import EtcdServer, find_etcd


def timed(fn: Callable[[], object], calls: int) -> dict[str, float]:
    """Run ``fn`` ``calls`` times (after 5 warm-up calls); return p50/p90/max in ms."""
    for _ in range(5):
        fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p90_ms": round(samples[int(len(samples) * 0.9) - 1], 3),
        "max_ms": round(samples[-1], 3),
    }


def import_ms(module: str, runs: int = 5) -> float:
    """Median extra wall time of ``python -c 'import <module>'`` over a bare interpreter."""

    def once(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})
        return time.perf_counter() - start

    base = statistics.median(once("pass") for _ in range(runs))
    return round(
        (statistics.median(once(f"import {module}") for _ in range(runs)) - base) * 1000, 1
    )


def bench_ours(server: EtcdServer, calls: int) -> dict:
    from charmlibs.rollingops._etcd_client import compare_create, op_put, op_range, prefix_end

    client = server.client()
    watcher = server.client()
    prefix = "/bench/ours/"
    client.put(prefix + "k", "v")
    lease = client.lease_grant(60)
    lock, waiting = prefix + "lock", prefix + "waiting/"

    def acquire_txn() -> None:  # the acquire transaction's shape (it fails: lock is held)
        client.txn(
            [
                compare_create(lock, "EQUAL", 0),
                compare_create(waiting, "LESS", 1, prefix_end(waiting)),
            ],
            [op_put(lock, "me", lease)],
            [op_range(lock), op_range(waiting + "me")],
        )

    client.put(lock, "held")
    revision = [client.range(prefix).revision]

    def watch_round_trip() -> None:
        with watcher.watch(prefix + "w", start_revision=revision[0] + 1) as watch:
            got = threading.Event()

            def consume() -> None:
                watch.next(10)
                got.set()

            reader = threading.Thread(target=consume)
            reader.start()
            revision[0] = client.put(prefix + "w", "x")
            reader.join(10)
            assert got.is_set()

    result = {
        "get": timed(lambda: client.get(prefix + "k"), calls),
        "put": timed(lambda: client.put(prefix + "k", "v"), calls),
        "txn": timed(acquire_txn, calls),
        "lease_keepalive": timed(lambda: client.lease_keepalive(lease), calls),
        "watch_put_to_event": timed(watch_round_trip, max(20, calls // 10)),
    }
    client.lease_revoke(lease)
    return result


def bench_etcd3gw(server: EtcdServer, calls: int) -> dict | str:
    try:
        import etcd3gw  # pyright: ignore[reportMissingImports]  # optional comparison
        import requests
    except ImportError as e:
        return f"not installed: {e}"
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE must not replace our CA
    session.verify = server.server_ca
    session.cert = (server.client_cert, server.client_key)
    host, port = server.endpoint.split(":")
    client = etcd3gw.client(host=host, port=int(port), protocol="https", session=session)
    client.put("/bench/gw/k", "v")
    return {
        "get": timed(lambda: client.get("/bench/gw/k"), calls),
        "put": timed(lambda: client.put("/bench/gw/k", "v"), calls),
    }


def bench_etcdctl(server: EtcdServer, calls: int) -> dict | str:
    etcdctl = shutil.which("etcdctl") or (
        "/usr/bin/etcdctl" if os.access("/usr/bin/etcdctl", os.X_OK) else None
    )
    if etcdctl is None:
        return "not installed"
    argv = [
        etcdctl,
        f"--endpoints=https://{server.endpoint}",
        f"--cacert={server.server_ca}",
        f"--cert={server.client_cert}",
        f"--key={server.client_key}",
    ]
    env = {**os.environ, "ETCDCTL_API": "3"}
    subprocess.run([*argv, "put", "/bench/ctl/k", "v"], check=True, env=env, capture_output=True)
    return {
        "get": timed(
            lambda: subprocess.run(
                [*argv, "get", "/bench/ctl/k"], check=True, env=env, capture_output=True
            ),
            max(10, calls // 10),
        )
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="etcd client per-call latency (R9)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    if find_etcd() is None:
        print(json.dumps({"benchmark": "etcd_client", "skipped": "no etcd binary found"}))
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="etcd-client-") as tmp,
        EtcdServer(pathlib.Path(tmp)) as server,
    ):
        result = {
            "benchmark": "etcd_client",
            "client": "charmlibs.rollingops._etcd_client (in-house, http.client + ssl)",
            "calls": args.calls,
            "ours": bench_ours(server, args.calls),
            "etcd3gw_with_session": bench_etcd3gw(server, args.calls),
            "etcdctl_process_per_call": bench_etcdctl(server, args.calls),
        }
    result["cold_import_ms"] = {
        "charmlibs.rollingops._etcd_client (deps: http.client, ssl, json)": import_ms(
            "http.client, ssl, json, base64"
        ),
        "etcd3gw": import_ms("etcd3gw"),
        "requests": import_ms("requests"),
    }
    if not args.json:
        for name, figures in result["ours"].items():
            print(f"ours {name}: {figures}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
