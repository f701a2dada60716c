"""jujusim: N units of a real charm class under Juju's event rules, on logical time.

Juju's truth (applications, units, relations and their data bags, secrets, leadership) lives in
the simulator; each unit runs the real charm class through ops.testing (Scenario) against its own
view of that truth, and the simulator commits what it wrote and queues the hooks Juju would queue.
A scheduler decides which unit runs next, so one test can try many interleavings (seeds).
The rules it implements are written in docs/juju-rules.md; see README.md here for an example.
"""

from .accounting import account
from .invariants import Interval, Recorder
from .protocols import Actor, Listener, Scheduler
from .queues import ActionRecord, Item
from .runner import CharmSpec, SimulatorBug
from .scheduler import RoundRobin, SeededRandom, drain
from .script import format_script, replay
from .simulator import ActionRejected, DrainLimit, InjectedFault, Running, Simulator
from .truth import Bags, app_of, unit_id

__all__ = [
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
    "RoundRobin",
    "Running",
    "Scheduler",
    "SeededRandom",
    "Simulator",
    "SimulatorBug",
    "account",
    "app_of",
    "drain",
    "format_script",
    "replay",
    "unit_id",
]
