"""Per-unit event queues: what each unit agent still has to run, in Juju's order.

Rules: queues and background actors; coalescing; per-relation order.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .truth import unit_id

HOOK, ACTION, CUSTOM = "hook", "action", "custom"

# Within one relation on one unit the uniter runs (rule: per-relation order): a changed owed after
# a joined, departed, broken, app-level changed, joined (sorted by unit), unit-level changed
# (sorted by unit).
_RELATION_PRIORITY = {
    "relation_created": -2,
    "relation_departed": 0,
    "relation_broken": 1,
    "relation_changed:app": 2,
    "relation_joined": 3,
    "relation_changed": 4,
}


@dataclasses.dataclass
class ActionRecord:
    """One action task: what `juju show-task` would report."""

    id: str
    unit: str
    name: str
    params: dict[str, Any]
    status: str = "pending"  # pending | completed | failed
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    logs: list[str] = dataclasses.field(default_factory=list)
    message: str = ""


@dataclasses.dataclass
class Item:
    """One queued hook, action or custom (juju-exec) event on one unit."""

    seq: int
    kind: str
    event: str  # ops event name ('install', 'relation_changed', ...), action or custom event name
    relation: int | None = None
    remote: str | None = None  # remote unit (unit-level relation events)
    app_level: bool = False  # a relation_changed about the remote application's bag
    writer_app: str | None = None  # the application whose app bag changed (app-level)
    departing: str | None = None
    action: ActionRecord | None = None
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # custom: env assignments
    not_before: int = 0
    cause: str = ""
    owed: bool = False  # a changed owed right after its joined ran (rule: per-relation order)
    attempts: int = 0
    new_charm: Any = None  # upgrade_charm during a refresh: the charm spec to swap in
    seen_version: int | None = None  # relation_changed: the bag version its snapshot read
    # custom: called with True/False at commit (juju-exec's exit code; rule: custom events through
    # juju-exec)
    on_done: Any = None
    parent: int = 0  # seq of the run whose commit (or 0: an operator call) queued it (accounting)

    @property
    def writer(self) -> str | None:
        """Coalescing key of a relation_changed: the writer unit, or 'app:<name>'.

        Rule: coalescing.
        """
        if self.event != "relation_changed":
            return None
        return f"app:{self.writer_app}" if self.app_level else self.remote

    def _priority(self) -> tuple:
        key = self.event + (":app" if self.app_level else "")
        prio = -1 if self.owed else _RELATION_PRIORITY.get(key, 5)
        who = unit_id(self.remote) if self.remote and not self.app_level else -1
        return (prio, who, self.seq)

    def label(self) -> str:
        """A short readable name: 'relation_changed(1, app/2)', 'action restart(delay=0)'."""
        if self.kind == ACTION and self.action is not None:
            args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.action.params.items()))
            return f"action {self.event}({args})"
        if self.kind == CUSTOM:
            env = " ".join(f"{k}={v}" for k, v in sorted(self.env.items()))
            return f"custom {self.event}" + (f" [{env}]" if env else "")
        if self.relation is None:
            return self.event
        parts = [str(self.relation)]
        if self.app_level:
            parts.append(f"app={self.writer_app}")
        elif self.remote:
            parts.append(self.remote)
        if self.departing and self.departing != self.remote:
            parts.append(f"departing={self.departing}")
        return f"{self.event}({', '.join(parts)})"


class UnitQueue:
    """A unit agent's FIFO, in Juju's order (rules: per-relation order; coalescing)."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def __len__(self) -> int:
        return len(self.items)

    def append(self, item: Item) -> Item:
        """Queue `item` last; return it."""
        self.items.append(item)
        return item

    def push_front(self, items: list[Item]) -> None:
        """Queue `items` first, in order (a retried hook, a refresh)."""
        self.items[:0] = items

    def pending_changed(self, relation: int, writer: str) -> Item | None:
        """The queued relation_changed for this (relation, writer), if any (coalescing key)."""
        for item in self.items:
            if item.relation == relation and item.writer == writer:
                return item
        return None

    def drop(self, predicate) -> list[Item]:
        """Remove and return the items matching `predicate`."""
        dropped = [i for i in self.items if predicate(i)]
        self.items = [i for i in self.items if not predicate(i)]
        return dropped

    def next_time(self) -> int | None:
        """The earliest not-before among queued items (None if empty)."""
        return min((i.not_before for i in self.items), default=None)

    def peek(self, now: int) -> Item | None:
        """The item the agent would run next at time `now`, without removing it."""
        ready = [i for i in self.items if i.not_before <= now]
        if not ready:
            return None
        head = ready[0]
        if head.relation is None or head.attempts:
            # a failed item is retried before anything else (rule: hook failure and retry)
            return head
        same = [i for i in ready if i.relation == head.relation and i.kind == HOOK]
        return min(same, key=Item._priority)

    def remove(self, item: Item) -> None:
        """Take `item` out of the queue (it starts, or is skipped)."""
        self.items.remove(item)
