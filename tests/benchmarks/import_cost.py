"""Cold-import cost of charmlibs.rollingops against a bare `import ops` (target: ratio <= 1.3).

Each sample is a fresh interpreter (`python -X importtime` is not used: it adds its own cost), so
the figures include interpreter start-up, as a hook dispatch pays it. Prints one JSON line last:
  {"ops_ms": ..., "rollingops_ms": ..., "ratio": ..., "heavy_modules_loaded": [...]}
`heavy_modules_loaded` lists etcd-only or heavy modules that the import pulled in (should be []).
Run: PYTHONPATH=lib python -m tests.benchmarks.import_cost --json [--samples 15]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
HEAVY = [
    "cryptography",
    "grpc",
    "pydantic",
    "requests",
    "etcd3gw",
    "urllib3",
    "charmlibs.rollingops._certs",
]


def _once(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    return (time.perf_counter() - start) * 1000


def sample(runs: int) -> tuple[list[float], list[float]]:
    """Alternate the two imports so that load from other processes hits both alike."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    ops_times, lib_times = [], []
    for _ in range(runs):
        ops_times.append(_once("import ops", env))
        lib_times.append(_once("import charmlibs.rollingops", env))
    return ops_times, lib_times


def main() -> None:
    parser = argparse.ArgumentParser(description="Cold import of charmlibs.rollingops vs ops.")
    parser.add_argument("--json", action="store_true", help="end with the JSON line (always on)")
    parser.add_argument("--samples", type=int, default=15)
    runs = parser.parse_args().samples
    ops_times, lib_times = sample(runs)
    ops_ms, lib_ms = statistics.median(ops_times), statistics.median(lib_times)
    probe = (
        "import sys, json, charmlibs.rollingops; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "lib")}
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", probe], check=True, env=env, capture_output=True, text=True
        ).stdout
    )
    print(
        json.dumps(
            {
                "samples": runs,
                "ops_ms": round(ops_ms, 1),
                "rollingops_ms": round(lib_ms, 1),
                "ratio": round(lib_ms / ops_ms, 3),
                "ops_min_ms": round(min(ops_times), 1),
                "rollingops_min_ms": round(min(lib_times), 1),
                "ratio_of_minima": round(min(lib_times) / min(ops_times), 3),
                "target_ratio": 1.3,
                "heavy_modules_loaded": loaded,
            }
        )
    )


if __name__ == "__main__":
    main()
