"""charmlibs.rollingops keeps the public API of PyPI's charmlibs-rollingops 1.1.5.

The two packages share an import name, so they are never imported together: the reference is a
description of 1.1.5 made by tests/tools/rollingops_api.py in a virtualenv holding only the PyPI
package (tests/unit/data/charmlibs_rollingops_1_1_5_api.json; the tool's docstring says how to
make it again). The same tool describes ours here, and every difference between the two must be
one of ON_PURPOSE below, with its reason: a name or parameter lost, a default or an annotation
changed, or a new public name, fails until it is listed (or undone).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import charmlibs.rollingops
import pytest

from tests.tools import rollingops_api

REFERENCE = json.loads(rollingops_api.REFERENCE.read_text())

ON_PURPOSE = {
    # Additions: a charm written for 1.1.5 does not see them.
    "added name LockGrant": "the fencing token of the running op (lock_grant), a frozen dataclass",
    "added name RollingOpsLockGrantedEvent": "the event our etcd worker dispatches, exported",
    "added name RollingOpsEtcdFailedEvent": "the event our etcd worker dispatches, exported",
    "added name __version__": "1.1.5 has it too, outside __all__; ours lists it",
    "added name BusyUnits": "the answer of busy_units(): units, and why it cannot tell",
    "added RollingOpsManager.busy_units": "who has work queued or running, in both backends "
    "(on etcd one read of the lock and tickets; for actions)",
    "added name split_token": "(epoch, sequence) of a fencing token, which packs both in one int",
    "added RollingOpsManager.quiet": "whether the last reconcile saw nothing in flight (stored "
    "state, no relation read): statuses of idle units read nothing",
    "added RollingOpsManager.lock_grant": "the grant (backend, token, op) a callback runs under",
    "added RollingOpsManager.peer_lock_free": "is the peer lock free (the demo's status)",
    "added RollingOpsManager.__init__(max_parallel)": "up to k units inside at once (default 1, "
    "as 1.1.5 behaves)",
    "added RollingOpsManager.__init__(halt_after_failures)": "pause the roll after that many "
    "failed operations (default None: never, as 1.1.5)",
    "added RollingOpsManager.pause": "operator control: no new grant until resume",
    "added RollingOpsManager.resume": "operator control: grant again after pause or a halt",
    "added RollingOpsManager.rolling_status": "holders, queue, counts, paused (read-only)",
    "added RollingOpsManager.progress": "a short progress line for the app status",
    "added RollingOpsManager.paused_reason": "why the lock is paused, from the app databag "
    "and, on etcd, the worker's local status (for statuses)",
    "added name RollingStatus": "the answer of rolling_status()",
    "added name parse_window": "checks a maintenance window (for a charm's config check)",
    "added RollingOpsManager.__init__(maintenance_window)": "grants only inside a daily UTC "
    "window (default None: always)",
    "added name RollingOpsControlError": "pause/resume refused (non-leader, not paused...)",
    "added RollingOpsState.__init__(etcd_problem)": "why etcd was refused; has a default",
    "added RollingOpsState.__init__(malformed)": "peer data that was ignored; has a default",
    # Wider annotations: every argument 1.1.5 accepts is still accepted.
    "annotation RollingOpsManager.__init__(callback_targets)": "dict[str, Any] made precise: "
    "the values are callables",
    "annotation RollingOpsManager.__init__(base_dir)": "any path-like (str, Path, pathops "
    "LocalPath), not only charmlibs.pathops.LocalPath: we do not depend on charmlibs-pathops",
    "annotation RollingOpsManager.acquire_sync_lock(timeout)": "None waits without limit, "
    "as SyncLockBackend.acquire already allowed in 1.1.5",
    "returns RollingOpsManager.acquire_sync_lock": "annotated: a context manager yielding the "
    "etcd LockGrant (1.1.5 yielded None; `with` code is unaffected)",
}


def _parameters(description: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {parameter["name"]: parameter for parameter in description["parameters"]}


def _function_differences(where: str, ref: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    found = []
    ref_params, our_params = _parameters(ref), _parameters(ours)
    if [p for p in our_params if p in ref_params] != list(ref_params):
        found.append(f"order {where}")
    for name, parameter in ref_params.items():
        mine = our_params.get(name)
        if mine is None:
            found.append(f"removed {where}({name})")
            continue
        for field in ("kind", "default", "annotation"):
            if mine[field] != parameter[field]:
                found.append(f"{field} {where}({name})")
    for name, mine in our_params.items():
        if name not in ref_params:
            optional = mine["default"] is not None or mine["kind"] in (
                "VAR_POSITIONAL",
                "VAR_KEYWORD",
            )
            found.append(f"added {where}({name})" if optional else f"required {where}({name})")
    if ref["returns"] != ours["returns"]:
        found.append(f"returns {where}")
    return found


def _object_differences(name: str, ref: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    if ref["kind"] != ours["kind"]:
        return [f"kind {name}"]
    if ref["kind"] == "enum":
        same = ref["members"] == ours["members"] and ref["str"] == ours["str"]
        return [] if same else [f"members {name}"]
    if ref["kind"] not in ("class", "exception"):
        return _function_differences(name, ref, ours) if ref["kind"] == "function" else []
    found = [f"bases {name}"] if ref["bases"] != ours["bases"] else []
    for member, description in ref["members"].items():
        mine = ours["members"].get(member)
        if mine is None:
            found.append(f"removed {name}.{member}")
        elif mine["kind"] != description["kind"]:
            found.append(f"kind {name}.{member}")
        elif mine["kind"] == "function":
            found += _function_differences(f"{name}.{member}", description, mine)
    found += [f"added {name}.{m}" for m in ours["members"] if m not in ref["members"]]
    return found


def differences(ref: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    """Every way `ours` differs from `ref`, one short key each (the keys of ON_PURPOSE)."""
    found = [f"removed name {name}" for name in ref["names"] if name not in ours["names"]]
    found += [f"added name {name}" for name in ours["names"] if name not in ref["names"]]
    for name in ref["names"]:
        if name in ours["names"]:
            found += _object_differences(name, ref["objects"][name], ours["objects"][name])
    return sorted(found)


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    return rollingops_api.describe(charmlibs.rollingops)


def test_the_reference_describes_charmlibs_rollingops_1_1_5():
    assert REFERENCE["source"] == "PyPI charmlibs-rollingops==1.1.5"
    assert REFERENCE["version"] == "1.1.5"
    assert "RollingOpsManager" in REFERENCE["names"]


def test_every_difference_from_1_1_5_is_on_purpose(ours):
    found = differences(REFERENCE, ours)
    unexplained = [key for key in found if key not in ON_PURPOSE]
    stale = [key for key in ON_PURPOSE if key not in found]
    assert not unexplained, (
        f"differences from charmlibs-rollingops 1.1.5 to explain: {unexplained}"
    )
    assert not stale, f"listed in ON_PURPOSE but no longer differ (remove them): {stale}"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["names"].remove("RollingOpsNoRelationError"), "removed name"),
        (lambda d: _init(d)["parameters"].pop(), "removed RollingOpsManager.__init__(base_dir)"),
        (lambda d: _init(d)["parameters"][3].update(default="'x'"), "default"),
        (lambda d: _init(d)["parameters"].append(_param("new")), "required"),
        (lambda d: d["objects"]["OperationResult"]["members"].pop("RETRY_HOLD"), "members"),
        (lambda d: d["objects"]["RollingOpsError"].update(bases=["ValueError"]), "bases"),
        (lambda d: d["objects"]["RollingOpsManager"]["members"].pop("state"), "removed"),
    ],
)
def test_the_comparison_sees_a_broken_api(ours, change, expected):
    """Break a copy of our description the ways a refactoring could; each one is reported."""
    broken = copy.deepcopy(ours)
    change(broken)
    assert any(key.startswith(expected) for key in differences(REFERENCE, broken))


def _init(description: dict[str, Any]) -> dict[str, Any]:
    return description["objects"]["RollingOpsManager"]["members"]["__init__"]


def _param(name: str) -> dict[str, Any]:
    return {"name": name, "kind": "KEYWORD_ONLY", "default": None, "annotation": "int"}
