"""Per-call latency of the etcd client on a real etcd set up like charmed-etcd (127.0.0.1).

    python -m tests.benchmarks.etcd_client --json [--calls 300]

etcd has authentication on and knows us only as our certificate's common name (see
tests/functional/etcd_server.py). Measures the library's own client
(``charmlibs.rollingops._etcd_client``: gRPC through grpcio, one kept-alive channel) for each call
the lock makes: get, put, txn (the acquire transaction), lease keep-alive, and a watch round trip
(put by one client, event seen by another watching one). For docs/adr/0002-etcd-grpc-transport.md
it also measures the other candidate, ``etcdctl`` (one process per call: get, put, txn), records
what the JSON gateway of ADR 0001 answers now, and the cold-import cost of each piece.
The last line is JSON; times are milliseconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pathlib
import shutil
import ssl
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


def etcdctl_argv(server: EtcdServer) -> list[str] | None:
    """Return an etcdctl command line authenticated by our certificate alone (no user)."""
    etcdctl = shutil.which("etcdctl") or (
        "/usr/bin/etcdctl" if os.access("/usr/bin/etcdctl", os.X_OK) else None
    )
    if etcdctl is None:
        return None
    return [
        etcdctl,
        f"--endpoints=https://{server.endpoint}",
        f"--cacert={server.server_ca}",
        f"--cert={server.client_cert}",
        f"--key={server.client_key}",
    ]


def bench_etcdctl(server: EtcdServer, calls: int) -> dict | str:
    """Candidate (b): an etcdctl binary shipped in the charm, one process per call."""
    argv = etcdctl_argv(server)
    if argv is None:
        return "not installed"
    env = {**os.environ, "ETCDCTL_API": "3"}
    key = "/bench/ctl/k"

    def run(*args: str, stdin: str | None = None) -> None:
        subprocess.run([*argv, *args], check=True, env=env, capture_output=True, input=stdin,
                       text=True)  # fmt: skip

    run("put", key, "v")
    # The acquire transaction's shape (interactive txn syntax on stdin).
    txn = f'create("{key}") = "0"\n\nput {key} me\n\nget {key}\n\n'
    n = max(10, calls // 10)
    return {
        "get": timed(lambda: run("get", key), n),
        "put": timed(lambda: run("put", key, "v"), n),
        "txn": timed(lambda: run("txn", stdin=txn), n),
    }


def gateway_answer(server: EtcdServer) -> str:
    """What etcd's JSON gateway (the transport of ADR 0001) answers our certificate now."""
    context = ssl.create_default_context(cafile=server.server_ca)
    context.load_cert_chain(server.client_cert, server.client_key)
    host, port = server.endpoint.split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    conn.request("POST", "/v3/kv/range", '{"key": "L2JlbmNoLw=="}')
    response = conn.getresponse()
    text = response.read().decode().strip()
    conn.close()
    return f"HTTP {response.status}: {text}"


def main() -> int:
    parser = argparse.ArgumentParser(description="etcd client per-call latency")
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
        server.allow("/bench/")
        result = {
            "benchmark": "etcd_client",
            "etcd": "auth on, our user = our certificate's common name, RBAC on /bench/",
            "client": "charmlibs.rollingops._etcd_client (grpcio generic calls, own codec)",
            "calls": args.calls,
            "ours": bench_ours(server, args.calls),
            "etcdctl_process_per_call": bench_etcdctl(server, args.calls),
            "json_gateway": gateway_answer(server),
        }
    # The client module alone costs what the package costs (it imports no grpc until a client
    # is built); grpc is what the worker and the etcd-touching hooks pay on top.
    result["cold_import_ms"] = {
        name: import_ms(name)
        for name in ("ops", "charmlibs.rollingops", "charmlibs.rollingops._etcd_client", "grpc")
    }
    if not args.json:
        for name, figures in result["ours"].items():
            print(f"ours {name}: {figures}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
