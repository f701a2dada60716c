"""jujusim: N units of a real charm class under Juju's event rules, on logical time.

Juju's truth (applications, units, relations and their data bags, secrets, leadership) lives in
the simulator; each unit runs the real charm class through ops.testing (Scenario) against its own
view of that truth, and the simulator commits what it wrote and queues the hooks Juju would queue.
A scheduler decides which unit runs next, so one test can try many interleavings (seeds).
The rules it implements are written in docs/juju-rules.md; see README.md here for an example.
`check_charm` (check.py) checks a lock or rolling operation in your charm on N units, with the
ready-made grant checks of `grants` for each lock library of this project.
"""

from . import grants
from .accounting import account
from .check import FAULTS, Report, Schedule, check_charm
from .invariants import Interval, Recorder
from .protocols import Actor, Listener, Scheduler
from .queues import ActionRecord, Item
from .runner import CharmSpec, SimulatorBug
from .scheduler import RoundRobin, SeededRandom, drain
from .script import format_script, replay
from .simulator import ActionRejected, DrainLimit, InjectedFault, Running, Simulator
from .truth import Bags, app_of, unit_id

__all__ = [
    "FAULTS",
    "ActionRecord",
    "ActionRejected",
    "Actor",
    "Bags",
    "CharmSpec",
    "DrainLimit",
    "InjectedFault",
    "Interval",
    "Item",
    "Listener",
    "Recorder",
    "Report",
    "RoundRobin",
    "Running",
    "Schedule",
    "Scheduler",
    "SeededRandom",
    "Simulator",
    "SimulatorBug",
    "account",
    "app_of",
    "check_charm",
    "drain",
    "format_script",
    "grants",
    "replay",
    "unit_id",
]
