"""What one unit sees at the start of a run: its `testing.State` built from the truth."""

from __future__ import annotations

from ops import testing

from .core import SimulatorCore
from .queues import Item
from .truth import RelationTruth, Secret, app_of, unit_id

MODEL = testing.Model(name="sim", uuid="00000000-0000-4000-8000-000000000001")


class UnitViews(SimulatorCore):
    """Builds each unit's snapshot: relations it is in, secrets it may read, its own state."""

    def _build_state(self, unit: str, item: Item) -> testing.State:
        """The unit's snapshot of the truth at the item's start (rule: a unit's view)."""
        truth = self.units[unit]
        app = self.apps[truth.app]
        relations = []
        for rel in self.relations.values():
            if unit not in rel.attached or unit in rel.broken:
                continue
            relations.append(self._relation_state(rel, unit))
        secrets = [self._secret_state(s, unit) for s in self.secrets.values()]
        return testing.State(
            leader=app.leader == unit,
            config=dict(app.config),
            planned_units=len(self.members(app.name)),
            relations=relations,
            secrets=[s for s in secrets if s is not None],
            stored_states=truth.stored_states,
            deferred=list(truth.deferred),
            unit_status=truth.unit_status,
            app_status=app.app_status,
            workload_version=truth.workload_version,
            model=MODEL,
        )

    def _relation_state(
        self, rel: RelationTruth, unit: str
    ) -> testing.Relation | testing.PeerRelation:
        app = app_of(unit)
        endpoint = rel.endpoints[app]
        view = sorted(rel.views.get(unit, ()), key=unit_id)
        local_unit = dict(rel.unit_bags[unit].data)
        if rel.is_peer:
            return testing.PeerRelation(
                endpoint,
                interface=rel.interface,
                id=rel.id,
                local_app_data=dict(rel.app_bags[app].data),
                local_unit_data=local_unit,
                peers_data={unit_id(v): dict(rel.unit_bags[v].data) for v in view},
            )
        remote_app = rel.other_app(app)
        return testing.Relation(
            endpoint,
            interface=rel.interface,
            id=rel.id,
            remote_app_name=remote_app,
            local_app_data=dict(rel.app_bags[app].data),
            local_unit_data=local_unit,
            remote_app_data=dict(rel.app_bags[remote_app].data),
            remote_units_data={unit_id(v): dict(rel.unit_bags[v].data) for v in view},
        )

    def _secret_state(self, secret: Secret, unit: str) -> testing.Secret | None:
        """The secret as `unit` sees it: its owner's units always, others only through a grant.

        A grant is to one relation instance (rule: secrets): it lasts while the relation exists and
        the unit is in it (attached, relation-broken not yet run), so a re-created relation needs
        its own grant.
        """
        owner = "app" if app_of(unit) == secret.owner_app else None
        if owner is None and not self._granted(secret, unit):
            return None
        tracked = secret.tracked.setdefault(unit, secret.latest)
        return testing.Secret(
            dict(secret.revisions[tracked - 1]),
            latest_content=dict(secret.revisions[-1]),
            id=secret.id,
            owner=owner,
            label=secret.label if owner else None,
            remote_grants={rid: set(apps) for rid, apps in secret.grants.items()} if owner else {},
        )

    def _granted(self, secret: Secret, unit: str) -> bool:
        for rel_id, apps in secret.grants.items():
            rel = self.relations.get(rel_id)
            if rel is None or app_of(unit) not in apps:
                continue
            if unit in rel.attached and unit not in rel.broken:
                return True
        return False
