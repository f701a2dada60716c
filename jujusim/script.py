"""Schedules as readable scripts: print the steps a failing run took, and replay them.

Every public simulator call (operator operations, faults, `start`, the clock moving) is recorded in
`sim.steps` as (method, args, kwargs). `format_script` prints them as Python lines::

    sim.deploy('toy', <ToyCharm>, units=3)
    sim.request('toy/1', 'restart', 'restart', engine='v0')
    sim.start('toy/1')
    sim.advance()

and `replay` runs them again on a fresh simulator built with the same settings.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .runner import CharmSpec
from .simulator import Simulator

Step = tuple[str, tuple, dict]


def _arg(value: Any) -> str:
    if isinstance(value, CharmSpec):
        return f"<{value.charm_cls.__name__}>"
    return repr(value)


def format_step(step: Step) -> str:
    """One recorded call as a line of Python (the clock moving reads `advance()`)."""
    name, args, kwargs = step
    name = "advance" if name == "_advance_clock" else name
    parts = [_arg(a) for a in args] + [f"{k}={_arg(v)}" for k, v in kwargs.items()]
    return f"sim.{name}({', '.join(parts)})"


def format_script(steps: Iterable[Step]) -> str:
    """The steps as lines of Python, repeated lines folded (see `compress`)."""
    return "\n".join(compress(list(steps)))


def compress(steps: list[Step]) -> list[str]:
    """Readable and short: consecutive identical lines become one line with a repeat count."""
    out: list[str] = []
    last, count = None, 0
    for line in (format_step(s) for s in steps):
        if line == last:
            count += 1
            continue
        if last is not None:
            out.append(last + (f"  # x{count}" if count > 1 else ""))
        last, count = line, 1
    if last is not None:
        out.append(last + (f"  # x{count}" if count > 1 else ""))
    return out


def replay(sim: Simulator, steps: Iterable[Step]) -> Simulator:
    """Run recorded steps on `sim` (built with the same seed and switches as the original)."""
    for name, args, kwargs in steps:
        if name == "_advance_clock":
            sim.advance()
        else:
            getattr(sim, name)(*args, **kwargs)
    return sim
