"""Render nfs-ganesha's configuration for the shares this charm serves (pure functions).

`render(exports, settings)` turns the shares into the text of ganesha.conf: NFSv4 only over TCP
(no rpcbind, so a custom port works), `Graceless` (no 90 s grace period after each restart), and
one EXPORT block per share that refuses everyone (`Access_Type = None`) except the listed clients
(`CLIENT { Clients = ...; Access_Type = RW; }`). The same text runs on a unit and in the
functional tests (tests/functional/test_nfs_ganesha.py), which start a real ganesha with it.

    text = render([Export(1, "/srv/nfs-share-server/demo", "/demo", ("10.0.0.7",))],
                  Settings("10.0.0.5"))
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_PORT = 2049
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
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
    if not _SLUG.match(candidate) or candidate in {".", ".."}:
        raise ValueError(f"share name {name!r}: use letters, digits, '.', '_', '-'")
    return candidate


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
    seen: set[int] = set()
    for export in exports:
        if export.export_id < 1 or export.export_id in seen:
            raise ValueError(f"Export_Id {export.export_id} is < 1 or used twice")
        seen.add(export.export_id)
        for value, what in [(export.path, "path"), (export.pseudo, "pseudo path")]:
            if not _safe(value, what).startswith("/"):
                raise ValueError(f"{what} {value!r} is not absolute")
        for client in export.clients:
            _safe(client, "client")


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
