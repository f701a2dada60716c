"""The charm's pydantic models: the actions' parameters and the upgrade's dependency model.

Import this module inside the function that validates (an action handler, the upgrade's version
check), never at the top of a module: importing pydantic costs about half of importing ops, and
most hooks validate nothing (tests/unit/test_lazy_imports.py, tests/benchmarks/dispatch.py).
"""

from __future__ import annotations

import pydantic
from charms.data_platform_libs.v0.upgrade import BaseModel, DependencyModel
from charms.storage_libs.v0.nfs_interfaces import MAX_SIZE_GB

import nfs_request


class RestartParams(pydantic.BaseModel):
    """The `restart` action's parameters (Juju validates them too; we never trust that alone)."""

    # defer_build: built when first validated, not when this module is imported.
    model_config = pydantic.ConfigDict(extra="forbid", defer_build=True)

    delay: int = pydantic.Field(default=0, ge=0, le=3600)
    engine: str
    sync: bool = False  # restart inside the action under the engine's sync lock (rollingops)


class NfsMountParams(pydantic.BaseModel):
    """The `nfs-mount` action's parameters: the fields and rules of nfs_request.ShareRequest."""

    model_config = pydantic.ConfigDict(extra="forbid", defer_build=True)

    name: str
    size: int | None = pydantic.Field(default=None, ge=1, le=MAX_SIZE_GB)
    mountpoint: str = nfs_request.DEFAULT_MOUNTPOINT

    @pydantic.field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        return nfs_request.check_name(name)

    @pydantic.field_validator("mountpoint")
    @classmethod
    def _check_mountpoint(cls, path: str) -> str:
        return nfs_request.normalise_mountpoint(path)


class UpgradeParams(pydantic.BaseModel):
    """The `upgrade` action's parameters."""

    model_config = pydantic.ConfigDict(extra="forbid", defer_build=True)

    version: str


class DemoDependencies(BaseModel):
    """The versioned components of this charm (upgrade.DEPENDENCIES as a model)."""

    model_config = pydantic.ConfigDict(defer_build=True)

    demo_charm: DependencyModel
    demo_workload: DependencyModel


def explain(error: pydantic.ValidationError) -> str:
    """One clause per bad parameter, naming it: 'delay: Input should be greater than ...'."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'params'}: {problem['msg']}"
        for problem in error.errors()
    )
