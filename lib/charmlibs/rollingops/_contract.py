"""The `etcd_client` relation, format v1, as charmed-etcd speaks it: our request and its answer.

Pure functions over relation data and PEM text; nothing here calls Juju. Importing this module
costs only the standard library (the worker imports `check_endpoints` through `_files`);
`cryptography` is imported inside the PEM checks, which only etcd relation hooks run.

Our request, written by our leader in our application databag on the etcd relation::

    version   "v1"
    requests  [{"resource": P, "salt": S, "request-id": R, "secret-mtls": "secret:..."}]

P is the lock prefix; S is 16 characters of [A-Za-z0-9], kept stable (a new one only when P or
our certificate changes); R is the first 16 hex digits of sha256(f"{P}:{S}"); `secret-mtls` is
the URI of our application's secret whose field `mtls-cert` holds our client certificate.

The provider's answer, in its application databag: `requests`, a JSON list with one entry per
request it accepted; ours is the one whose `request-id` is R. It carries `endpoints`
("host:port,host:port"), and the URIs `secret-user` (fields `username`, the common name of our
certificate, and `uris`) and `secret-tls` (field `tls-ca`, the CA of the etcd servers).

Every check raises `ProviderDataError` with a message saying what is wrong, for the log and the
unit's status; the caller falls back to the peer backend and never lets it escape a hook.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from typing import Any, TypeGuard, cast

from ._models import RollingOpsDecodingError, is_json_object, load_json

VERSION = "v1"
SALT_LENGTH = 16
SALT_ALPHABET = string.ascii_letters + string.digits
REQUEST_FIELDS = ("resource", "salt", "request-id", "secret-mtls")

_SALT = re.compile(r"[A-Za-z0-9]{16}")
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")
MAX_ENDPOINTS = 64
MAX_SHOWN = 80  # characters of a bad value quoted in a message (it ends up in the unit status)


class ProviderDataError(RollingOpsDecodingError):
    """The provider's answer, or a secret it points to, cannot be used; the message says why."""


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


# --- our request -------------------------------------------------------------------------------


def new_salt() -> str:
    """16 random characters of [A-Za-z0-9]."""
    return "".join(secrets.choice(SALT_ALPHABET) for _ in range(SALT_LENGTH))


def request_id(resource: str, salt: str) -> str:
    """The id the provider keys its answer by: sha256 of "resource:salt", first 16 hex digits."""
    return hashlib.sha256(f"{resource}:{salt}".encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Request:
    """Our one request: the key prefix we want, its salt, and the URI of our mTLS secret."""

    resource: str
    salt: str
    secret_mtls: str

    @property
    def request_id(self) -> str:
        return request_id(self.resource, self.salt)

    def to_dict(self) -> dict[str, str]:
        return {
            "resource": self.resource,
            "salt": self.salt,
            "request-id": self.request_id,
            "secret-mtls": self.secret_mtls,
        }

    def to_json(self) -> str:
        """The request object as stored in the peer application databag."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def databag(self) -> dict[str, str]:
        """What our leader writes in its application databag on the etcd relation."""
        return {"version": VERSION, "requests": json.dumps([self.to_dict()], sort_keys=True)}


def new_request(resource: str, secret_mtls: str) -> Request:
    """A request with a fresh salt (so a fresh request id)."""
    if not is_secret_uri(secret_mtls):
        raise ValueError(f"secret-mtls must be a secret URI, not {_shown(secret_mtls)}")
    return Request(resource, new_salt(), secret_mtls)


def is_secret_uri(value: Any) -> TypeGuard[str]:
    """`secret:` followed by something (what the provider checks `secret-mtls` against)."""
    return isinstance(value, str) and value.startswith("secret:") and len(value) > len("secret:")


def parse_request(raw: str | None) -> Request | None:
    """Our stored request object; None when absent or not valid (make a new one then)."""
    if not raw:
        return None
    try:
        data = load_json(raw)
    except ValueError:
        return None
    if not is_json_object(data) or set(data) != set(REQUEST_FIELDS):
        return None
    resource, salt = data["resource"], data["salt"]
    if not isinstance(resource, str) or not resource or not isinstance(salt, str):
        return None
    if not _SALT.fullmatch(salt) or data["request-id"] != request_id(resource, salt):
        return None
    if not is_secret_uri(data["secret-mtls"]):
        return None
    return Request(resource, salt, data["secret-mtls"])


# --- the provider's answer -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    """The provider's answer to our request (secrets still to be read)."""

    endpoints: tuple[str, ...]
    secret_user: str
    secret_tls: str


def find_answer(bag: Mapping[str, str], our_id: str) -> Answer | None:
    """Our answer in the provider's application databag; None while it has answered nothing.

    Raises ProviderDataError when `requests` does not parse, holds no answer for `our_id` (the
    message lists the ids it holds), or our answer is malformed.
    """
    raw = bag.get("requests")
    if not raw:
        return None
    try:
        answers = load_json(raw)  # bounded: size and depth are checked before decoding
    except ValueError as error:
        why = f"the provider's 'requests' is not JSON we accept: {error}"
        raise ProviderDataError(why) from None
    if not isinstance(answers, list):
        raise ProviderDataError("the provider's 'requests' is not a JSON list")
    objects = [a for a in cast("list[object]", answers) if is_json_object(a)]
    ours = [a for a in objects if a.get("request-id") == our_id]
    if not ours:
        ids = sorted(str(a.get("request-id")) for a in objects)[:5]
        raise ProviderDataError(
            f"the provider has no answer for our request {our_id} (it answered {ids})"
        )
    answer = ours[0]
    user, tls = answer.get("secret-user"), answer.get("secret-tls")
    if not is_secret_uri(user):
        raise ProviderDataError(f"our answer's secret-user is not a secret URI: {_shown(user)}")
    if not is_secret_uri(tls):
        raise ProviderDataError(f"our answer's secret-tls is not a secret URI: {_shown(tls)}")
    return Answer(check_endpoints(answer.get("endpoints")), user, tls)


def check_endpoints(value: Any) -> tuple[str, ...]:
    """`host:port` items (a comma-separated string or a list), each checked; raise if any is bad.

    A host is a DNS name (letters, digits, hyphens, dots), an IPv4 address or a bracketed IPv6
    address; a port is 1-65535 in decimal. Nothing else is accepted: no scheme, no path, no
    spaces inside an item.
    """
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(cast("list[object] | tuple[object, ...]", value))
    else:
        raise ProviderDataError(f"endpoints must be 'host:port,...', not {_shown(value)}")
    if not items or items == [""]:
        raise ProviderDataError("endpoints is empty")
    if len(items) > MAX_ENDPOINTS:
        raise ProviderDataError(f"endpoints lists {len(items)} items (at most {MAX_ENDPOINTS})")
    return tuple(check_endpoint(item) for item in items)


def check_endpoint(item: Any) -> str:
    """One `host:port`; returned unchanged when valid."""
    if not isinstance(item, str) or not item:
        raise ProviderDataError(f"endpoint {_shown(item)} is not 'host:port'")
    host, sep, port = item.rpartition(":")
    if not sep or not host:
        raise ProviderDataError(f"endpoint {_shown(item)} has no port ('host:port' expected)")
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ProviderDataError(f"endpoint {_shown(item)} has no valid port (1-65535)")
    if not _valid_host(host):
        raise ProviderDataError(f"endpoint {_shown(item)} has no valid host")
    return item


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        pass
    if len(host) > 253 or re.fullmatch(r"[0-9.]+", host):
        return False  # all digits and dots, yet no IPv4 address: a typo, not a name
    return all(_LABEL.fullmatch(label) for label in host.split("."))


# --- PEM checks (cryptography, imported here only) ---------------------------------------------


def check_certificates(pem: Any, what: str) -> str:
    """`pem` holds one or more X.509 certificates; returned unchanged."""
    _certificates(pem, what)
    return pem


def _certificates(pem: Any, what: str) -> list[Any]:
    from cryptography import x509

    if not isinstance(pem, str) or "-----BEGIN CERTIFICATE-----" not in pem:
        raise ProviderDataError(f"{what} is not a PEM certificate")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as error:
        raise ProviderDataError(f"{what} does not parse as PEM certificates: {error}") from None
    if not certs:
        raise ProviderDataError(f"{what} holds no certificate")
    return certs


def client_common_name(cert_pem: Any, key_pem: Any) -> str:
    """The common name of our client certificate (the leaf, first); the key must match it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    leaf = _certificates(cert_pem, "our client certificate")[0]
    if not isinstance(key_pem, str):
        raise ProviderDataError("our client key is missing")
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as error:
        raise ProviderDataError(f"our client key does not parse: {error}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise ProviderDataError("our client key does not match our client certificate")
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise ProviderDataError("our client certificate has no single common name")
    return names[0].value


def require_fields(content: Mapping[str, str], fields: Iterable[str], what: str) -> None:
    """Every field is in the secret's content and is a non-empty string."""
    missing = [f for f in fields if not isinstance(content.get(f), str) or not content.get(f)]
    if missing:
        raise ProviderDataError(f"{what} lacks {', '.join(missing)}")
