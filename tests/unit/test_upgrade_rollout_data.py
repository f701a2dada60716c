"""`Rollout.from_json` on any value of the `workload-rollout` app key: a ValueError, never more."""

from __future__ import annotations

import pytest

from upgrade import Rollout


@pytest.mark.parametrize(
    "raw",
    ["[" * 100_000 + "]" * 100_000, "nope", "[]", '{"round": "1"}'],
    ids=["too-deep", "not-json", "list", "missing-and-wrong"],
)
def test_a_malformed_rollout_is_a_value_error(raw: str):
    with pytest.raises(ValueError):
        Rollout.from_json(raw)
