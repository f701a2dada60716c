"""A real nfs-ganesha on 127.0.0.1, and the userspace NFS client, for functional tests.

`GaneshaServer` runs `ganesha.nfsd` in the foreground in its own session, with a configuration
text from the nfs-share-server charm's renderer (NFSv4 only, so no rpcbind and any port works),
waits for ganesha's own "NFS SERVER INITIALIZED" line (read from its log stream by a thread, no
sleeps), and stops exactly the process it started. `restart()` re-reads the configuration file,
as `systemctl restart nfs-ganesha` does on a unit.

The client is libnfs-utils (`nfs-cp`, `nfs-cat`, `nfs-ls`): userspace, because the kernel here
cannot mount NFS. A custom port goes in the URL as `?nfsport=<n>`.

    with GaneshaServer(tmp_path, port=free_port()) as server:
        server.start(text)
        nfs_cat(nfs_url("127.0.0.1", server.port, "data/file.txt"))
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import threading
import time

READY_MARK = "NFS SERVER INITIALIZED"
START_TIMEOUT = 5.0
CLIENT_TOOLS = ("nfs-cp", "nfs-cat", "nfs-ls")


def missing_requirements() -> str | None:
    """Why the NFS functional tests cannot run here, or None when they can."""
    if shutil.which("ganesha.nfsd") is None:
        return "ganesha.nfsd not found (apt install nfs-ganesha nfs-ganesha-vfs)"
    missing = [tool for tool in CLIENT_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (apt install libnfs-utils)"
    if os.geteuid() != 0:
        return "ganesha's VFS backend needs root (open_by_handle_at)"
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at this moment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GaneshaServer:
    """One ganesha.nfsd process with its configuration, log and state in `workdir`."""

    def __init__(self, workdir: pathlib.Path, port: int, netns: str | None = None):
        self.workdir = workdir
        self.port = port
        self.netns = netns  # run inside this network namespace (ip netns exec)
        self.config_path = workdir / "ganesha.conf"
        self.log_path = workdir / "ganesha.log"
        self.recovery_root = workdir / "recovery"
        self.recovery_root.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[str] | None = None
        self.start_seconds: list[float] = []  # measured, for the report

    def start(self, text: str | None = None) -> None:
        """Write `text` (if given) as the configuration and start; wait until it serves."""
        if text is not None:
            self.config_path.write_text(text)
        argv = [
            "ganesha.nfsd",
            "-F",
            "-L",
            "/dev/stdout",
            "-f",
            str(self.config_path),
            "-p",
            str(self.workdir / "ganesha.pid"),
            "-N",
            "NIV_EVENT",
        ]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        began = time.monotonic()
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        ready = threading.Event()
        threading.Thread(target=self._drain, args=(self.process, ready), daemon=True).start()
        if not ready.wait(START_TIMEOUT):
            self.stop()
            raise RuntimeError(f"ganesha did not start; see {self.log_path}:\n{self.log_tail()}")
        self.start_seconds.append(time.monotonic() - began)

    def _drain(self, process: subprocess.Popen[str], ready: threading.Event) -> None:
        """Copy ganesha's log stream to the log file; flag readiness (and keep the pipe empty)."""
        assert process.stdout is not None
        with self.log_path.open("a") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if READY_MARK in line:
                    ready.set()

    def restart(self) -> None:
        """Stop and start again with the configuration file as it is now."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """Stop the process this object started (only that one) and wait for it."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> GaneshaServer:
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()


def nfs_url(host: str, port: int, path: str) -> str:
    """A libnfs URL for NFSv4 on a custom port: nfs://host/path?version=4&nfsport=port."""
    return f"nfs://{host}/{path.lstrip('/')}?version=4&nfsport={port}"


def _client(argv: list[str], netns: str | None) -> subprocess.CompletedProcess[bytes]:
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(argv, capture_output=True, timeout=60, check=False)


def nfs_write(url: str, data: bytes, scratch: pathlib.Path, netns: str | None = None):
    """Copy `data` to the file at `url` with nfs-cp; returns the CompletedProcess."""
    source = scratch / f"upload-{time.monotonic_ns()}"
    source.write_bytes(data)
    return _client(["nfs-cp", str(source), url], netns)


def nfs_cat(url: str, netns: str | None = None):
    """Read the file at `url` with nfs-cat; returns the CompletedProcess (stdout = content)."""
    return _client(["nfs-cat", url], netns)


def nfs_ls(url: str, netns: str | None = None):
    """List the directory at `url` with nfs-ls; returns the CompletedProcess."""
    return _client(["nfs-ls", url], netns)


SERVER_CHARM = (
    pathlib.Path(__file__).resolve().parents[1] / "integration" / "charms" / "nfs-share-server"
)


def server_charm_module(name: str):
    """Import the nfs-share-server charm's src/<name>.py under a name of its own."""
    src = SERVER_CHARM / "src"
    if str(src) not in sys.path:
        sys.path.append(str(src))  # for the charm's own `import ganesha`
    module_name = f"nfs_share_server_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, src / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
