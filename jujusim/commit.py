"""Commit: a run's output becomes the truth, and Juju's notifications are routed."""

from __future__ import annotations

from typing import Any

from ops import testing

from .queues import ACTION, CUSTOM, HOOK
from .records import Running, Writable
from .truth import RelationTruth, Secret, app_of
from .views import UnitViews


class Commits(UnitViews):
    """Applies what a run wrote (or its failure) when it ends, and queues who must hear of it."""

    def _commit(self, run: Running) -> None:
        self._committing = run.seq
        try:
            self._commit_run(run)
        finally:
            self._committing = 0

    def _commit_run(self, run: Running) -> None:
        unit, item, result = run.unit, run.item, run.result
        truth = self.units[unit]
        assert result is not None
        if truth.removed:
            self._finish(run, ok=False, why="unit gone")
            return
        if result.state is None:
            self._fail(run, result.error or "failed")
            return
        out = result.state
        assert run.before is not None
        writes = self._diff(run.before, out)
        is_leader = self.apps[truth.app].leader == unit
        app_writes = any(app_changes for _, _, app_changes in writes)
        if not is_leader and (app_writes or self._secrets_changed(run.before, out)):
            # rule: leadership may move mid-hook: app data (and app secrets) are refused then
            self._fail(run, "ModelError: leadership lost before the hook ended (leadership moved)")
            return
        # stored state, deferrals, statuses: the unit's own (a hook that did not fail)
        truth.stored_states = out.stored_states
        truth.deferred = list(out.deferred)
        truth.unit_status = out.unit_status
        truth.workload_version = out.workload_version
        truth.error = None
        if is_leader:
            self.apps[truth.app].app_status = out.app_status
        if item.seen_version is not None:
            truth.seen[(item.relation or 0, item.writer or "")] = item.seen_version
        self._commit_relations(run, writes)
        self._commit_secrets(run, out)
        self._commit_juju_exec(run)
        if item.action is not None:
            item.action.status = "failed" if result.action_failed else "completed"
            item.action.message = result.action_failed or ""
            item.action.results = result.results
            item.action.logs = result.logs
        self._lifecycle_after(run)
        self._finish(run, ok=True, why="")

    def _finish(self, run: Running, ok: bool, why: str) -> None:
        status = "ok" if ok else f"FAILED ({why})"
        self.log(f"commit {run.unit} {run.item.label()} {status}")
        run.ok = ok
        if run.item.on_done is not None:
            run.item.on_done(ok)
        run.before = run.result = None
        for listener in self.listeners:
            listener.on_commit(self._whole(), run, ok)

    def _fail(self, run: Running, error: str) -> None:
        """A failed run commits nothing; a failed hook puts its unit in error.

        Rules: hook failure and retry; statuses.
        """
        unit, item = run.unit, run.item
        truth = self.units[unit]
        injected = "InjectedFault" in error or run.fault is not None
        if not injected and "leadership lost" not in error:
            self.errors.append(f"t={self.now} {unit} {item.label()}: {error}")
        if self.orphan_worker:
            self._commit_juju_exec(run)
        if item.kind == ACTION:
            assert item.action is not None
            item.action.status = "failed"
            item.action.message = error
        elif item.kind == HOOK:
            truth.error = f'hook failed: "{item.event.replace("_", "-")}"'
            item.attempts += 1
            backoff = min(
                2 ** (item.attempts - 1), 32
            )  # 1, 2, 4 ... ticks, capped (rule: hook failure and retry)
            delay = backoff if self.retry == "backoff" else 0
            item.not_before = self.now + delay
            self.queues[unit].push_front([item])
        self._finish(run, ok=False, why=error)

    def _diff(
        self, before: Writable, after: testing.State
    ) -> list[tuple[int, dict[str, str | None], dict[str, str | None]]]:
        """Per relation: (id, unit-bag changes, app-bag changes), key level (None deletes)."""
        out = []
        for rel_out in after.relations:
            if rel_out.id not in before.bags:
                continue
            unit_before, app_before = before.bags[rel_out.id]
            unit_changes = _changes(unit_before, rel_out.local_unit_data)
            app_changes = _changes(app_before, rel_out.local_app_data)
            if unit_changes or app_changes:
                out.append((rel_out.id, unit_changes, app_changes))
        return out

    def _commit_relations(self, run: Running, writes: list) -> None:
        unit = run.unit
        truth = self.units[unit]
        for rel_id, unit_changes, app_changes in writes:
            run.wrote = True
            rel = self.relations.get(rel_id)
            if rel is None or unit not in rel.unit_bags:
                self.log(f"drop writes of {unit} to relation {rel_id}: relation gone")
                continue
            # rule: departing unit's data: writes of what a departing unit was given after its
            # removal began (its own departure hooks) are not published; what was in flight or
            # already queued (an action, a custom event) still runs in scope and publishes.
            if truth.departing and run.item.seq > truth.departing_seq:
                self.log(f"drop writes of departing {unit} to relation {rel_id} (departing)")
                continue
            if unit_changes and rel.unit_bags[unit].apply(unit_changes):
                for other, known in sorted(rel.known.items()):
                    if other != unit and unit in known and not self.units[other].departing:
                        self._notify(other, rel, remote=unit)
            app = truth.app
            if app_changes and rel.app_bags[app].apply(app_changes):
                for other in self._app_observers(rel, unit):
                    self._notify(other, rel, writer_app=app)

    def _app_observers(self, rel: RelationTruth, writer: str) -> list[str]:
        """Who hears of a leader's app-bag write.

        Rules: leader's app-bag writes; cross-application relations.
        """
        app = app_of(writer)
        if not rel.is_peer:
            remote = rel.other_app(app)
            return [u for u in self.members(remote) if u in rel.attached]
        others = [u for u in self.members(app) if u != writer and u in rel.attached]
        if self.leader_sees_own_app_writes and others:
            if rel.views.get(writer):
                others.append(writer)
            else:
                self.dropped.append(f"t={self.now} {writer} self app-changed (no peer in view)")
        elif self.leader_sees_own_app_writes:
            self.dropped.append(
                f"t={self.now} {writer} self app-changed (Scenario gap: no remote)"
            )
        return others

    def _notify(
        self, observer: str, rel: RelationTruth, *, remote: str = "", writer_app: str = ""
    ) -> None:
        """Queue a relation_changed unless one is pending for the same writer.

        Rule: coalescing.
        """
        writer = f"app:{writer_app}" if writer_app else remote
        pending = self.queues[observer].pending_changed(rel.id, writer)
        if pending is not None:
            pending.parent = self._committing  # it will read this latest write (coalesced)
            return
        self.enqueue(
            observer, "relation_changed", relation=rel.id, remote=remote or None,
            app_level=bool(writer_app), writer_app=writer_app or None, cause=f"write by {writer}",
        )  # fmt: skip

    def _secrets_changed(self, before: Writable, after: testing.State) -> bool:
        old = {id_: latest for id_, (latest, _) in before.secrets.items()}
        return any(
            old.get(s.id) != s.latest_content or _grants(s) != before.grants.get(s.id, {})
            for s in after.secrets
            if s.owner == "app"
        )

    def _commit_secrets(self, run: Running, out: testing.State) -> None:
        unit = run.unit
        assert run.before is not None
        before = run.before.secrets
        for sec in out.secrets:
            known = self.secrets.get(sec.id)
            if known is None:
                self.secrets[sec.id] = Secret(
                    sec.id, app_of(unit), [dict(sec.latest_content)], label=sec.label,
                    tracked={unit: 1},
                    grants={rid: set(apps) for rid, apps in sec.remote_grants.items()},
                )  # fmt: skip
                continue
            if (
                sec.owner == "app"
                # the grants this run added or revoked (a leader's run; rule: leadership may move
                # mid-hook)
            ):
                old, new = run.before.grants.get(sec.id, {}), _grants(sec)
                for rid in old.keys() | new.keys():
                    added = new.get(rid, frozenset()) - old.get(rid, frozenset())
                    revoked = old.get(rid, frozenset()) - new.get(rid, frozenset())
                    known.grants.setdefault(rid, set()).update(added)
                    known.grants[rid].difference_update(revoked)
            old_latest, old_tracked = before.get(sec.id, (None, None))
            if old_latest is not None and dict(sec.latest_content) != old_latest:
                known.revisions.append(dict(sec.latest_content))
                for other, rev in sorted(known.tracked.items()):
                    if app_of(other) != known.owner_app and rev < known.latest:
                        self.enqueue(other, "secret_changed", cause=f"secret {sec.id}")
            if old_tracked is not None and dict(sec.tracked_content) != old_tracked:
                known.tracked[unit] = known.latest
            if sec.owner == "app" and sec.label and sec.label != known.label:
                known.label = sec.label

    def _commit_juju_exec(self, run: Running) -> None:
        """Recorded juju-exec requests become custom events queued at this commit.

        Rule: custom events through juju-exec.
        """
        for target, event, env in run.juju_exec:
            if target not in self.units or self.units[target].removed:
                continue
            delay = self.custom_delay.get(event, 0)
            item = self.enqueue(
                target, event, kind=CUSTOM, env=env, cause=f"juju-exec by {run.unit}"
            )
            item.not_before = self.now + delay
        run.juju_exec.clear()

    def _lifecycle_after(self, run: Running) -> None:
        unit, item = run.unit, run.item
        rel = self.relations.get(item.relation) if item.relation is not None else None
        if item.event == "relation_departed" and rel is not None and item.remote:
            rel.views.get(unit, set()).discard(item.remote)
            self._collect_garbage()
        if item.event == "relation_broken" and rel is not None:
            rel.broken.add(unit)
            rel.views.pop(unit, None)
            if rel.attached <= rel.broken | {u for u in rel.attached if self.units[u].removed}:
                del self.relations[rel.id]
        truth = self.units[unit]
        departure = ("relation_departed", "relation_broken")
        last_departure_hook = (
            truth.departing
            and rel is not None
            and item.event in departure
            and not any(
                i.relation == rel.id and i.event in departure for i in self.queues[unit].items
            )
        )
        if last_departure_hook:
            assert rel is not None
            self._leave_scope(unit, rel)
        if item.event == "remove":
            truth.removed = True
            for rel in self._relations_of(unit):  # a scope it had not left yet (idempotent)
                self._leave_scope(unit, rel)
            self._resign_leadership(unit)
            self._collect_garbage()


def _changes(before: Any, after: Any) -> dict[str, str | None]:
    changes: dict[str, str | None] = {k: v for k, v in after.items() if before.get(k) != v}
    changes.update({k: None for k in before if k not in after})
    return changes


def _grants(secret: testing.Secret) -> dict[int, frozenset[str]]:
    return {rid: frozenset(apps) for rid, apps in secret.remote_grants.items()}
