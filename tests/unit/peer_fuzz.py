"""Hypothesis strategies for relation values written by a hostile or broken unit.

Shared by the tests/unit/test_fuzz_*.py property tests: each feeds these values into every relation
key a library reads and asserts that no hook raises. `hostile_values` mixes well-formed JSON of
every shape with `malformed_values`, which no key of any library accepts: nesting deep enough to
make `json.loads` recurse, digit strings too long for `int()` (Python refuses over 4300 digits) or
for a float, half-written JSON and lone surrogates.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Reproducible and fast: the same examples on every run, no deadline (the first Scenario run of a
# process is slow), and a modest example count so that all fuzz tests take seconds.
FUZZ_SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=10,
)


def _deep(depth: int, opener: str) -> str:
    if opener == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


malformed_values = st.one_of(
    st.builds(_deep, st.integers(min_value=40, max_value=5000), st.sampled_from("[{")),
    st.integers(min_value=309, max_value=6000).map(lambda n: "9" * n),  # huge, in and over 4300
    st.integers(min_value=4301, max_value=6000).map(lambda n: '{"token": ' + "7" * n + "}"),
    st.integers(min_value=4301, max_value=6000).map(lambda n: "[" + "1" * n + "]"),
    st.sampled_from(["{", "[1,", '{"unit": ', "NaN", "-Infinity", "\x00", "null\x00", "\ud800"]),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=8),
)

hostile_values = st.one_of(
    st.just(""),
    st.text(max_size=40),
    json_values.map(json.dumps),
    st.integers(min_value=-(1 << 80), max_value=1 << 80).map(str),
    malformed_values,
)


def run_juju_event(context, relation, state, event: str):
    """Run one Juju event by name on `state` (unit 2 changed, unit 1 departing, or an action)."""
    return context.run(
        {
            "relation-changed": lambda: context.on.relation_changed(relation, remote_unit=2),
            "relation-departed": lambda: context.on.relation_departed(
                relation, remote_unit=1, departing_unit=1
            ),
            "update-status": context.on.update_status,
            "leader-elected": context.on.leader_elected,
            "restart": lambda: context.on.action("restart"),
        }[event](),
        state,
    )
