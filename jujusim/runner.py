"""Run one item on one unit through ops.testing (Scenario) and hand back what it produced.

The simulator builds the input `State` from its truth; this module runs it and reports the outcome:
the output state (success, or an action that called `fail()`), or the uncaught error (rules: a
failed hook discards its writes; an uncaught error has no output).

Speed: Scenario writes the charm's metadata to a fresh temporary directory and parses it again on
every run. The simulator runs thousands of hooks per schedule, so while a run is in progress we
swap in a cached charm root per Context and a cached `CharmMeta` (`fast_scenario`), memoise the
observer signature check of `Framework.observe`, keep ops from resetting the root logger to
DEBUG on every run, and skip Scenario's deepcopy of the input State (a tenth of a demo-charm hook):
the simulator builds a fresh State for every run, never reuses it, and keeps its own copy of the
data it diffs the output against (simulator.Writable). Nothing else is changed: Scenario's
consistency checks stay on, so an inconsistent State fails loudly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import inspect
import logging
import os
import pathlib
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from typing import Any

import ops
import yaml
from ops import testing
from scenario import _ops_main_mock, _runtime  # speed patch only, see fast_scenario
from scenario.errors import NoObserverError, UncaughtCharmError
from scenario.state import _Event

from .queues import ACTION, CUSTOM, Item

# Scenario warns that it cannot check custom (juju-exec) events; expected here.
logging.getLogger("ops-scenario.runtime.consistency_checker").setLevel(logging.ERROR)


class SimulatorBug(Exception):
    """The simulator produced something Juju never would (e.g. a State Scenario rejects)."""


@dataclasses.dataclass(frozen=True, eq=False)
class CharmSpec:
    """A charm class and its metadata, actions and config, loaded once."""

    charm_cls: type[ops.CharmBase]
    meta: dict[str, Any]
    actions: dict[str, Any]
    config: dict[str, Any]

    @classmethod
    def from_dir(cls, charm_cls: type[ops.CharmBase], root: str | pathlib.Path) -> CharmSpec:
        """Load metadata.yaml/actions.yaml/config.yaml (or a unified charmcraft.yaml) from root."""
        return _load_spec(charm_cls, str(root))

    @property
    def name(self) -> str:
        """The charm's name from its metadata."""
        return self.meta["name"]

    def peer_endpoints(self) -> dict[str, str]:
        """Peer endpoint -> interface."""
        return {ep: spec["interface"] for ep, spec in (self.meta.get("peers") or {}).items()}

    def endpoint_interface(self, endpoint: str) -> str:
        """The interface of `endpoint` (peers, requires or provides)."""
        for section in ("peers", "requires", "provides"):
            if endpoint in (self.meta.get(section) or {}):
                return self.meta[section][endpoint]["interface"]
        raise SimulatorBug(f"endpoint {endpoint!r} is not in {self.name}'s metadata")

    def config_defaults(self) -> dict[str, Any]:
        """Config option -> default, for the options that have one."""
        options = (self.config or {}).get("options", {})
        return {k: v["default"] for k, v in options.items() if "default" in v}


@functools.cache
def _load_spec(charm_cls: type[ops.CharmBase], root: str) -> CharmSpec:
    path = pathlib.Path(root)
    unified = path / "charmcraft.yaml"
    if (path / "metadata.yaml").exists():
        meta = yaml.safe_load((path / "metadata.yaml").read_text())
        actions = _maybe_yaml(path / "actions.yaml")
        config = _maybe_yaml(path / "config.yaml")
    else:
        meta = yaml.safe_load(unified.read_text())
        actions = meta.pop("actions", {}) or {}
        config = meta.pop("config", {}) or {}
    return CharmSpec(charm_cls, meta, actions, config)


def _maybe_yaml(path: pathlib.Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}


# --- Scenario speed patch -------------------------------------------------------------------

_ROOTS: dict[int, str] = {}  # id(charm spec) -> its root dir, while the spec lives
_METAS: dict[str, ops.CharmMeta] = {}
_original_load_meta = _ops_main_mock.Ops._load_charm_meta


def _forget_root(key: int, root: str) -> None:
    """The spec is gone: drop its cached root and metadata and delete the directory."""
    _ROOTS.pop(key, None)
    _METAS.pop(root, None)
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _cached_charm_root(self: Any) -> Iterator[pathlib.Path]:
    spec = self._charm_spec
    root = _ROOTS.get(id(spec))
    if root is None:
        root = tempfile.mkdtemp(prefix="sim-charm-")
        for name, content in (("metadata", spec.meta), ("config", spec.config or {})):
            pathlib.Path(root, f"{name}.yaml").write_text(yaml.safe_dump(content))
        pathlib.Path(root, "actions.yaml").write_text(yaml.safe_dump(spec.actions or {}))
        _ROOTS[id(spec)] = root
        weakref.finalize(spec, _forget_root, id(spec), root)
    yield pathlib.Path(root)


def _cached_load_meta(self: Any) -> ops.CharmMeta:
    key = str(self._charm_root)
    meta = _METAS.get(key)
    if meta is None:
        meta = _METAS[key] = _original_load_meta(self)
    return meta


class _CachedInspect:
    """`inspect` for ops.framework, with `signature` memoised per function.

    `Framework.observe` checks every observer's signature on every run; a charm with ~80
    observers spends a third of its hook there. The signature of a bound method depends only on
    its function, so it is computed once.
    """

    def __init__(self) -> None:
        self._signatures: dict[Any, inspect.Signature] = {}

    def signature(self, obj: Any, follow_wrapped: bool = True) -> inspect.Signature:
        key = (getattr(obj, "__func__", obj), hasattr(obj, "__self__"), follow_wrapped)
        sig = self._signatures.get(key)
        if sig is None:
            sig = self._signatures[key] = inspect.signature(obj, follow_wrapped=follow_wrapped)
        return sig

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)


_INSPECT = _CachedInspect()


def _keep_logging(self: Any) -> None:
    """Leave the process's logging alone: ops would set the root logger to DEBUG on every run."""


_original_event_env = _runtime.Runtime._get_event_env


def _event_env_with_true_departing_unit(
    self: Any, state: Any, event: Any, charm_root: pathlib.Path
) -> dict[str, str]:
    """Set JUJU_DEPARTING_UNIT to the departing unit the simulator knows.

    Scenario 8.9 takes a unit id, reads id 0 as "unset" (and then names the remote unit), and
    always puts the id in the remote application.
    """
    env = _original_event_env(self, state, event, charm_root)
    if Live.departing is not None and event.name.endswith("_relation_departed"):
        env["JUJU_DEPARTING_UNIT"] = Live.departing
    return env


class _RunOnTheInputState:
    """Stands in for the `copy` module in Scenario's runtime: the input State is run on as is.

    Only for States nobody reads after the run except through a copy taken beforehand, which is
    how the simulator uses them (see the module docstring).
    """

    @staticmethod
    def deepcopy(state: Any) -> Any:
        return state


@contextlib.contextmanager
def fast_scenario() -> Iterator[None]:
    """Cache the charm root and parsed metadata per Context for the duration of a run."""
    ops_cls = _ops_main_mock.Ops
    saved = _runtime.Runtime._virtual_charm_root, ops_cls._load_charm_meta
    saved_logging = ops_cls._setup_root_logging
    _runtime.Runtime._virtual_charm_root = _cached_charm_root  # type: ignore[method-assign]
    _runtime.Runtime._get_event_env = _event_env_with_true_departing_unit  # type: ignore[method-assign]
    ops_cls._load_charm_meta = _cached_load_meta  # type: ignore[method-assign]
    ops_cls._setup_root_logging = _keep_logging  # type: ignore[method-assign]
    ops.framework.inspect = _INSPECT  # type: ignore[attr-defined]
    _runtime.copy = _RunOnTheInputState  # type: ignore[attr-defined]
    try:
        yield
    finally:
        _runtime.copy = copy  # type: ignore[attr-defined]
        ops.framework.inspect = inspect  # type: ignore[attr-defined]
        _runtime.Runtime._virtual_charm_root, ops_cls._load_charm_meta = saved
        _runtime.Runtime._get_event_env = _original_event_env  # type: ignore[method-assign]
        ops_cls._setup_root_logging = saved_logging  # type: ignore[method-assign]


def make_context(spec: CharmSpec, app: str, unit: int) -> testing.Context:
    """One Context per unit, reused for every item the unit runs."""
    return testing.Context(
        spec.charm_cls,
        meta=spec.meta,
        actions=spec.actions,
        config=spec.config,
        app_name=app,
        unit_id=unit,
    )


# --- one run ----------------------------------------------------------------------------------


@dataclasses.dataclass
class RunResult:
    """What one run produced."""

    state: testing.State | None  # output state; None when the run failed (nothing commits)
    # an uncaught exception: the hook fails and nothing commits (rule: a failed hook discards its
    # writes); event.fail()'s message: the action failed but its writes still commit
    error: str | None = None
    action_failed: str | None = None
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    logs: list[str] = dataclasses.field(default_factory=list)
    ignored: bool = False  # a custom event the charm does not define (ops logs and ignores it)


class Live:
    """The run in progress: lets patched workload/journal functions see the unit's live view."""

    manager: Any = None
    departing: str | None = None  # the departing unit of the relation-departed being run

    @classmethod
    def state(cls) -> testing.State | None:
        """The running hook's State as mutated so far (its snapshot plus its own writes)."""
        ops_ = getattr(cls.manager, "ops", None)
        return ops_.state if ops_ is not None else None


def build_event(ctx: testing.Context, item: Item, relation: Any, remote_id: int | None) -> Any:
    """The Scenario event for one queued item."""
    if item.kind == ACTION:
        assert item.action is not None
        return ctx.on.action(item.event, params=item.action.params, id=item.action.id)
    if item.kind == CUSTOM:
        return _Event(item.event)  # dispatched as JUJU_DISPATCH_PATH=hooks/<event>, like juju-exec
    if relation is None:
        return getattr(ctx.on, item.event)()
    if item.event in ("relation_created", "relation_broken"):
        return getattr(ctx.on, item.event)(relation)
    if item.event == "relation_departed":
        departing = int(item.departing.rsplit("/", 1)[1]) if item.departing else None
        return ctx.on.relation_departed(relation, remote_unit=remote_id, departing_unit=departing)
    return getattr(ctx.on, item.event)(relation, remote_unit=remote_id)


def run(
    ctx: testing.Context,
    event: Any,
    state: testing.State,
    env: dict[str, str] | None = None,
    departing: str | None = None,
) -> RunResult:
    """Run `event` on the unit of `ctx`; classify the outcome (success, failed action, error)."""
    saved_env = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    Live.departing = departing
    try:
        with fast_scenario():
            manager = ctx(event, state)
            Live.manager = manager
            with manager:
                out = manager.run()
        result = RunResult(state=out, results=dict(ctx.action_results or {}))
    except testing.errors.InconsistentScenarioError as error:
        raise SimulatorBug(f"Scenario rejected the State the simulator built: {error}") from error
    except NoObserverError:
        result = RunResult(state=state, ignored=True)
    except testing.ActionFailed as failure:
        result = RunResult(
            state=failure.state,  # type: ignore[arg-type]  # ops.testing's State at runtime
            action_failed=failure.message,
            results=dict(ctx.action_results or {}),
        )
    except UncaughtCharmError as error:
        cause = error.__cause__
        result = RunResult(
            state=None, error=f"{type(cause).__name__}: {cause}" if cause else str(error)
        )
    finally:
        Live.manager = None
        Live.departing = None
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    result.logs = list(ctx.action_logs)
    _reset_streams(ctx)
    forget_bound_events()
    return result


def forget_bound_events() -> None:
    """Let the objects of finished runs be freed; call after every run.

    ops binds an object's events (`charm.on`, `framework.on`, a library's `on`) through a class
    attribute that caches the bound events in a WeakKeyDictionary keyed by the object. The cached
    value refers back to its key, so no entry ever goes away. Juju runs one hook per process and
    never notices; the simulator runs thousands of hooks in one process, and every framework,
    charm and model they built stayed alive (about 8 MB per soak schedule at N=5, until the
    kernel killed the soak). Clearing the caches between runs is safe: the next run binds anew.
    """
    classes = [ops.Object]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        for value in vars(cls).values():
            if isinstance(value, ops.ObjectEvents):
                value._cache.clear()  # type: ignore[attr-defined]  # ops internals, see above


def _reset_streams(ctx: testing.Context) -> None:
    """Contexts are reused: drop per-run histories so memory stays flat over long soaks."""
    for stream in (
        ctx.juju_log,
        ctx.unit_status_history,
        ctx.app_status_history,
        ctx.workload_version_history,
        ctx.emitted_events,
        ctx.action_logs,
        ctx.removed_secret_revisions,
    ):
        stream.clear()
    ctx.exec_history.clear()
    ctx.requested_storages.clear()
