"""The README's example charm: a greeting the leader publishes and every unit shows.

The leader writes the configured greeting in the peer application bag; every unit shows the
greeting it sees in its status (waiting until there is one).
"""

from __future__ import annotations

import pathlib

import ops

CHARM_DIR = pathlib.Path(__file__).with_name("greeter")


class GreeterCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        framework.observe(self.on.config_changed, self._publish)
        framework.observe(self.on.leader_elected, self._publish)
        framework.observe(self.on.peers_relation_changed, self._show)

    def _publish(self, event: ops.EventBase) -> None:
        relation = self.model.get_relation("peers")
        if self.unit.is_leader() and relation is not None:
            relation.data[self.app]["greeting"] = str(self.config["greeting"])
        self._show(event)

    def _show(self, event: ops.EventBase) -> None:
        relation = self.model.get_relation("peers")
        greeting = relation.data[self.app].get("greeting") if relation is not None else None
        if greeting:
            self.unit.status = ops.ActiveStatus(greeting)
        else:
            self.unit.status = ops.WaitingStatus("no greeting yet")
