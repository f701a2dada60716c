"""I6, fencing tokens: each holder's token is above those of every earlier holder (issue 22).

The invariant itself on hand-made histories, then whole rolls of the real charm in the simulator
where the rollingops lock changes backend or cluster mid-roll: an etcd outage (etcd -> peer) and
the etcd cluster replaced by a new one whose revisions restart from 1 (etcd -> peer -> new etcd).
Before the fix the outage roll showed etcd tokens 3, 9 then peer tokens 1, 2, 3.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from charmlibs.rollingops import split_token

from demo import rollingops_engines
from demo.engines import ENGINES
from jujusim.invariants import Interval, Recorder, token_order_violation
from jujusim.scheduler import SeededRandom
from jujusim.simulator import Simulator

from . import soak


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)  # the library logs every fallback: expected here
    yield
    logging.disable(logging.NOTSET)


def section(unit: str, start: int, end: int, token: object, op: str = "restart") -> Interval:
    return Interval(unit, op, start, hook=start, token=token, end=end, committed=True)


# --- the invariant on hand-made histories ---------------------------------------------------


def test_a_lower_token_after_an_ended_section_is_a_violation():
    earlier = [section("a/0", 0, 3, 9), section("a/1", 4, 6, 10)]
    later = section("a/2", 7, 9, 1)  # the peer counter restarting below the etcd revisions
    message = token_order_violation([*earlier, later], later)
    assert message is not None and message.startswith("I6") and "token 1" in message


def test_an_equal_token_of_another_unit_is_a_violation():
    first, second = section("a/0", 0, 3, 5), section("a/1", 4, 6, 5)
    assert token_order_violation([first, second], second) is not None


def test_increasing_tokens_overlaps_reruns_and_tokenless_sections_pass():
    history = [
        section("a/0", 0, 3, 4),
        section("a/0", 3, 5, 4),  # the same grant run again by its holder (a retried hook)
        section("a/1", 6, 8, 7),
        section("a/2", 7, 9, 5),  # below a/1's 7 but overlapping it: I1's business, not I6's
        section("a/3", 10, 11, None),  # an engine without tokens
        section("a/4", 12, 13, 3, op="upgrade"),  # another lock
        section("a/1", 14, 15, 8),
    ]
    assert [token_order_violation(history, s) for s in history] == [None] * len(history)


# --- whole rolls -----------------------------------------------------------------------------


class AfterSections:
    """A simulator listener that calls `arm(sim)` once `n` critical sections have committed."""

    def __init__(self, n: int, arm: Callable[[Simulator], None]):
        self.n, self.arm, self.done = n, arm, False

    def on_start(self, sim: Simulator, run: Any) -> None:
        pass

    def on_commit(self, sim: Simulator, run: Any, ok: bool) -> None:
        if self.done or sim.recorder is None:
            return
        if sum(1 for i in sim.recorder.intervals if i.committed) >= self.n:
            self.done = True
            self.arm(sim)


def roll(units: int, seed: int, fault: Callable[[Simulator], None]) -> Recorder:
    """Restart every unit of the rollingops-etcd deployment; `fault` strikes after 1 section."""
    engine = ENGINES["rollingops-etcd"]
    fakes = engine.fakes(Simulator())
    with fakes.installed():
        base = soak.settle(engine, units, fakes, leader_sees_own_app_writes=True)
        sim = base.fork(seed, retry="none")
        fakes.attach(sim)
        recorder = Recorder(
            sim, k=engine.k, holds_grant=engine.holds_grant, domains=engine.domains
        )
        sim.actors.extend(engine.actors(sim))
        sim.listeners.append(AfterSections(1, fault))
        for unit in sim.members(engine.app):
            engine.request(sim, unit)
        soak.finish(sim, SeededRandom(), recorder, engine.app)
    return recorder


def outage(sim: Simulator) -> None:
    ttl = rollingops_engines.LEASE_TTL_TICKS
    rollingops_engines.world_of(sim).outage(sim.now + 1, sim.now + 1 + 2 * ttl)
    sim.add_timer(
        sim.now + 3 * ttl + 2, "update_status", lambda: sim.update_status("coordinated-ops")
    )


def replace_cluster(sim: Simulator) -> None:
    old = rollingops_engines.etcd_relation(sim)
    rollingops_engines.replace_etcd_cluster(sim)
    sim.add_timer(sim.now + 4, "integrate", lambda: rollingops_engines.etcd_integrate(sim))
    unit = sim.members("coordinated-ops")[0]
    sim.add_timer(sim.now + 5, "again", lambda: rollingops_engines.request_on_etcd(sim, unit, old))


def committed_tokens(recorder: Recorder) -> list[tuple[int, int]]:
    """(epoch, sequence) of each committed section, in the order they started."""
    done = sorted((i for i in recorder.intervals if i.committed), key=lambda i: i.start)
    return [split_token(i.token) for i in done if isinstance(i.token, int)]


@pytest.mark.parametrize("seed", [1, 2])
def test_etcd_outage_mid_roll_keeps_tokens_increasing(seed):
    recorder = roll(3, seed, outage)

    tokens = committed_tokens(recorder)
    assert recorder.violations == [], tokens
    assert recorder.liveness_failures() == []
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    epochs = [epoch for epoch, _ in tokens]
    assert epochs[0] % 2 == 1 and max(epochs) > epochs[0], tokens  # etcd first, then peer


def test_etcd_cluster_replaced_mid_roll_keeps_tokens_increasing():
    recorder = roll(3, 4, replace_cluster)

    tokens = committed_tokens(recorder)
    assert recorder.violations == [], tokens
    assert recorder.liveness_failures() == []
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    epochs = [epoch for epoch, _ in tokens]
    assert len(tokens) == 4 and epochs[-1] >= epochs[0] + 2, tokens  # the new cluster served one
