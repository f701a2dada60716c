"""Juju 4 (juju/juju#23326): a unit removed while it holds the grant does not stall the roll.

On Juju 4 a removed unit stays in its peers' relation and nobody runs relation-departed for it
(docs/juju-rules.md, "Unit removal on Juju 4"), so a lock that frees a removed holder only on
relation-departed waits for it forever. Each engine restarts every unit; the first unit seen
holding the grant (other than the leader) is removed, gracefully or with its machine; the roll
must still serve every other unit, with no ghost holder. The same rolls on Juju 3.6 as a control.
(The upgrade engine has no per-unit grant to spot: its Juju 4 path is covered by the unit tests
and the soak, `--juju 4`.) On the libraries before the fix every Juju 4 case here fails.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from demo.engines import ENGINES, Engine
from jujusim.invariants import Recorder
from jujusim.scheduler import SeededRandom
from jujusim.simulator import Simulator
from jujusim.truth import Bags

from . import soak


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


class RemoveTheHolder:
    """A listener that removes the first non-leader unit seen holding the grant."""

    def __init__(self, engine: Engine, graceful: bool):
        self.engine, self.graceful, self.removed = engine, graceful, None

    def on_start(self, sim: Simulator, run: Any) -> None:
        pass

    def on_commit(self, sim: Simulator, run: Any, ok: bool) -> None:
        if self.removed is not None:
            return
        bags = Bags.from_truth(sim.relations, self.engine.app)
        for unit in sim.members(self.engine.app):
            if unit != sim.leader(self.engine.app) and self.engine.holds_grant(bags, unit):
                self.removed = unit
                sim.add_timer(sim.now, f"remove_unit {unit}", lambda u=unit: self._remove(sim, u))
                return

    def _remove(self, sim: Simulator, unit: str) -> None:
        sim.remove_unit(unit, graceful=self.graceful)


@pytest.mark.parametrize("juju", ["4", "3.6"])
@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "abrupt"])
@pytest.mark.parametrize("name", ["v0", "rollingops-peer", "coordinator", "coordinator-up-to-2"])
def test_a_removed_holder_does_not_stall_the_roll(name: str, graceful: bool, juju: str):
    engine = ENGINES[name]
    fakes = engine.fakes(Simulator())
    with fakes.installed():
        base = soak.settle(engine, 3, fakes, leader_sees_own_app_writes=True, juju=juju)
        sim = base.fork(1, retry="none")
        fakes.attach(sim)
        recorder = Recorder(sim, k=engine.k, holds_grant=engine.holds_grant)
        sim.actors.extend(engine.actors(sim))
        remover = RemoveTheHolder(engine, graceful)
        sim.listeners.append(remover)
        for unit in sim.members(engine.app):
            engine.request(sim, unit)
        soak.finish(sim, SeededRandom(), recorder, engine.app)
    assert remover.removed is not None, "no unit but the leader ever held the grant"
    assert recorder.violations + recorder.ghost_holders() == []
    assert recorder.liveness_failures() == []
    assert recorder.uncaught() == []
