"""A strict check of an `etcd_client` requirer's request, as charmed-etcd 3.6 (v1) reads it.

Written from the provider's documented behaviour (docs/etcd-client-relation.md), not from our
library: the simulator's stand-in provider (demo/etcd_provider.py) and the unit
tests both judge the requirer's databag with it, so neither can accept what the real provider
refuses.

Two outcomes besides acceptance, as with the real provider:

- `ProviderHookError`: the provider's hook raises on it (its application goes into error). This
  is what a missing, empty or non-`secret:` `secret-mtls` does.
- `Unanswerable`: the provider cannot parse the request and never answers it (no `version: v1`,
  a mixture with the older v0 fields, `requests` not a JSON list of objects, a bad salt, a
  request id that is not sha256("resource:salt")[:16], an unknown field).

The stand-in is stricter than the real provider where the documentation is silent (unknown
fields, more than the four fields): stricter never lets a bug through.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

FIELDS = frozenset({"resource", "salt", "request-id", "secret-mtls"})
V0_FIELDS = frozenset({"prefix", "secret-mtls", "requested-secrets", "provided-secrets"})
SALT = re.compile(r"[A-Za-z0-9]{16}")
SECRET_URI = re.compile(r"secret:.+")


class ProviderHookError(Exception):
    """The real provider's hook raises on this request: its application goes into error."""


class Unanswerable(Exception):
    """The real provider cannot parse this request: it never answers it."""


def expected_request_id(resource: str, salt: str) -> str:
    return hashlib.sha256(f"{resource}:{salt}".encode()).hexdigest()[:16]


def check_requirer_bag(bag: Mapping[str, str]) -> list[dict[str, str]]:
    """The requests in a requirer's application databag, each checked; [] when none yet."""
    if "requests" not in bag and "version" not in bag:
        if V0_FIELDS & set(bag):
            raise Unanswerable(f"v0 fields {sorted(V0_FIELDS & set(bag))}: we speak v1 only")
        return []
    if bag.get("version") != "v1":
        raise Unanswerable(f"version is {bag.get('version')!r}, not 'v1'")
    mixed = V0_FIELDS & set(bag)
    if mixed:
        raise Unanswerable(f"v1 request mixed with v0 fields {sorted(mixed)}")
    try:
        requests = json.loads(bag.get("requests") or "")
    except ValueError:
        raise Unanswerable("requests is not JSON") from None
    if not isinstance(requests, list) or not requests:
        raise Unanswerable("requests is not a non-empty JSON list")
    # The provider validates secret-mtls of every request before anything else.
    for request in requests:
        if isinstance(request, dict):
            check_secret_mtls(request)
    return [check_request(request) for request in requests]


def check_secret_mtls(request: Mapping[str, Any]) -> str:
    """What the provider validates first (against `secret:.*`) and raises on."""
    value = request.get("secret-mtls")
    if not isinstance(value, str) or not SECRET_URI.fullmatch(value):
        raise ProviderHookError(f"secret-mtls {value!r} is not a secret URI")
    return value


def check_request(request: Any) -> dict[str, str]:
    """One request object, checked field by field."""
    if not isinstance(request, dict):
        raise Unanswerable(f"request {request!r} is not a JSON object")
    check_secret_mtls(request)
    if set(request) != FIELDS:
        raise Unanswerable(f"request fields {sorted(request)}, expected {sorted(FIELDS)}")
    resource, salt, rid = request["resource"], request["salt"], request["request-id"]
    if not isinstance(resource, str) or not resource:
        raise Unanswerable(f"resource {resource!r} is not a non-empty string")
    if not isinstance(salt, str) or not SALT.fullmatch(salt):
        raise Unanswerable(f"salt {salt!r} is not 16 characters of [A-Za-z0-9]")
    if rid != expected_request_id(resource, salt):
        raise Unanswerable(f"request-id {rid!r} is not sha256(resource:salt)[:16]")
    return dict(request)
