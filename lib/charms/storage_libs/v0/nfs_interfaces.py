"""The `nfs_share` interface: a charm asks for an NFS share, another charm serves it.

Copy this one file into your charm as `lib/charms/storage_libs/v0/nfs_interfaces.py`. It needs ops
3.x and the standard library only. It is interface-only: it never touches the filesystem, never
runs `mount` and never opens a socket. Your charm does that in its event handlers.

Requirer (the charm that mounts the share)::

    # metadata.yaml
    requires:
      nfs-share:
        interface: nfs_share
        limit: 1

    from charms.storage_libs.v0.nfs_interfaces import NFSRequires

    class MyCharm(ops.CharmBase):
        def __init__(self, framework):
            super().__init__(framework)
            self.nfs = NFSRequires(self, "nfs-share")
            framework.observe(self.nfs.on.server_connected, self._on_server_connected)
            framework.observe(self.nfs.on.mount_share, self._on_mount_share)
            framework.observe(self.nfs.on.umount_share, self._on_umount_share)

        def _on_server_connected(self, event):  # leader only
            self.nfs.request_share(event.relation.id, name="/data", size=10)

        def _on_mount_share(self, event):  # every unit, and again when the endpoint changes
            endpoint = parse_endpoint(event.endpoint)
            run(["mount", "-t", "nfs4", endpoint.mount_source, "/srv/data"])

        def _on_umount_share(self, event):  # every unit, when the share goes away
            run(["umount", "/srv/data"])

Provider (the charm that serves shares)::

    # metadata.yaml
    provides:
      nfs-share:
        interface: nfs_share

    self.nfs = NFSProvides(self, "nfs-share")
    framework.observe(self.nfs.on.share_requested, self._on_share_requested)  # leader only
    framework.observe(self.nfs.on.clients_changed, self._on_clients_changed)  # leader only

    def _on_share_requested(self, event):
        path = create_export(event.name, event.size_gb)
        self.nfs.set_endpoint(event.relation.id, f"nfs://{my_address}/{path}")

    def _on_clients_changed(self, event):
        export_only_to(event.name, event.clients)  # e.g. ["10.1.0.1", "10.1.0.2"]

What the library does for you:

- The requirer leader writes `name`, `allowlist` and `size` in its application bag; the provider
  leader writes `endpoint` (`nfs://host[:port]/path`, or the legacy `host:/path`) in its own.
- The provider computes the client list from the requirer units' `ingress-address` values
  intersected with the requested allowlist: the default allowlist `0.0.0.0` means "every unit of
  the requirer", never "the world". The list follows the requirer's scale out and scale in.
- Every requirer unit gets `mount_share` once per endpoint (again when it changes) and
  `umount_share` only when the endpoint is withdrawn or no provider unit remains.
- Malformed relation data is logged, shown as a Blocked unit status (through the charm's
  collect-status event) and ignored: it never raises in a hook.

The one rule for relation data another application wrote: a value that does not parse, is out
of range or too big is logged, shown in status and ignored; it never raises in a hook. Bounds:
a share name is at most 64 characters of letters, digits and `._-` (one optional leading `/`);
`size` is -1 or 1 to `MAX_SIZE_GB`; a client is a literal single IP address (the unit's
`ingress-address`, else `private-address`): no network, wildcard, host name or netgroup, so an
export never reaches wider than the requirer's own units, whatever its allowlist says.
Handlers must be idempotent: a new leader re-emits the provider events once per relation.

Identity: this file is a fork, in behaviour, of the Charmhub library
`charms.storage_libs.v0.nfs_interfaces` (canonical/storage-libs, LIBAPI 0, archived in 2025): it
keeps the relation data and public names of that library's last patch, LIBPATCH 3, and is
otherwise our own code (LIBPATCH 3 emitted `mount_share` only when the endpoint first appeared;
this one emits it again when the endpoint changes). Its `LIBID` differs from the original's, so
Charmhub treats it as another library: `charmcraft fetch-lib` of the original does not overwrite
this file (never list it under `charm-libs:`), and Charmhub would refuse a `publish-lib` of it
under the original's name. `LIBPATCH` is our own counter from 1, one step per change of behaviour
here; it is lower than the original's 3 and is not comparable with it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

from ops.charm import (
    CharmBase,
    CollectStatusEvent,
    RelationBrokenEvent,
    RelationDepartedEvent,
    RelationEvent,
)
from ops.framework import EventBase, EventSource, Handle, Object, ObjectEvents, StoredState
from ops.model import Application, BlockedStatus, ModelError, Relation, Unit

# The unique Charmhub library identifier, never change it
LIBID = "8d780832d33d42fd854e04e9c70b418b"

# Increment this major API version when introducing breaking changes
LIBAPI = 0

# Increment this PATCH version before using `charmcraft publish-lib` or reset
# to 0 if you are raising the major API version
LIBPATCH = 3

PYDEPS: list[str] = []

logger = logging.getLogger(__name__)

DEFAULT_ALLOWLIST = "0.0.0.0"  # noqa: S104, RUF100 - an allowlist entry, not a bind address
"""The allowlist written when none is given: every unit of the requirer application."""

MAX_SIZE_GB = 1_000_000_000
"""The largest share size a requirer may ask for, in GiB (about an exabyte)."""
MAX_NAME = 64  # characters of a share name
_NAME = re.compile(r"/?[A-Za-z0-9][A-Za-z0-9._-]*")
_MAX_TEXT = 4096  # characters of an allowlist, an endpoint or the old `cache` key we read

_WILDCARDS = frozenset({"0.0.0.0", "0.0.0.0/0", "::", "::/0", "*"})  # noqa: S104, RUF100
_ANCHOR_CACHE_KEY = "cache"  # change-tracking key of the library we replace; read once, deleted
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_BAD_PATH_CHARS = re.compile(r"[\s\x00]")
_warned_entries: set[str] = set()


def _remote_app(relation: Relation) -> Application | None:
    """The relation's remote application, or None when Juju names none.

    ops types `Relation.app` as always set, but it is None when Juju reports neither a remote
    unit nor a remote application (a relation being broken, launchpad bug 1960934).
    """
    app: Application | None = relation.app
    return app


# --------------------------------------------------------------------------------------------
# Endpoints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareEndpoint:
    """Where a share is served: `nfs://host[:port]/path[?query]` or `host:/path` parsed."""

    host: str
    path: str
    port: int | None = None
    query: str = ""

    @property
    def _host_text(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def url(self) -> str:
        """The canonical URL form, e.g. `nfs://10.0.0.5:2050/data?version=4`."""
        port = f":{self.port}" if self.port is not None else ""
        query = f"?{self.query}" if self.query else ""
        return f"nfs://{self._host_text}{port}{self.path}{query}"

    @property
    def mount_source(self) -> str:
        """What `mount` takes as its source: `host:/path` (IPv6 hosts bracketed)."""
        return f"{self._host_text}:{self.path}"

    @property
    def mount_options(self) -> list[str]:
        """Mount options the endpoint implies: `port=<n>` when a port is set."""
        return [f"port={self.port}"] if self.port is not None else []


def _parse_host(host: str) -> str:
    """Validate a host (IPv4, bracketed IPv6 or DNS name); return it without brackets."""
    if not host:
        raise ValueError("missing host")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError("unterminated '[' in IPv6 host")
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {inner!r}") from None
        return inner
    if ":" in host:
        raise ValueError("IPv6 host must be bracketed, e.g. [fd00::5]")
    if re.fullmatch(r"[0-9.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv4 address {host!r}") from None
        return host
    if not _HOSTNAME.match(host):
        raise ValueError(f"invalid host name {host!r}")
    return host


def _check_path(path: str) -> str:
    if not path:
        raise ValueError("empty path")
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} is not absolute")
    if _BAD_PATH_CHARS.search(path):
        raise ValueError("path contains whitespace or NUL")
    return path


def _parse_url(text: str) -> ShareEndpoint:
    rest = text[len("nfs://") :]
    if "#" in rest:
        raise ValueError("fragment not allowed")
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if not slash:
        raise ValueError("empty path")
    if "@" in authority:
        raise ValueError("user-info not allowed")
    port_text = ""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise ValueError("unterminated '[' in IPv6 host")
        host, after = authority[: close + 1], authority[close + 1 :]
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected text {after!r} after host")
        port_text = after[1:]
        has_port = bool(after)
    else:
        if authority.count(":") > 1:
            raise ValueError("IPv6 host must be bracketed, e.g. [fd00::5]")
        host, has_colon, port_text = authority.partition(":")
        has_port = bool(has_colon)
    port = None
    if has_port:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"port {port_text!r} is not 1-65535")
        port = int(port_text)
    return ShareEndpoint(_parse_host(host), _check_path("/" + path), port, query)


def _parse_legacy(text: str) -> ShareEndpoint:
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ValueError("unterminated '[' in IPv6 host")
        host, after = text[: close + 1], text[close + 1 :]
        if not after.startswith(":"):
            raise ValueError("expected ':' after host")
        path = after[1:]
    else:
        host, colon, path = text.partition(":")
        if not colon:
            raise ValueError("expected nfs://host/path or host:/path")
        if ":" in path.split("/", 1)[0]:
            raise ValueError("IPv6 host must be bracketed, e.g. [fd00::5]:/data")
    return ShareEndpoint(_parse_host(host), _check_path(path))


def parse_endpoint(text: str) -> ShareEndpoint:
    """Parse an endpoint (`nfs://host[:port]/path[?query]` or `host:/path`).

    Raises ValueError with the reason when the text is malformed::

        >>> parse_endpoint("nfs://10.0.0.5:2050/data").mount_source
        '10.0.0.5:/data'
        >>> parse_endpoint("[fd00::5]:/data").url
        'nfs://[fd00::5]/data'
    """
    # The annotation is not enforced at run time and charm code may be untyped: check anyway.
    if not isinstance(text, str) or not text.strip():  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError("empty endpoint")
    if len(text) > _MAX_TEXT:
        raise ValueError(f"longer than {_MAX_TEXT} characters")
    text = text.strip()
    if "\n" in text or "\x00" in text:
        raise ValueError("endpoint contains a newline or NUL")
    scheme, sep, _ = text.partition("://")
    if sep:
        if scheme.lower() != "nfs":
            raise ValueError(f"unknown scheme {scheme!r}")
        return _parse_url("nfs://" + text[len(scheme) + 3 :])
    if text.lower().startswith("nfs:"):
        raise ValueError("malformed URL: expected nfs://host/path")
    return _parse_legacy(text)


# --------------------------------------------------------------------------------------------
# Client lists (provider side)
# --------------------------------------------------------------------------------------------


def _split_allowlist(allowlist: str | None) -> list[str]:
    return [entry.strip() for entry in (allowlist or "").split(",") if entry.strip()]


def _matches(entry: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether one allowlist entry admits one client address (invalid entries admit none)."""
    if entry in _WILDCARDS:
        return True
    try:
        if "/" in entry:
            network = ipaddress.ip_network(entry, strict=False)
            return address.version == network.version and address in network
        return ipaddress.ip_address(entry) == address
    except ValueError:
        _warn_once(entry, "allowlist entry is not an address or a network, ignored")
        return False


def _warn_once(entry: str, message: str) -> None:
    if entry not in _warned_entries and len(_warned_entries) < 100:
        _warned_entries.add(entry)
        logger.warning("nfs-share: %s: %r", message, entry)


def _client_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A literal single unicast IP address, else None (networks, `*`, names, `@netgroup`...)."""
    if len(text) > 64:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
        or (isinstance(address, ipaddress.IPv6Address) and address.scope_id)
    ):
        return None
    return address


def _unit_address(relation: Relation, unit: Unit) -> str:
    try:
        bag = relation.data[unit]
        return (bag.get("ingress-address") or bag.get("private-address") or "").strip()
    except (ModelError, KeyError):
        return ""


def _invalid_addresses(relation: Relation) -> list[str]:
    """Names of the requirer units whose published address is not a single IP address."""
    return sorted(
        unit.name
        for unit in relation.units
        if (text := _unit_address(relation, unit)) and _client_address(text) is None
    )


def _effective_clients(
    relation: Relation, allowlist: str | None, departing: Unit | None = None
) -> list[str]:
    """Return the requirer unit addresses the allowlist admits, sorted (IPv4 first, numeric)."""
    entries = _split_allowlist(allowlist)
    clients: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for unit in relation.units:
        if departing is not None and unit.name == departing.name:
            continue
        text = _unit_address(relation, unit)
        if not text:
            continue  # not published yet
        address = _client_address(text)
        if address is None:
            logger.error(
                "nfs-share: relation %s: ignoring %s: its address %r is not a single IP address",
                relation.id,
                unit.name,
                text[:64],
            )
        elif any(_matches(entry, address) for entry in entries):
            clients.add(address)
    return [str(a) for a in sorted(clients, key=lambda a: (a.version, int(a)))]


def _parse_size(text: str) -> int:
    """A requested size in GiB (-1 = unlimited) from its text; ValueError when out of range."""
    text = text.strip()
    if text == "-1":
        return -1
    if not re.fullmatch(r"[0-9]{1,10}", text) or not 1 <= int(text) <= MAX_SIZE_GB:
        raise ValueError(f"size must be -1 or 1 to {MAX_SIZE_GB} (GiB)")
    return int(text)


def _name_problem(name: str) -> bool:
    name = name.strip()
    return len(name) > MAX_NAME or not _NAME.fullmatch(name)


def _request_problem(bag: dict[str, str]) -> str | None:
    """Return the first invalid field of a requirer's request, or None when it is valid."""
    if _name_problem(bag.get("name", "")):
        return "name"
    try:
        _parse_size(bag.get("size", "-1"))
    except ValueError:
        return "size"
    allowlist = bag.get("allowlist", DEFAULT_ALLOWLIST)
    if len(allowlist) > _MAX_TEXT or not _split_allowlist(allowlist):
        return "allowlist"
    return None


# --------------------------------------------------------------------------------------------
# Events
# --------------------------------------------------------------------------------------------


class ServerConnectedEvent(RelationEvent):
    """A provider unit joined (leader only): time to call `request_share`."""


class _MountEvent(RelationEvent):
    """Base of mount_share / umount_share; `endpoint` is the endpoint the event is about."""

    def __init__(
        self,
        handle: Handle,
        relation: Relation,
        app: Application | None = None,
        unit: Unit | None = None,
        endpoint: str | None = None,
    ):
        super().__init__(handle, relation, app=app, unit=unit)
        self._endpoint = endpoint

    def snapshot(self) -> dict[str, Any]:
        """Keep the endpoint when the event is deferred."""
        snapshot = super().snapshot()
        if self._endpoint is not None:
            snapshot["endpoint"] = self._endpoint
        return snapshot

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Restore a deferred event."""
        super().restore(snapshot)
        self._endpoint = snapshot.get("endpoint")

    @property
    def endpoint(self) -> str | None:
        """The endpoint this event was emitted for, else the provider's current one."""
        if self._endpoint is not None:
            return self._endpoint
        app = _remote_app(self.relation)
        if app is None:
            return None
        try:
            return self.relation.data[app].get("endpoint")
        except ModelError:
            return None


class MountShareEvent(_MountEvent):
    """Mount the share at `endpoint` (every requirer unit; again when the endpoint changes)."""


class UmountShareEvent(_MountEvent):
    """Unmount the share at `endpoint` (withdrawn, or no provider unit remains)."""


class ShareRequestedEvent(RelationEvent):
    """A requirer asked for a share, or changed its request (provider leader only)."""

    def _field(self, key: str) -> str | None:
        app = _remote_app(self.relation)
        if app is None:
            return None
        try:
            return self.relation.data[app].get(key)
        except ModelError:
            return None

    @property
    def name(self) -> str | None:
        """The requested share name, e.g. `/data`."""
        return self._field("name")

    @property
    def allowlist(self) -> str | None:
        """The requested allowlist text, e.g. `0.0.0.0` or `10.0.0.0/24,10.1.0.7`."""
        return self._field("allowlist")

    @property
    def size(self) -> str | None:
        """The requested size in GiB as text; `-1` means unlimited."""
        return self._field("size")

    @property
    def size_gb(self) -> int | None:
        """The requested size in GiB, or None for unlimited (or unreadable)."""
        try:
            size = _parse_size(self.size or "-1")
        except ValueError:
            return None
        return None if size == -1 else size

    @property
    def clients(self) -> list[str]:
        """The addresses to export to now (requirer units admitted by the allowlist)."""
        return _effective_clients(self.relation, self.allowlist)


class ClientsChangedEvent(RelationEvent):
    """The effective client list changed (provider leader only): re-render the exports."""

    def __init__(
        self,
        handle: Handle,
        relation: Relation,
        app: Application | None = None,
        unit: Unit | None = None,
        clients: Iterable[str] = (),
        name: str | None = None,
    ):
        super().__init__(handle, relation, app=app, unit=unit)
        self.clients: list[str] = list(clients)
        self.name: str | None = name

    def snapshot(self) -> dict[str, Any]:
        """Keep the client list and name when the event is deferred."""
        snapshot = super().snapshot()
        snapshot["clients"] = list(self.clients)
        if self.name is not None:
            snapshot["name"] = self.name
        return snapshot

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Restore a deferred event."""
        super().restore(snapshot)
        self.clients = list(snapshot.get("clients", []))
        self.name = snapshot.get("name")


class _NFSRequiresEvents(ObjectEvents):
    server_connected = EventSource(ServerConnectedEvent)
    mount_share = EventSource(MountShareEvent)
    umount_share = EventSource(UmountShareEvent)


class _NFSProvidesEvents(ObjectEvents):
    share_requested = EventSource(ShareRequestedEvent)
    clients_changed = EventSource(ClientsChangedEvent)


# --------------------------------------------------------------------------------------------
# Both sides
# --------------------------------------------------------------------------------------------


class _BaseInterface(Object):
    """What both sides share: the relations of one endpoint and their remote app data."""

    def __init__(self, charm: CharmBase, integration_name: str):
        super().__init__(charm, integration_name)
        self.charm = charm
        self.app = charm.model.app
        self.unit = charm.model.unit
        self.integration_name = integration_name

    @property
    def integrations(self) -> list[Relation]:
        """Relations of this endpoint whose data is readable (a relation being broken is not)."""
        return [
            relation
            for relation in self.model.relations[self.integration_name]
            if relation.active and _remote_app(relation) is not None
        ]

    def fetch_data(self) -> dict[int, dict[str, str]]:
        """Return the remote application's bag of each relation, by relation id (no `cache`)."""
        data: dict[int, dict[str, str]] = {}
        for relation in self.integrations:
            assert relation.app is not None  # filtered by `integrations`
            bag = relation.data[relation.app]
            data[relation.id] = {k: v for k, v in bag.items() if k != _ANCHOR_CACHE_KEY}
        return data

    def _integration(self, integration_id: int) -> Relation | None:
        for relation in self.integrations:
            if relation.id == integration_id:
                return relation
        logger.error(
            "nfs-share: no active %s relation with id %s", self.integration_name, integration_id
        )
        return None

    @staticmethod
    def _write(bag: MutableMapping[str, str], values: dict[str, str | None]) -> None:
        """Write only the keys whose value changes (None deletes)."""
        for key, value in values.items():
            if value is None:
                if key in bag:
                    del bag[key]
            elif bag.get(key) != value:
                bag[key] = value


# --------------------------------------------------------------------------------------------
# Requirer
# --------------------------------------------------------------------------------------------


def _check_request(
    name: str, allowlist: str | list[str] | tuple[str, ...] | None, size: int | None
) -> tuple[str, str, str]:
    """Validate `request_share` arguments; return the three strings to write.

    The charm calling `request_share` may be untyped: every type is checked again here.
    """
    if not isinstance(name, str) or _name_problem(name):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError(
            f"invalid share name {name!r:.80}: 1 to {MAX_NAME} letters, digits, '.', '_', '-'"
            " (a leading '/' is allowed)"
        )
    if allowlist is None:
        entries = [DEFAULT_ALLOWLIST]
    elif isinstance(allowlist, str):
        entries = [allowlist.strip()]
    elif isinstance(allowlist, (list, tuple)) and all(isinstance(e, str) for e in allowlist):  # pyright: ignore[reportUnnecessaryIsInstance]
        entries = [entry.strip() for entry in allowlist]
    else:
        raise ValueError(f"invalid allowlist {allowlist!r}: a string or a list of strings")
    if not entries or any(not entry or "," in entry for entry in entries):
        raise ValueError(
            f"invalid allowlist {allowlist!r}: empty, or an entry empty or with a comma"
        )
    if size is None:
        size = -1
    if (
        isinstance(size, bool)
        or not isinstance(size, int)  # pyright: ignore[reportUnnecessaryIsInstance]
        or not (size == -1 or 1 <= size <= MAX_SIZE_GB)
    ):
        raise ValueError(
            f"invalid size {size!r:.40}: an int from 1 to {MAX_SIZE_GB} (GiB) or -1 (unlimited)"
        )
    return name.strip(), ",".join(entries), str(size)


class NFSRequires(_BaseInterface):
    """Requirer side: request a share (leader) and learn when to mount or unmount (every unit)."""

    on = _NFSRequiresEvents()  # pyright: ignore[reportAssignmentType]
    _stored = StoredState()

    def __init__(self, charm: CharmBase, integration_name: str):
        super().__init__(charm, integration_name)
        # By relation id (as text): the endpoint mounted and not yet unmounted, whether an
        # umount_share was already sent since the last mount_share, and the provider app whose
        # endpoint was malformed when last read (collect-status shows it without reading).
        self._stored.set_default(mounted={}, umount_sent={}, malformed={})
        events = charm.on[integration_name]
        self.framework.observe(events.relation_joined, self._on_relation_joined)
        self.framework.observe(events.relation_changed, self._on_relation_event)
        self.framework.observe(events.relation_departed, self._on_relation_event)
        self.framework.observe(events.relation_broken, self._on_relation_event)
        self.framework.observe(charm.on.upgrade_charm, self._on_upgrade_charm)
        self.framework.observe(charm.on.leader_elected, self._on_leader_elected)
        self.framework.observe(charm.on.collect_unit_status, self._on_collect_status)

    def request_share(
        self,
        integration_id: int,
        name: str,
        allowlist: str | list[str] | None = None,
        size: int | None = None,
    ) -> None:
        """Ask the provider for share `name` (leader only; others log and return).

        `allowlist` narrows which of our units may mount (default: all of them); `size` is in
        GiB (default: unlimited). Raises ValueError for invalid arguments.
        """
        name, allowlist_text, size_text = _check_request(name, allowlist, size)
        if not self.unit.is_leader():
            logger.debug("nfs-share: request_share ignored on a non-leader unit")
            return
        relation = self._integration(integration_id)
        if relation is None:
            return
        self._write(
            relation.data[self.app],
            {"name": name, "allowlist": allowlist_text, "size": size_text},
        )

    # -- events -------------------------------------------------------------------------------

    def _on_relation_joined(self, event: RelationEvent) -> None:
        # Typed as the base event: ops types a joined event's unit as always set, but a test
        # harness may emit one without a unit.
        if self.unit.is_leader() and event.unit is not None:
            self.on.server_connected.emit(event.relation, app=event.app, unit=event.unit)
        self._reconcile(event.relation, event.unit)

    def _on_relation_event(self, event: RelationEvent) -> None:
        departing = None
        if isinstance(event, RelationDepartedEvent):
            departing = event.departing_unit
        self._reconcile(
            event.relation,
            event.unit,
            departing=departing,
            broken=isinstance(event, RelationBrokenEvent),
        )

    def _on_upgrade_charm(self, _event: EventBase) -> None:
        for relation in self.integrations:
            self._reconcile(relation, None)

    def _on_leader_elected(self, _event: EventBase) -> None:
        if not self.unit.is_leader():  # leadership may already have moved on
            return
        for relation in self.integrations:
            if relation.units and not relation.data[self.app].get("name"):
                self.on.server_connected.emit(relation, app=relation.app)

    def _on_collect_status(self, event: CollectStatusEvent) -> None:
        # What the relation events saw (`_reconcile`): a status reads no relation.
        for _key, app in sorted(self._stored.malformed.items()):
            event.add_status(BlockedStatus(f"invalid NFS endpoint from {app}; see debug-log"))

    # -- the decision -------------------------------------------------------------------------

    def _desired(
        self, relation: Relation, departing: Unit | None, broken: bool
    ) -> tuple[str | None, bool, bool]:
        """(desired endpoint, whether no provider remains, whether the endpoint is malformed)."""
        if (
            broken
            or _remote_app(relation) is None
            or (departing is not None and departing.name == self.unit.name)
        ):
            return None, True, False
        providers = [u for u in relation.units if departing is None or u.name != departing.name]
        if not providers:
            return None, True, False
        try:
            endpoint = (relation.data[relation.app].get("endpoint") or "").strip()
        except ModelError:
            return None, False, False
        if not endpoint:
            return None, False, False
        try:
            parse_endpoint(endpoint)
        except ValueError as error:
            logger.error(
                "nfs-share: relation %s: invalid endpoint '%s': %s", relation.id, endpoint, error
            )
            return None, False, True
        return endpoint, False, False

    def _migrate_anchor_cache(self, relation: Relation, key: str) -> None:
        """Seed memory from the replaced library's unit-bag `cache` key, then delete it."""
        try:
            bag = relation.data[self.unit]
            raw = bag.get(_ANCHOR_CACHE_KEY)
        except ModelError:
            return
        if raw is None:
            return
        try:
            seen = json.loads(raw) if len(raw) <= _MAX_TEXT else None
        except (ValueError, RecursionError):
            seen = None
        # A JSON object's keys are strings.
        endpoint = (
            cast("dict[str, object]", seen).get("endpoint") if isinstance(seen, dict) else None
        )
        if key not in self._stored.mounted and isinstance(endpoint, str) and endpoint:
            self._stored.mounted[key] = endpoint
        try:
            del bag[_ANCHOR_CACHE_KEY]
        except ModelError:
            logger.debug("nfs-share: could not delete the old cache key yet")

    def _reconcile(
        self,
        relation: Relation,
        remote_unit: Unit | None,
        departing: Unit | None = None,
        broken: bool = False,
    ) -> None:
        """Compare what is mounted with what should be; emit what closes the gap."""
        key = str(relation.id)
        if not broken:
            self._migrate_anchor_cache(relation, key)
        desired, no_provider, malformed = self._desired(relation, departing, broken)
        if malformed:
            self._stored.malformed[key] = relation.app.name if relation.app else "?"
            return  # keep whatever is mounted; status says so
        self._stored.malformed.pop(key, None)
        mounted = self._stored.mounted.get(key)
        if mounted == desired:
            if mounted is None and no_provider and not self._stored.umount_sent.get(key, False):
                self._stored.umount_sent[key] = True
                self.on.umount_share.emit(relation, app=relation.app, unit=remote_unit)
            return
        self._stored.mounted[key] = desired
        if mounted is not None:
            self._stored.umount_sent[key] = True
            self.on.umount_share.emit(
                relation, app=relation.app, unit=remote_unit, endpoint=mounted
            )
        if desired is not None:
            self._stored.umount_sent[key] = False
            self.on.mount_share.emit(
                relation, app=relation.app, unit=remote_unit, endpoint=desired
            )


# --------------------------------------------------------------------------------------------
# Provider
# --------------------------------------------------------------------------------------------


class NFSProvides(_BaseInterface):
    """Provider side: learn what is requested and by whom (leader); publish the endpoint."""

    on = _NFSProvidesEvents()  # pyright: ignore[reportAssignmentType]
    _stored = StoredState()

    def __init__(self, charm: CharmBase, integration_name: str):
        super().__init__(charm, integration_name)
        # By relation id (as text): last request [name, allowlist, size], last client list,
        # and the problems last seen in it (collect-status shows them without reading).
        self._stored.set_default(requests={}, clients={}, problems={})
        events = charm.on[integration_name]
        for bound in (
            events.relation_joined,
            events.relation_changed,
            events.relation_departed,
            events.relation_broken,
        ):
            self.framework.observe(bound, self._on_relation_event)
        self.framework.observe(charm.on.leader_elected, self._on_leader_elected)
        self.framework.observe(charm.on.collect_unit_status, self._on_collect_status)

    def set_endpoint(self, integration_id: int, endpoint: str) -> None:
        """Publish where the share is served (leader only); `""` withdraws it.

        Raises ValueError when `endpoint` is malformed (see `parse_endpoint`).
        """
        if endpoint != "":
            parse_endpoint(endpoint)
        if not self.unit.is_leader():
            logger.debug("nfs-share: set_endpoint ignored on a non-leader unit")
            return
        relation = self._integration(integration_id)
        if relation is None:
            return
        self._write(relation.data[self.app], {"endpoint": endpoint or None})

    def get_clients(self, integration_id: int) -> list[str]:
        """Return the addresses the share of this relation must be exported to (any unit)."""
        for relation in self.integrations:
            if relation.id == integration_id:
                try:
                    bag = relation.data[relation.app]  # type: ignore[index]
                    if _request_problem(dict(bag)) is not None:
                        return []
                    return _effective_clients(relation, bag.get("allowlist"))
                except ModelError:
                    return []
        return []

    # -- events -------------------------------------------------------------------------------

    def _on_relation_event(self, event: RelationEvent) -> None:
        if not self.unit.is_leader():
            return
        departing = event.departing_unit if isinstance(event, RelationDepartedEvent) else None
        broken = isinstance(event, RelationBrokenEvent)
        self._evaluate(event.relation, event.unit, departing, broken)
        self._remember_problems(event.relation, broken)

    def _on_leader_elected(self, _event: EventBase) -> None:
        if not self.unit.is_leader():  # leadership may already have moved on
            return
        # Memory is per unit: a new leader serves every relation afresh.
        for relation in self.integrations:
            self._stored.requests.pop(str(relation.id), None)
            self._stored.clients.pop(str(relation.id), None)
            self._evaluate(relation, None, None, False)
            self._remember_problems(relation, False)

    def _on_collect_status(self, event: CollectStatusEvent) -> None:
        # What the relation events saw (`_remember_problems`): a status reads no relation.
        if not self.unit.is_leader():
            return
        for _key, problems in sorted(self._stored.problems.items()):
            for problem in problems:
                event.add_status(BlockedStatus(problem))

    def _remember_problems(self, relation: Relation, broken: bool) -> None:
        """Store the problems of `relation` as read now, for the leader's status."""
        key = str(relation.id)
        problems: list[str] = []
        remote = _remote_app(relation)
        if not broken and remote is not None:
            try:
                bag = dict(relation.data[remote])
            except ModelError:
                bag = {}
            app = remote.name
            problem = "name" in bag and _request_problem(bag)
            if problem:
                problems.append(f"invalid share request from {app}: {problem}")
            bad = _invalid_addresses(relation)
            if bad:
                problems.append(f"ignoring {bad[0]} of {app}: its address is not a single IP")
        if problems:
            self._stored.problems[key] = problems
        else:
            self._stored.problems.pop(key, None)

    def _evaluate(
        self, relation: Relation, remote_unit: Unit | None, departing: Unit | None, broken: bool
    ) -> None:
        key = str(relation.id)
        remembered = self._stored.requests.get(key)
        name = remembered[0] if remembered else None
        if broken or _remote_app(relation) is None:
            if self._stored.clients.get(key):
                self._stored.clients[key] = []
                self.on.clients_changed.emit(relation, app=relation.app, clients=[], name=name)
            self._stored.requests.pop(key, None)
            self._stored.clients.pop(key, None)
            return
        try:
            bag = dict(relation.data[relation.app])
        except ModelError:
            return
        if "name" not in bag:
            return  # nothing requested yet
        problem = _request_problem(bag)
        if problem:
            logger.error(
                "nfs-share: relation %s: invalid share request from %s: %s=%r",
                relation.id,
                relation.app.name,
                problem,
                (bag.get(problem) or "")[:80],
            )
            return
        request = [
            bag["name"].strip(),
            bag.get("allowlist", DEFAULT_ALLOWLIST),
            bag.get("size", "-1"),
        ]
        if remembered is None or list(remembered) != request:
            self._stored.requests[key] = request
            self.on.share_requested.emit(relation, app=relation.app, unit=remote_unit)
        clients = _effective_clients(relation, request[1], departing)
        if list(self._stored.clients.get(key, [])) != clients:
            self._stored.clients[key] = clients
            self.on.clients_changed.emit(
                relation, app=relation.app, unit=remote_unit, clients=clients, name=request[0]
            )
