"""The demo workload: install, configure, start, stop, restart and probe the demo service.

Plain functions, so unit tests patch this one module. The service program is `demo_service.py`
(next to this file), copied to /opt/coordinated-ops with a VERSION file; its settings live in an
environment file. Two service managers sit behind the same functions:

- systemd (on a unit): a `Type=notify` unit, so `systemctl start|restart` returns only once the
  service has told systemd it is ready — no waiting loop in the charm;
- a local process (tests, `COORDINATED_OPS_SERVICE_MANAGER=process`): the same program started with
  a pipe on which it writes READY; stop waits on a pidfd for the process to exit.

Every path is under `paths.root()`, so tests can run the real service unprivileged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import paths

logger = logging.getLogger(__name__)

DEFAULT_VERSION = "1.0.0"
SERVICE_NAME = "coordinated-ops"
READY_TIMEOUT = 60.0  # seconds a start may take before we call it failed
STOP_TIMEOUT = 30.0
_PROGRAM = pathlib.Path(__file__).with_name("demo_service.py")


class WorkloadError(Exception):
    """The service could not be installed, started, stopped or reached."""


def install_dir() -> pathlib.Path:
    """Where the service program, its VERSION and its settings live."""
    return paths.root() / "opt" / SERVICE_NAME


def state_dir() -> pathlib.Path:
    """Where the charm keeps local state (the operation journal, the process manager's pid)."""
    return paths.root() / "var" / "lib" / SERVICE_NAME


def _env_file() -> pathlib.Path:
    return install_dir() / "service.env"


def _read_env() -> dict[str, str]:
    try:
        lines = _env_file().read_text().splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line)


def is_installed() -> bool:
    """Whether the service program and a version are in place."""
    return (install_dir() / "demo_service.py").exists() and (install_dir() / "VERSION").exists()


def install(version: str) -> None:
    """Install (or replace) the service program at `version`; a running service keeps running."""
    directory = install_dir()
    directory.mkdir(parents=True, exist_ok=True)
    state_dir().mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_PROGRAM, directory / "demo_service.py")
    _write_atomic(directory / "VERSION", version + "\n")
    _manager().install()
    logger.info("installed demo service version %s", version)


def get_version() -> str | None:
    """The installed version, or None when nothing is installed."""
    try:
        return (install_dir() / "VERSION").read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_config(port: int, startup_seconds: float) -> bool:
    """Write the service settings; return True if they changed (a restart applies them)."""
    wanted = {"PORT": str(port), "STARTUP_SECONDS": str(startup_seconds)}
    if _read_env() == wanted:
        return False
    install_dir().mkdir(parents=True, exist_ok=True)
    _write_atomic(_env_file(), "".join(f"{k}={v}\n" for k, v in wanted.items()))
    return True


def start() -> None:
    """Start the service; return once it reports ready (no-op if already running)."""
    if not is_running():
        _manager().start()


def stop() -> None:
    """Stop the service and wait until it has exited."""
    _manager().stop()


def restart() -> None:
    """Restart the service; return once the new process reports ready."""
    _manager().restart()


def is_running() -> bool:
    """Whether the service process is alive (it may still be warming up)."""
    return _manager().is_running()


def _get(path: str) -> dict[str, Any] | None:
    port = _read_env().get("PORT", "8080")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def health() -> dict[str, Any] | None:
    """GET /health: the service's answer, or None when it is not serving."""
    answer = _get("/health")
    return answer if answer and answer.get("status") == "ok" else None


def served_version() -> str | None:
    """GET /version: the version the running service reports, or None."""
    answer = _get("/version")
    return answer.get("version") if answer else None


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _manager() -> SystemdManager | ProcessManager:
    if os.environ.get("COORDINATED_OPS_SERVICE_MANAGER") == "process":
        return ProcessManager()
    return SystemdManager()


class SystemdManager:
    """Runs the service as a systemd `Type=notify` unit."""

    def _unit_file(self) -> pathlib.Path:
        return paths.root() / "etc" / "systemd" / "system" / f"{SERVICE_NAME}.service"

    def install(self) -> None:
        """Write the unit file and enable it."""
        directory = install_dir()
        unit = (
            "[Unit]\nDescription=coordinated-ops demo service\nAfter=network.target\n\n"
            "[Service]\nType=notify\nNotifyAccess=main\n"
            f"Environment=VERSION_FILE={directory / 'VERSION'}\n"
            f"EnvironmentFile={_env_file()}\n"
            f"ExecStart=/usr/bin/python3 {directory / 'demo_service.py'}\n"
            f"TimeoutStartSec={int(READY_TIMEOUT)}\nRestart=on-failure\n\n"
            "[Install]\nWantedBy=multi-user.target\n"
        )
        self._unit_file().parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self._unit_file(), unit)
        self._systemctl("daemon-reload")
        self._systemctl("enable", SERVICE_NAME)

    def _systemctl(self, *args: str) -> None:
        result = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise WorkloadError(f"systemctl {' '.join(args)} failed: {result.stderr.strip()}")

    def start(self) -> None:
        """Start; returns once the service sent READY=1 (Type=notify)."""
        self._systemctl("start", SERVICE_NAME)

    def stop(self) -> None:
        """Stop; returns once the process has exited."""
        self._systemctl("stop", SERVICE_NAME)

    def restart(self) -> None:
        """Restart; returns once the new process sent READY=1."""
        self._systemctl("restart", SERVICE_NAME)

    def is_running(self) -> bool:
        """Whether systemd considers the unit active."""
        result = subprocess.run(["systemctl", "is-active", "--quiet", SERVICE_NAME], check=False)
        return result.returncode == 0


class ProcessManager:
    """Runs the same program as a plain local process (functional tests, dispatch smoke test)."""

    def _pid_file(self) -> pathlib.Path:
        return state_dir() / "service.pid"

    def install(self) -> None:
        """Nothing to register: just make sure the state directory exists."""
        state_dir().mkdir(parents=True, exist_ok=True)

    def _pid(self) -> int | None:
        try:
            pid = int(self._pid_file().read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def is_running(self) -> bool:
        """Whether the recorded process is alive."""
        return self._pid() is not None

    def start(self) -> None:
        """Start the program with a pipe; return once it writes READY on it."""
        read_fd, write_fd = os.pipe()
        env = {**os.environ, **_read_env(), "READY_FD": str(write_fd)}
        env["VERSION_FILE"] = str(install_dir() / "VERSION")
        log = (state_dir() / "service.log").open("ab")
        try:
            process = subprocess.Popen(
                [sys.executable, str(install_dir() / "demo_service.py")],
                env=env,
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
            log.close()
        self._pid_file().write_text(str(process.pid))
        with os.fdopen(read_fd, "rb") as ready:
            readable, _, _ = select.select([ready], [], [], READY_TIMEOUT)
            line = ready.readline() if readable else b""
        if line.strip() != b"READY":
            raise WorkloadError(
                f"demo service did not report ready (see {state_dir()}/service.log)"
            )

    def stop(self) -> None:
        """SIGTERM the process and wait on its pidfd until it has exited."""
        pid = self._pid()
        if pid is None:
            return
        pidfd = os.pidfd_open(pid)
        try:
            os.kill(pid, signal.SIGTERM)
            readable, _, _ = select.select([pidfd], [], [], STOP_TIMEOUT)
            if not readable:
                os.kill(pid, signal.SIGKILL)
                select.select([pidfd], [], [], STOP_TIMEOUT)
        finally:
            os.close(pidfd)
        with contextlib.suppress(ChildProcessError):  # reap it if it is our own child (tests)
            os.waitpid(pid, os.WNOHANG)
        self._pid_file().unlink(missing_ok=True)

    def restart(self) -> None:
        """Stop, then start."""
        self.stop()
        self.start()
