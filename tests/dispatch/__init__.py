"""Run the charm's real `dispatch` without Juju: the packed layout plus stub hook tools.

`charmdir.py` assembles the charm directory as `charmcraft pack` would and drives it as a unit
agent would; `hooktool.py` is the stub hook tools' program. Used by
tests/functional/test_dispatch_smoke.py and tests/benchmarks/dispatch.py.
"""
