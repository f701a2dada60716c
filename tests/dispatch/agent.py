"""The unit agent's side of the stub hook tools: answers the tool client over a unix socket.

In Juju, a hook tool is a thin client (`jujuc`) that hands its name, arguments and the hook's
JUJU_* variables to the unit agent and prints the answer; the agent does the work. `Agent` is that
agent for one test unit: a thread of the test process listening on a unix socket, running each
request with `hooktool.run` against the unit's state file. The client is `hooktool_client.c`,
compiled once per session by `build_client` (None without a C compiler: the tools then run
hooktool.py with Python at each call instead, see charmdir.install_hook_tools).

    agent = Agent(state_path, socket_path)   # serves until agent.close()
    # tools on PATH are symlinks to build_client(); they find the agent via HOOKTOOLS_SOCKET

The wire format is described in hooktool_client.c. Requests are answered one at a time, as the
unit agent serialises a unit's hooks.
"""

from __future__ import annotations

import atexit
import functools
import pathlib
import shutil
import socketserver
import subprocess
import tempfile
import threading

from tests.dispatch import hooktool

CLIENT_SOURCE = pathlib.Path(__file__).with_name("hooktool_client.c")


@functools.cache
def build_client() -> pathlib.Path | None:
    """Compile the tool client once per process; None if no C compiler can build it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    build_dir = pathlib.Path(tempfile.mkdtemp(prefix="hooktool-client-"))
    atexit.register(shutil.rmtree, build_dir, ignore_errors=True)
    binary = build_dir / "hooktool-client"
    built = subprocess.run(
        [compiler, "-O2", "-o", str(binary), str(CLIENT_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return binary if built.returncode == 0 else None


def parse_request(data: bytes) -> tuple[str, list[str], dict[str, str], str]:
    """Split a client request into (tool name, arguments, JUJU_* environment, stdin)."""
    fields = data.split(b"\0")
    end_args = fields.index(b"")
    end_env = fields.index(b"", end_args + 1)
    name, *args = (field.decode() for field in fields[:end_args])
    env = dict(field.decode().split("=", 1) for field in fields[end_args + 1 : end_env])
    stdin = b"\0".join(fields[end_env + 1 :]).decode()
    return name, args, env, stdin


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        name, args, env, stdin = parse_request(self.rfile.read())
        call = hooktool.Call(self.server.state_path, env, stdin)
        code, error = hooktool.run(name, args, call)
        out, err = "".join(call.stdout).encode(), error.encode()
        self.wfile.write(f"{code} {len(out)} {len(err)}\n".encode() + out + err)


class _Server(socketserver.UnixStreamServer):
    state_path: str


class Agent:
    """Answers the hook tool client for one unit's state file until `close()`."""

    def __init__(self, state_path: pathlib.Path, socket_path: pathlib.Path):
        self.socket_path = socket_path
        self._server = _Server(str(socket_path), _Handler)
        self._server.state_path = str(state_path)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"hook-tool-agent {socket_path}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop answering; a tool called after this fails (it cannot connect)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self.socket_path.unlink(missing_ok=True)
