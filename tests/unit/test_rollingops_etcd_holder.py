"""`Holder.from_kv`: whatever value a client wrote under the lock key, it is read, never raised."""

from __future__ import annotations

import pytest
from charmlibs.rollingops._etcd_client import KeyValue
from charmlibs.rollingops._etcd_lock import Holder


@pytest.mark.parametrize(
    "value",
    [b"[" * 100_000 + b"]" * 100_000, b"not json", b"[1, 2]", b'"text"', b'{"owner": "x"}'],
    ids=["too-deep", "not-json", "list", "string", "missing-keys"],
)
def test_an_unreadable_lock_value_is_a_foreign_holder(value: bytes):
    kv = KeyValue(key="P lock", value=value, create_revision=7, mod_revision=7, version=1, lease=3)
    holder = Holder.from_kv(kv)
    assert (holder.owner, holder.kind, holder.token, holder.lease) == ("", "unknown", 7, 3)
