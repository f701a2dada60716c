"""Upgrades of the demo charm: `juju refresh` and the `upgrade` action, one unit at a time.

Both paths run on the same machinery, `charms.data_platform_libs.v0.upgrade`:

- `juju refresh` (the charm itself): `juju run coordinated-ops/leader pre-upgrade-check` builds the
  upgrade stack, then `juju refresh coordinated-ops`; every unit runs upgrade-charm and reports
  `ready`; the top of the stack upgrades its workload, checks it, and the next unit follows.
- `juju run coordinated-ops/leader upgrade version=1.1.0` (the workload only, no new charm): the
  action does on the leader what pre-upgrade-check does (`prepare_upgrade()`: checks, then writes
  the stack) and also writes the app key `workload-rollout` = `{"round", "target", "previous",
  "done"}` in the `upgrade` peer relation. Each unit that sees a new round reports `ready`
  (`set_unit_ready()`), exactly as upgrade-charm would after a refresh; from there the library's
  stack decides who upgrades next. A workload rollout is therefore a refresh without a new charm.

The library decides the order and when a unit's turn comes (`_on_upgrade_granted`, the unit is
then `upgrading`); the step itself waits for the charm's one lock (`restart.OperationLock`,
charmlibs.rollingops): it is queued there as the operation `upgrade`, behind any restart or
remount already queued, and runs in a later hook (`_run_step`). Meanwhile the unit stays
`upgrading`, so the library gives no other unit its turn. The step stops the service, installs
the target, starts it, and checks that `/health` answers and `/version` reports the target; only
then does the unit report `completed`; otherwise it reports `failed`, which halts the rollout.
Rolling back is a second `upgrade` to the previous version while the rollout is halted: the
leader prepares the recovery stack (the failed unit first) and the same one-at-a-time rollout
runs back.

Which workload versions exist: `WORKLOAD_RELEASES`, each with the Poetry constraint the installed
version must satisfy to move to it (the same rule as `upgrade_supported` in DEPENDENCIES).

Most hooks run this module's observers and import neither pydantic nor poetry-core: the dependency
model is built on first use (`dependencies`), `workload-rollout` is parsed in plain Python
(`Rollout`), and only the `upgrade` action and the library's version checks import the rest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, cast

import ops
from charms.data_platform_libs.v0.upgrade import (
    ClusterNotReadyError,
    DataUpgrade,
    UpgradeError,
    UpgradeGrantedEvent,
    verify_requirements,
)

import journal
import restart
import workload

if TYPE_CHECKING:
    from charms.data_platform_libs.v0.upgrade import DependencyModel

    from models import DemoDependencies

logger = logging.getLogger(__name__)

RELATION = "upgrade"
ROLLOUT_KEY = "workload-rollout"
CHARM_VERSION = "1"
LOCK_OPERATION = "upgrade"  # the step's callback id on the one lock

# Installable workload versions -> the constraint the installed version must satisfy.
WORKLOAD_RELEASES: dict[str, str] = {
    "1.0.0": "^1",  # any 1.x may go (back) to 1.0.0
    "1.1.0": "^1",
    "1.2.0": "^1.1",  # 1.2 needs 1.1 first
    "2.0.0": "^1.2 || ^2",  # the major bump needs 1.2 first
}


class Dependency(TypedDict):
    """One entry of DEPENDENCIES: the fields of the library's DependencyModel."""

    dependencies: dict[str, str]
    name: str
    upgrade_supported: str
    version: str


DEPENDENCIES: dict[str, Dependency] = {
    "demo_charm": {
        "dependencies": {},
        "name": "coordinated-ops",
        "upgrade_supported": ">=1",
        "version": CHARM_VERSION,
    },
    "demo_workload": {
        "dependencies": {},
        "name": "coordinated-ops-demo-service",
        "upgrade_supported": WORKLOAD_RELEASES[workload.DEFAULT_VERSION],
        "version": workload.DEFAULT_VERSION,
    },
}

HEALTH_CHECK_ATTEMPTS = 3
HEALTH_CHECK_WAIT = 1.0  # seconds between attempts (start() already returns once ready)


def dependencies() -> DemoDependencies:
    """DEPENDENCIES as the library's model, unvalidated: a constant the unit tests validate.

    DemoUpgrade passes this function, not its result, to DataUpgrade, which calls it when it
    first needs the model: most hooks never do, so they import no pydantic for it.
    """
    from charms.data_platform_libs.v0.upgrade import DependencyModel

    from models import DemoDependencies

    return DemoDependencies.model_construct(
        demo_charm=DependencyModel.model_construct(**DEPENDENCIES["demo_charm"]),
        demo_workload=DependencyModel.model_construct(**DEPENDENCIES["demo_workload"]),
    )


def release(version: str) -> DependencyModel:
    """The workload release `version` as a DependencyModel (KeyError if not in the catalogue)."""
    from charms.data_platform_libs.v0.upgrade import DependencyModel

    return DependencyModel(
        dependencies={},
        name=DEPENDENCIES["demo_workload"]["name"],
        upgrade_supported=WORKLOAD_RELEASES[version],
        version=version,
    )


@dataclasses.dataclass(frozen=True)
class Rollout:
    """The app key `workload-rollout`: the current (or last) workload rollout.

    Plain Python, not pydantic: every hook reads it (tests/unit/test_lazy_imports.py).
    """

    round: int
    target: str
    previous: str
    done: bool

    def __post_init__(self):
        for name, kind in (("round", int), ("target", str), ("previous", str), ("done", bool)):
            value = getattr(self, name)
            if type(value) is not kind:  # `is`: True is not a round number
                raise ValueError(f"{name} must be {kind.__name__}, not {value!r}")
        if self.round < 1:
            raise ValueError(f"round must be at least 1, not {self.round}")

    @classmethod
    def from_json(cls, raw: str) -> Rollout:
        """Parse the key's value (other keys are ignored); ValueError says what is wrong."""
        try:
            data = json.loads(raw)
        except RecursionError:  # the leader wrote it, but no hook raises on another unit's data
            raise ValueError("nested too deep") from None
        if not isinstance(data, dict):
            raise ValueError(f"not a JSON object: {raw[:40]!r}")
        data = cast("dict[str, Any]", data)  # a JSON object's keys are strings
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return cls(**{name: data[name] for name in names})


class UpgradeCheckFailed(Exception):
    """The service did not come back healthy at the target version."""


class DemoUpgrade(DataUpgrade):
    """The demo's DataUpgrade: the workload upgrade step and the `upgrade` action.

    `restart_busy()` says why no upgrade may start (a restart is in flight on a lock other than
    the one lock), else None; `journal_dirs()` lists the extra directories of the operation
    journal; each unit's step runs under `lock`.
    """

    name = "upgrade"
    _demo = ops.StoredState()

    def __init__(
        self,
        charm: ops.CharmBase,
        *,
        restart_busy: Callable[[], str | None],
        journal_dirs: Callable[[], Sequence[pathlib.Path]],
        lock: restart.OperationLock,
    ):
        super().__init__(charm, dependencies, RELATION, "vm")  # the model, built on first use
        self._restart_busy = restart_busy
        self._journal_dirs = journal_dirs
        self._lock = lock
        lock.register(LOCK_OPERATION, self._run_step)
        self._demo.set_default(handled_round=0, worked_round=0, failure="")
        rel = charm.on[RELATION]
        # After the library's own observers: the library reconciles first.
        self.framework.observe(rel.relation_changed, self._on_rollout_signal)
        self.framework.observe(charm.on.update_status, self._on_rollout_signal)
        self.framework.observe(charm.on.leader_elected, self._on_rollout_signal)
        self.framework.observe(charm.on.upgrade_action, self._on_upgrade_action)

    # --- what the charm asks of it -----------------------------------------------------------

    def in_flight(self) -> bool:
        """Whether an upgrade is prepared, running or halted after a failure."""
        return self.in_progress()

    def ongoing(self) -> str | None:
        """The upgrade in flight in one line (`describe`), or None when there is none."""
        return self.describe() if self.in_flight() else None

    def describe(self) -> str:
        """One line for messages: what the upgrade is doing."""
        rollout = self.rollout()
        states = self.unit_states
        done = sum(1 for s in states if s == "completed")
        what = f"to {rollout.target}" if rollout and not rollout.done else "charm refresh"
        if "failed" in states or "recovery" in states:
            return f"upgrade {what} halted after a failure"
        return f"upgrade {what}: {done}/{len(states)} units done"

    def unit_status(self) -> ops.StatusBase | None:
        """This unit's status as far as upgrades are concerned (for collect-status).

        A quiet unit (no rollout as of the last reconcile) reads nothing: it has no status here.
        """
        if self.quiet or self.peer_relation is None:
            return None
        self._check_app_data()
        if self.data_errors:
            return ops.BlockedStatus(f"upgrade relation: {self.data_errors[0]}"[:120])
        state = self.state
        if state == "failed":
            return ops.BlockedStatus(self._demo.failure or self._library_cause())
        if state == "recovery":
            return ops.BlockedStatus("ready to rollback application")
        if state == "upgrading":
            if self._lock.queued(LOCK_OPERATION):
                return None  # its turn came; the step waits for the lock, whose status says so
            return ops.MaintenanceStatus("upgrading...")
        if state == "completed":
            return ops.MaintenanceStatus("upgrade completed")
        if state == "ready":
            return ops.WaitingStatus("other units upgrading first...")
        if self._stored.refresh_pending and not self.upgrade_stack:
            return ops.BlockedStatus("run pre-upgrade-check on the leader to continue the upgrade")
        return None

    def app_status(self) -> ops.StatusBase | None:
        """The app status for the leader's collect-status: the rollback line or the progress."""
        if self.quiet or self.peer_relation is None or not self.in_flight():
            return None
        failed = sorted(u.name for u in self.app_units if self._state_of(u) == "failed")
        if failed:
            return ops.BlockedStatus(self._rollback_line(failed[0]))
        if self.state == "recovery":
            return ops.BlockedStatus("ready to rollback application")
        rollout = self.rollout()
        states = self.unit_states
        done = sum(1 for s in states if s == "completed")
        target = rollout.target if rollout and not rollout.done else "the new charm revision"
        return ops.MaintenanceStatus(f"upgrading to {target}: {done}/{len(states)} units done")

    # --- DataUpgrade overrides ---------------------------------------------------------------

    def pre_upgrade_check(self) -> None:
        """The service must be healthy here and no restart may be in flight."""
        busy = self._restart_busy()
        if busy:
            raise ClusterNotReadyError(busy, cause="restart in flight")
        if workload.health() is None:
            raise ClusterNotReadyError(
                f"the demo service on {self.charm.unit.name} is not healthy",
                cause="/health did not answer",
                resolution="run the restart action, then try again",
            )

    def build_upgrade_stack(self) -> list[int]:
        """The leader upgrades last (index 0); the others from the highest unit number down."""
        me = int(self.charm.unit.name.split("/")[1])
        others = sorted(int(u.name.split("/")[1]) for u in self.app_units if u != self.charm.unit)
        return [me, *others]

    def log_rollback_instructions(self) -> None:
        """Log how to roll back; the leader's app status shows the same line (app_status)."""
        failed = sorted(u.name for u in self.app_units if self._state_of(u) == "failed")
        logger.error(self._rollback_line(failed[0] if failed else self.charm.unit.name))

    def _rollback_line(self, failed_unit: str) -> str:
        rollout = self.rollout()
        if rollout is not None and not rollout.done:
            return (
                f"upgrade failed on {failed_unit}: roll back with "
                f"'juju run {self.charm.app.name}/leader upgrade version={rollout.previous}'"
            )
        return (
            f"upgrade failed on {failed_unit}: run pre-upgrade-check, "
            "then juju refresh --revision <previous>"
        )

    def set_unit_failed(self, cause: str | None = None) -> None:
        """Remember our cause for the unit status, then let the library record the failure.

        The library calls this without a cause (the original's signature) for failures it finds
        itself (an incompatible version or dependency); it then shows the cause as a Blocked
        status, which `_library_cause` picks up.
        """
        self._demo.failure = cause or ""
        super().set_unit_failed(cause)

    def _library_cause(self) -> str:
        """The cause the library put in this unit's Blocked status, else a generic line."""
        status = self.charm.unit.status
        if isinstance(status, ops.BlockedStatus) and status.message:
            return status.message
        return "upgrade failed"

    def _on_upgrade_granted(self, event: UpgradeGrantedEvent) -> None:
        """This unit's turn: queue the step on the one lock (once; it runs in `_run_step`).

        The library emits the grant at every reconcile while this unit is `upgrading` and on
        top: only the first queues. If the lock cannot take it yet (no peer relation), the next
        reconcile tries again.
        """
        if self._lock.queued(LOCK_OPERATION):
            return
        try:
            self._lock.queue(LOCK_OPERATION)
        except restart.EngineNotReady as error:
            logger.warning("upgrade step not queued yet: %s", error)

    def _run_step(self) -> None:
        """Under the one lock: stop, install, start, check; then completed or failed.

        The step runs only if it is still this unit's turn (the library's grant rule: this unit
        `upgrading` on top of the stack, the rollout not halted); otherwise it is dropped.
        """
        stack = self.upgrade_stack
        me = int(self.charm.unit.name.split("/")[1])
        if (
            self.state != "upgrading"
            or not stack
            or stack[-1] != me
            or self.cluster_state in ("failed", "recovery")
        ):
            logger.warning("upgrade step no longer due (state %s): dropped", self.state)
            return
        target = self.target_version()
        rollout = self.rollout()
        self._demo.worked_round = rollout.round if rollout and not rollout.done else 0
        try:
            self._upgrade_workload(target)
        except (workload.WorkloadError, UpgradeCheckFailed) as error:
            logger.error("upgrade to %s failed on %s: %s", target, self.charm.unit.name, error)
            self.set_unit_failed(f"health check failed after upgrade to {target}")
            return
        self._demo.failure = ""
        version = workload.get_version()
        if version:
            self.charm.unit.set_workload_version(version)
        self.set_unit_completed()

    # --- the workload step -------------------------------------------------------------------

    def target_version(self) -> str:
        """What this unit upgrades to: the running rollout's target, else the bundled version.

        After a finished rollout the refresh path keeps the operator's chosen version.
        """
        rollout = self.rollout()
        if rollout is not None:
            return rollout.target
        return workload.DEFAULT_VERSION

    def _upgrade_workload(self, target: str) -> None:
        unit = self.charm.unit.name
        token, backend = self._lock.grant()
        with journal.operation(
            unit, "upgrade", engine="rollingops", token=token, dirs=list(self._journal_dirs())
        ) as entry:
            entry["backend"] = backend
            entry["from"] = workload.get_version()
            entry["version"] = target
            logger.info("upgrading the demo service on %s to %s", unit, target)
            workload.stop()
            workload.install(target)
            workload.start()
            check_upgraded(target)

    # --- the workload rollout ----------------------------------------------------------------

    def rollout(self) -> Rollout | None:
        """The `workload-rollout` app key, or None when absent or malformed (logged)."""
        relation = self.peer_relation
        raw = relation.data[self.charm.app].get(ROLLOUT_KEY) if relation else None
        if not raw:
            return None
        try:
            return Rollout.from_json(raw)
        except ValueError as error:
            self._data_error(f"invalid {ROLLOUT_KEY} data: {error}")
            return None

    def _check_app_data(self) -> None:
        """Parse the app keys this charm reads; malformed ones go to `data_errors` (status)."""
        self.upgrade_stack  # noqa: B018  (reading it records malformed data)
        relation = self.peer_relation
        raw = relation.data[self.charm.app].get("dependencies") if relation else None
        if raw and raw != json.dumps(DEPENDENCIES):  # our own constant is valid (unit tests)
            self.stored_dependencies  # noqa: B018  (validates: imports pydantic and poetry-core)
        self.rollout()

    def _on_rollout_signal(self, event: ops.EventBase) -> None:
        # A new round arrives as relation-changed; update-status looks again only while the
        # library saw a rollout in flight (the leader then marks the round done).
        if isinstance(event, ops.UpdateStatusEvent) and self.quiet:
            return
        if self.peer_relation is None:
            return
        self._follow_rollout()
        # The library remembered "quiet" from the keys it knows; malformed keys of this charm
        # (rollout, dependencies) must be shown, so they make the unit not quiet either.
        self._check_app_data()
        self._remember()

    def _follow_rollout(self) -> None:
        """Join a new round; on the leader, mark a finished round done."""
        rollout = self.rollout()
        if rollout is None:
            return
        if rollout.round > self._demo.handled_round:
            self._demo.handled_round = rollout.round
            # Already part of this round (e.g. it upgraded in this very hook)? Then stay put;
            # a unit `completed` or `failed` in an EARLIER round joins the new one.
            joined = self.state in ("ready", "upgrading") or (
                self.state in ("completed", "failed") and self._demo.worked_round == rollout.round
            )
            if not rollout.done and not joined:
                self.set_unit_ready()
        # The rollout is over once its stack is empty and every unit is idle again.
        if (
            self.charm.unit.is_leader()
            and not rollout.done
            and self.idle
            and not self.upgrade_stack
        ):
            self._write_rollout(dataclasses.replace(rollout, done=True))

    def _write_rollout(self, rollout: Rollout) -> None:
        relation = self.peer_relation
        if relation is not None:
            relation.data[self.charm.app][ROLLOUT_KEY] = json.dumps(dataclasses.asdict(rollout))

    def _on_upgrade_action(self, event: ops.ActionEvent) -> None:
        try:
            target, rollback = self._check_upgrade_request(event.params)
        except UpgradeRefused as error:
            event.fail(str(error))
            return
        try:
            stack = self.prepare_upgrade()
        except UpgradeError as error:
            event.fail(error.message)
            return
        current = self.rollout()
        installed = workload.get_version() or workload.DEFAULT_VERSION
        previous = current.target if current and not current.done else installed
        number = current.round + 1 if current else 1
        self._write_rollout(Rollout(round=number, target=target, previous=previous, done=False))
        self._demo.handled_round = number
        self.set_unit_ready()
        order = ", ".join(f"{self.charm.app.name}/{n}" for n in reversed(stack))
        verb = "rollback" if rollback else "upgrade"
        event.set_results(
            {
                "target-version": target,
                "previous-version": previous,
                "upgrade-stack": json.dumps(stack),
                "message": f"{verb} to {target} started; order {order}",
            }
        )

    def _check_upgrade_request(self, params: dict[str, Any]) -> tuple[str, bool]:
        """Validate an `upgrade` request; return (target, is_rollback) or raise UpgradeRefused."""
        import pydantic  # here, not at the top: only actions validate with pydantic

        from models import UpgradeParams

        try:
            target = UpgradeParams(**params).version.strip()
        except pydantic.ValidationError as error:
            raise UpgradeRefused(f"invalid parameters: {error.errors()[0]['msg']}") from None
        if not self.charm.unit.is_leader():
            raise UpgradeRefused("upgrade must run on the leader unit")
        if self.peer_relation is None:
            raise UpgradeRefused("the upgrade peer relation is not ready yet; try again shortly")
        busy = self._restart_busy()
        if busy:
            raise UpgradeRefused(busy)
        from poetry.core.constraints.version import Version  # the action only, not every hook

        try:
            Version.parse(target)
        except ValueError:
            raise UpgradeRefused(
                f"invalid version {_echo(target)}: not a version number"
            ) from None
        if target not in WORKLOAD_RELEASES:
            known = ", ".join(WORKLOAD_RELEASES)
            raise UpgradeRefused(
                f"unknown workload version {_echo(target)[1:-1]}; available: {known}"
            )
        cluster = self.cluster_state
        if cluster in ("failed", "recovery"):
            return target, True
        if not self.idle:
            raise UpgradeRefused(f"an upgrade is already in progress ({self.describe()})")
        installed = workload.get_version() or workload.DEFAULT_VERSION
        constraint = release(target).upgrade_supported
        if not _satisfies(installed, constraint):
            raise UpgradeRefused(
                f"cannot upgrade from {installed} to {target} (requires {constraint})"
            )
        return target, False


class UpgradeRefused(Exception):
    """The `upgrade` action cannot start; the message says why."""


def _echo(value: str, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters: a failure message never echoes a huge input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 4]}...'"


def _satisfies(version: str, constraint: str) -> bool:
    try:
        return verify_requirements(version, constraint)
    except ValueError:
        return False


def check_upgraded(target: str) -> None:
    """Raise UpgradeCheckFailed unless /health answers and /version reports `target`.

    A few attempts, because a service may answer a moment after it reported ready.
    """
    import tenacity  # only an upgrading unit checks; most hooks never load it

    for attempt in tenacity.Retrying(
        stop=tenacity.stop_after_attempt(HEALTH_CHECK_ATTEMPTS),
        wait=tenacity.wait_fixed(HEALTH_CHECK_WAIT),
        retry=tenacity.retry_if_exception_type(UpgradeCheckFailed),
        reraise=True,
    ):
        with attempt:
            if workload.health() is None:
                raise UpgradeCheckFailed("/health does not answer")
            served = workload.served_version()
            if served != target:
                raise UpgradeCheckFailed(f"/version reports {served}, expected {target}")
