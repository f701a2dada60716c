"""Make ``lib/`` importable when a benchmark runs as ``python -m tests.benchmarks.<name>``."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "lib", ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
