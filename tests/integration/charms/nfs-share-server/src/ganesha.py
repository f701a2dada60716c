"""Render nfs-ganesha's configuration for the shares this charm serves (pure functions).

`render(exports, settings)` turns the shares into the text of ganesha.conf: NFSv4 only over TCP
(no rpcbind, so a custom port works), `Graceless` (no 90 s grace period after each restart), and
one EXPORT block per share that refuses everyone (`Access_Type = None`) except the listed clients
(`CLIENT { Clients = ...; Access_Type = RW; }`), each a single IP address, never a network, a
wildcard, a host name or a netgroup. Export ids, paths and pseudo paths are unique. The same
text runs on a unit and in the functional tests (tests/functional/test_nfs_ganesha.py), which
start a real ganesha with it.

    text = render([Export(1, "/srv/nfs-share-server/demo", "/demo", ("10.0.0.7",))],
                  Settings("10.0.0.5"))
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_PORT = 2049
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # at most 64: mkdir never fails
_UNSAFE = re.compile(r'[\s;{}",]')  # values are written unquoted


@dataclass(frozen=True)
class Export:
    """One share: id (>= 1; 0 is ganesha's pseudo root), host directory, pseudo path, clients."""

    export_id: int
    path: str
    pseudo: str
    clients: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Server-wide settings: the address and port to serve on, where v4 recovery state lives."""

    bind_address: str
    port: int = DEFAULT_PORT
    recovery_root: str = "/var/lib/nfs-share-server/recovery"


def slug(name: str) -> str:
    """The export's directory and pseudo name for a requested share name: `/data` -> `data`."""
    candidate = name.strip().lstrip("/")
    if not _SLUG.fullmatch(candidate):
        raise ValueError(f"share name {name!r:.80}: up to 64 letters, digits, '.', '_', '-'")
    return candidate


def share_dir(relation_id: int, name: str) -> str:
    """The directory and pseudo name of one relation's share: `r7-data` for `/data` on relation 7.

    The relation id makes it unique: two applications asking for the same name never share files.
    """
    return f"r{int(relation_id)}-{slug(name)}"


def endpoint(host: str, share: str, port: int = DEFAULT_PORT) -> str:
    """The endpoint a requirer mounts: `nfs://host[:port]/share` (port omitted when 2049)."""
    host_text = f"[{host}]" if ":" in host else host
    port_text = f":{port}" if port != DEFAULT_PORT else ""
    return f"nfs://{host_text}{port_text}/{share}"


def _safe(value: str, what: str) -> str:
    if not value or _UNSAFE.search(value):
        raise ValueError(
            f"{what} {value!r} is empty or has whitespace, ';', '{{', '}}', '\"' or ','"
        )
    return value


def _check(exports: list[Export], settings: Settings) -> None:
    ipaddress.ip_address(settings.bind_address)  # ValueError names the bad address
    if not 1 <= settings.port <= 65535:
        raise ValueError(f"port {settings.port} is not 1-65535")
    _safe(settings.recovery_root, "recovery root")
    seen: set[object] = set()
    for export in exports:
        if export.export_id < 1 or export.export_id in seen:
            raise ValueError(f"Export_Id {export.export_id} is < 1 or used twice")
        seen.add(export.export_id)
        for value, what in [(export.path, "path"), (export.pseudo, "pseudo path")]:
            if not _safe(value, what).startswith("/"):
                raise ValueError(f"{what} {value!r} is not absolute")
            if (what, value) in seen:
                raise ValueError(f"{what} {value!r} is used by two exports")
            seen.add((what, value))
        for client in export.clients:
            _client(client)


def _client(text: str) -> None:
    """A client must be one literal IP address: no network, wildcard, host name or netgroup."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"client {text!r:.80} is not a single IP address") from None
    if address.is_unspecified or address.is_multicast:
        raise ValueError(f"client {text!r} is not a single host address")


def render(exports: Iterable[Export], settings: Settings) -> str:
    """The whole ganesha.conf; deterministic (exports in Export_Id order). ValueError if unsafe."""
    ordered = sorted(exports, key=lambda e: e.export_id)
    _check(ordered, settings)
    lines = [
        "# Rendered by the nfs-share-server charm; edits are overwritten.",
        "NFS_CORE_PARAM {",
        f"    Bind_addr = {settings.bind_address};",
        f"    NFS_Port = {settings.port};",
        "    Protocols = 4;",
        "    Enable_NLM = false;",
        "    Enable_RQUOTA = false;",
        "    Enable_UDP = false;",
        "}",
        "",
        "NFSv4 {",
        "    Graceless = true;",
        f"    RecoveryRoot = {settings.recovery_root};",
        "}",
    ]
    for export in ordered:
        lines += [
            "",
            "EXPORT {",
            f"    Export_Id = {export.export_id};",
            f"    Path = {export.path};",
            f"    Pseudo = {export.pseudo};",
            "    Access_Type = None;",
            "    Squash = No_Root_Squash;",
            "    SecType = sys;",
            "    Protocols = 4;",
            "    Transports = TCP;",
            "    FSAL {",
            "        Name = VFS;",
            "    }",
        ]
        if export.clients:
            lines += [
                "    CLIENT {",
                f"        Clients = {', '.join(export.clients)};",
                "        Access_Type = RW;",
                "    }",
            ]
        lines.append("}")
    lines += ["", "LOG {", "    Default_Log_Level = EVENT;", "}", ""]
    return "\n".join(lines)
