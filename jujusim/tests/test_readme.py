"""README.md's example, run exactly as written, against the example charm (greeter_charm.py)."""

from __future__ import annotations

import pathlib
import re

from .greeter_charm import CHARM_DIR, GreeterCharm

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, "README.md should hold exactly one python example"
    return blocks[0]


def test_readme_example_runs_on_three_units_and_every_unit_ends_with_the_new_greeting():
    code = readme_example()
    assert len(code.splitlines()) <= 25, "the README promises about 20 lines"
    namespace = {"MyCharm": GreeterCharm, "CHARM_DIR": CHARM_DIR}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    sim = namespace["sim"]
    assert sorted(sim.members("greeter")) == ["greeter/1", "greeter/2"]
    assert sim.leader("greeter") == "greeter/2"


def test_readme_uses_public_names_only():
    """Every `jujusim` name the example imports is in `jujusim.__all__`; no private attribute."""
    import jujusim

    code = readme_example()
    imported = re.search(r"from jujusim import (.*)", code)
    assert imported is not None
    names = [name.strip() for name in imported.group(1).split(",")]
    assert set(names) <= set(jujusim.__all__)
    assert not re.search(r"\._[a-z]", code), "the example reaches into a private member"
