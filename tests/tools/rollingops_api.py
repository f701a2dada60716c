"""Describe the public API of the importable `charmlibs.rollingops` as JSON (names, signatures).

tests/unit/test_rollingops_api.py compares our package with the description of PyPI's
charmlibs-rollingops 1.1.5 kept in tests/unit/data/charmlibs_rollingops_1_1_5_api.json. Both
packages have the same import name, so they can never be imported by one interpreter: the reference
is described in a throwaway virtualenv that has only the PyPI package, and stored as data. To make
it again (needs PyPI; run from the repository root, without our lib/ on PYTHONPATH)::

    python3 -m venv /tmp/rollingops-1.1.5
    /tmp/rollingops-1.1.5/bin/pip install charmlibs-rollingops==1.1.5
    /tmp/rollingops-1.1.5/bin/python tests/tools/rollingops_api.py --write

(`--write` writes that file; without it the description goes to stdout, e.g. to describe ours:
`PYTHONPATH=lib python tests/tools/rollingops_api.py`.)

What is described, for every name in `__all__`: its kind (class, enum, exception, function, value),
the names of its direct bases, enum members and values, and for each public method or property the
class (or its bases in the same package) defines: its parameters (name, kind, default, annotation)
and return annotation. Annotations are normalised to bare names (`ops.charm.CharmBase` and
`'ops.CharmBase'` both become `CharmBase`), because two code bases spell one type differently.
"""

from __future__ import annotations

import enum
import importlib
import importlib.metadata
import inspect
import json
import pathlib
import re
import sys
import types
from typing import Any

PACKAGE = "charmlibs.rollingops"
REFERENCE = (
    pathlib.Path(__file__).resolve().parents[1]
    / "unit"
    / "data"
    / "charmlibs_rollingops_1_1_5_api.json"
)
_QUALIFIED = re.compile(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)")


def normalise_annotation(annotation: Any) -> str | None:
    """The annotation as text with every dotted prefix dropped; None when there is none."""
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
    return _QUALIFIED.sub(r"\1", text).replace("'", "")


def describe_callable(function: Any) -> dict[str, Any]:
    """Parameters (name, kind, default repr, annotation) and return annotation of `function`."""
    signature = inspect.signature(function)
    parameters = [
        {
            "name": parameter.name,
            "kind": parameter.kind.name,
            "default": None
            if parameter.default is inspect.Parameter.empty
            else repr(parameter.default),
            "annotation": normalise_annotation(parameter.annotation),
        }
        for parameter in signature.parameters.values()
    ]
    return {
        "kind": "function",
        "parameters": parameters,
        "returns": normalise_annotation(signature.return_annotation),
    }


def _own_members(cls: type) -> dict[str, Any]:
    """Public methods and properties (and `__init__`) from `cls` and its in-package bases."""
    members: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith(PACKAGE):
            continue
        for name, value in vars(klass).items():
            if name != "__init__" and name.startswith("_"):
                continue
            if isinstance(value, property):
                members[name] = {"kind": "property"}
            elif isinstance(value, (staticmethod, classmethod)):
                members[name] = describe_callable(value.__func__)
            elif isinstance(value, types.FunctionType):
                members[name] = describe_callable(value)
    return dict(sorted(members.items()))


def describe_object(value: Any) -> dict[str, Any]:
    """Kind, bases and members of one public object."""
    if not isinstance(value, type):
        if callable(value):
            return describe_callable(value)
        return {"kind": "value", "type": type(value).__name__}
    bases = [base.__name__ for base in value.__bases__]
    if issubclass(value, enum.Enum):
        return {
            "kind": "enum",
            "str": issubclass(value, str),
            "members": {member.name: member.value for member in value},
        }
    kind = "exception" if issubclass(value, BaseException) else "class"
    return {"kind": kind, "bases": bases, "members": _own_members(value)}


def describe(module: types.ModuleType) -> dict[str, Any]:
    """The public API of `module`: the names of `__all__` and a description of each."""
    names = sorted(module.__all__)
    return {
        "names": names,
        "version": getattr(module, "__version__", None),
        "objects": {name: describe_object(getattr(module, name)) for name in names},
    }


def main() -> None:
    """Print the description of the importable package, with the distribution it came from."""
    module = importlib.import_module(PACKAGE)
    try:
        distribution = importlib.metadata.version("charmlibs-rollingops")
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    source = f"PyPI charmlibs-rollingops=={distribution}" if distribution else module.__file__
    description = {
        "source": source,
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        **describe(module),
    }
    text = json.dumps(description, indent=2) + "\n"
    if "--write" in sys.argv[1:]:
        REFERENCE.write_text(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
