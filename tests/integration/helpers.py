"""What the integration tests do to the model, through jubilant only.

`Deployment` deploys coordinated-ops (3 units on LXD VMs), charmed-etcd (3 units, TLS from
self-signed-certificates) and the nfs-share-server test charm, relates them, mounts the share, and
reads the operation journal that every unit appends to on the share. Test-side waits poll Juju
(only tests poll; the charm and its libraries never do).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import shlex
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import jubilant
import yaml

from tests.integration import journal_checks

logger = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parents[2]
APP = "coordinated-ops"
ETCD = "etcd"
CERTS = "self-signed-certificates"
NFS = "nfs-share-server"
BASE = "ubuntu@24.04"
SHARE_NAME = "demo"
MOUNTPOINT = "/srv/demo-share"
EXPORT_ROOT = "/srv/nfs-share-server"  # nfs-share-server's default `export-root`
JOURNAL_NAME = "coordinated-ops-journal.jsonl"  # src/journal.py JOURNAL_NAME
DEPLOY_TIMEOUT = 45 * 60.0
ROUND_TIMEOUT = 15 * 60.0

ACTIONS = yaml.safe_load((ROOT / "actions.yaml").read_text())
ENGINES: list[str] = ACTIONS["restart"]["params"]["engine"]["enum"]

T = TypeVar("T")


def parse_constraints(text: str) -> dict[str, str]:
    """'virt-type=virtual-machine mem=2G' -> {'virt-type': 'virtual-machine', 'mem': '2G'}."""
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def wait_until(condition: Callable[[], T], *, timeout: float, what: str, every: float = 5) -> T:
    """Poll `condition` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


@dataclasses.dataclass
class Deployment:
    """The model under test and the operations the tests perform on it."""

    juju: jubilant.Juju
    constraints: dict[str, str]
    skew: float = 0.25

    # -- deployment --

    def deploy(self, charm: pathlib.Path, nfs_server_charm: pathlib.Path) -> None:
        """Deploy what is missing, relate what is unrelated, wait until everything settles."""
        apps = self.juju.status().apps
        if APP not in apps:
            self.juju.deploy(
                charm, APP, num_units=3, base=BASE, constraints=self.constraints or None
            )
        if ETCD not in apps:
            self.juju.deploy("charmed-etcd", ETCD, channel="3.6/stable", num_units=3)
        if CERTS not in apps:
            self.juju.deploy(CERTS, CERTS, channel="1/stable")
        if NFS not in apps:
            self.juju.deploy(
                nfs_server_charm, NFS, base=BASE, constraints=self.constraints or None
            )
        self.relate(f"{ETCD}:client-certificates", CERTS)
        self.relate(f"{APP}:etcd", f"{ETCD}:etcd-client")
        self.relate(f"{APP}:nfs-share", f"{NFS}:nfs-share")
        self.settle(timeout=DEPLOY_TIMEOUT)

    def related(self, endpoint: str, other_app: str) -> bool:
        """Whether `app:endpoint` is related to `other_app` now."""
        app, _, name = endpoint.partition(":")
        relations = self.juju.status().apps[app].relations.get(name, [])
        return any(relation.related_app == other_app for relation in relations)

    def relate(self, endpoint: str, other: str) -> None:
        """`juju integrate`, unless that relation exists already (a reused model)."""
        if not self.related(endpoint, other.split(":")[0]):
            self.juju.integrate(endpoint, other)

    def settle(self, timeout: float = ROUND_TIMEOUT) -> jubilant.Status:
        """Wait until our apps are active (the NFS server: not in error) and every agent idles."""

        def ready(status: jubilant.Status) -> bool:
            return (
                jubilant.all_active(status, APP, ETCD, CERTS)
                and NFS in status.apps
                and jubilant.all_agents_idle(status, APP, ETCD, CERTS, NFS)
            )

        return self.juju.wait(ready, error=jubilant.any_error, timeout=timeout, delay=5)

    # -- units --

    def units(self) -> list[str]:
        """coordinated-ops units, sorted by number."""
        units = self.juju.status().apps[APP].units
        return sorted(units, key=lambda name: int(name.split("/")[1]))

    def leader(self) -> str:
        """The coordinated-ops leader unit (waiting for an election after a leader left)."""
        status = self.juju.wait(
            lambda status: any(unit.leader for unit in status.apps[APP].units.values()),
            timeout=ROUND_TIMEOUT,
            delay=5,
            successes=1,
        )
        return next(name for name, unit in status.apps[APP].units.items() if unit.leader)

    def ensure_units(self, count: int) -> None:
        """Add coordinated-ops units until there are `count`, settled, with the share mounted."""
        missing = count - len(self.units())
        if missing > 0:
            self.juju.add_unit(APP, num_units=missing)
            self.juju.wait(
                lambda status: len(status.apps[APP].units) == count,
                error=jubilant.any_error,
                timeout=DEPLOY_TIMEOUT,
            )
        self.settle(timeout=DEPLOY_TIMEOUT)
        wait_until(self.mounted_everywhere, timeout=ROUND_TIMEOUT, what="the share on every unit")

    def remove_unit(self, unit: str) -> None:
        """Remove `unit` and its machine at once (--force: it need not finish its hook)."""
        logger.info("removing %s", unit)
        self.juju.remove_unit(unit, force=True)
        self.juju.wait(
            lambda status: unit not in status.apps[APP].units, timeout=ROUND_TIMEOUT, delay=5
        )

    def sh(self, unit: str, command: str) -> str:
        """Run a shell command on a unit (`juju exec`); its stdout."""
        return self.juju.exec(command, unit=unit).stdout

    # -- the share --

    def mount_share(self) -> jubilant.Task:
        """Run nfs-mount on the leader (idempotent) and wait until every unit has it mounted."""
        task = self.juju.run(self.leader(), "nfs-mount", {"name": SHARE_NAME})
        wait_until(self.mounted_everywhere, timeout=ROUND_TIMEOUT, what="the share on every unit")
        return task

    def mount_of(self, unit: str) -> tuple[str, str] | None:
        """(fstype, source) mounted at MOUNTPOINT on `unit`, from the kernel's mount table."""
        out = self.sh(unit, f"findmnt -n -o FSTYPE,SOURCE --mountpoint {MOUNTPOINT} || true")
        fields = out.split()
        return (fields[0], fields[1]) if len(fields) >= 2 else None

    def mounted_everywhere(self) -> bool:
        """Whether every coordinated-ops unit has an NFS mount at MOUNTPOINT."""
        mounts = {unit: self.mount_of(unit) for unit in self.units()}
        logger.info("mounts: %s", mounts)
        return all(m is not None and m[0].startswith("nfs") for m in mounts.values())

    def nfs_server_unit(self) -> str:
        """The (single) nfs-share-server unit."""
        return sorted(self.juju.status().apps[NFS].units)[0]

    def share_dir_on_server(self) -> str:
        """Where the share's files live on the NFS server: `<export-root>/r<relation id>-<name>`.

        Shares are per relation; the current relation has the highest id (ids are never reused).
        """
        pattern = f"{EXPORT_ROOT}/r*-{SHARE_NAME}"
        out = self.sh(self.nfs_server_unit(), f"ls -1d {pattern} 2>/dev/null || true")
        ids = []
        for line in out.splitlines():
            relation_id, _, name = line.strip()[len(f"{EXPORT_ROOT}/r") :].partition("-")
            if relation_id.isdigit() and name == SHARE_NAME:
                ids.append(int(relation_id))
        # Not served yet: a path that does not exist (an empty journal).
        return f"{EXPORT_ROOT}/r{max(ids, default=0)}-{SHARE_NAME}"

    # -- the journal on the share --

    def journal(self) -> list[dict]:
        """Every entry of the share's journal, read on the NFS server (so it went over NFS)."""
        path = f"{self.share_dir_on_server()}/{JOURNAL_NAME}"
        text = self.sh(self.nfs_server_unit(), f"cat {shlex.quote(path)} 2>/dev/null || true")
        entries = []
        for line in text.splitlines():
            if line.strip():
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def wait_for_round(
        self,
        offset: int,
        *,
        operation: str,
        engine: str | None,
        units: Iterable[str],
        timeout: float = ROUND_TIMEOUT,
    ) -> list[journal_checks.Interval]:
        """Wait until every unit in `units` has a new entry, then until the app is idle.

        Returns every entry after `offset` of that operation/engine (not only those of `units`:
        an extra or doubled run must show up in the checks).
        """
        wanted = set(units)

        def done() -> bool:
            new = journal_checks.select(
                journal_checks.parse(self.journal()[offset:]), operation=operation, engine=engine
            )
            seen = {interval.unit for interval in new}
            logger.info(
                "%s/%s: %d/%d units done", operation, engine, len(seen & wanted), len(wanted)
            )
            return wanted <= seen

        wait_until(
            done, timeout=timeout, what=f"every unit's {operation} ({engine}) in the journal"
        )
        self.juju.wait(
            lambda status: jubilant.all_agents_idle(status, APP), timeout=timeout, delay=5
        )
        return journal_checks.select(
            journal_checks.parse(self.journal()[offset:]), operation=operation, engine=engine
        )

    # -- actions --

    def backends(self, offset: int, *, operation: str, engine: str) -> list[str]:
        """The lock backend of each journal entry after `offset` (rollingops records it)."""
        return [
            str(entry.get("backend"))
            for entry in self.journal()[offset:]
            if entry.get("operation") == operation and entry.get("engine") == engine
        ]

    def restart_all(self, units: Iterable[str], *, engine: str, delay: int) -> list[jubilant.Task]:
        """Run `restart` on every unit at the same time (each action returns once queued)."""
        units = list(units)
        with ThreadPoolExecutor(max_workers=len(units)) as pool:
            tasks = list(
                pool.map(
                    lambda unit: self.juju.run(
                        unit, "restart", {"engine": engine, "delay": delay}
                    ),
                    units,
                )
            )
        for unit, task in zip(units, tasks, strict=True):
            logger.info("%s restart: %s", unit, task.results)
        return tasks

    def health(self, unit: str) -> dict | None:
        """The demo service's /health answer on `unit`, or None when it does not answer."""
        port = self.juju.config(APP).get("port", 8080)
        out = self.sh(unit, f"curl -sf --max-time 2 http://127.0.0.1:{port}/health || true")
        try:
            answer = json.loads(out)
        except ValueError:
            return None
        return answer if isinstance(answer, dict) else None

    def served_versions(self) -> dict[str, str | None]:
        """What each unit's service reports at /version."""
        port = self.juju.config(APP).get("port", 8080)
        versions = {}
        for unit in self.units():
            out = self.sh(unit, f"curl -sf --max-time 2 http://127.0.0.1:{port}/version || true")
            try:
                versions[unit] = json.loads(out).get("version")
            except (ValueError, AttributeError):
                versions[unit] = None
        return versions

    def find_holder(self, offset: int, baseline: dict[str, int | None], timeout: float) -> str:
        """The unit inside its restart now.

        That is the unit whose service pid changed (or that does not answer) since `baseline` and
        that has no journal entry since `offset` yet.
        """

        def holder() -> str:
            finished = {entry.get("unit") for entry in self.journal()[offset:]}
            for unit in self.units():
                if unit in finished:
                    continue
                health = self.health(unit)
                if health is None or health.get("pid") != baseline.get(unit):
                    return unit
            return ""

        return wait_until(holder, timeout=timeout, what="a unit inside its restart", every=1)

    def pids(self) -> dict[str, int | None]:
        """Each unit's demo service pid (from /health)."""
        return {unit: (self.health(unit) or {}).get("pid") for unit in self.units()}
