"""Shared pytest setup: make lib/ and src/ importable as the packed charm would."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "lib", ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
