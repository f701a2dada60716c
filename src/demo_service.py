#!/usr/bin/env python3
"""The demo workload: a tiny HTTP service that takes a while to become ready.

It is installed on each unit by `workload.install()` and run by systemd (or, in tests, as a plain
local process). Standard library only, so it runs on any Ubuntu Python.

- It warms up for STARTUP_SECONDS before it binds its port, so a restart or an upgrade takes
  measurable time and `/health` answers only once the service is really serving.
- Once listening it reports readiness: `READY=1` to systemd's NOTIFY_SOCKET (Type=notify units), or
  a `READY` line on the file descriptor named by READY_FD (the local process manager).
- `GET /health` -> 200 `{"status": "ok", "version": ..., "pid": ...}`;
  `GET /version` -> the version read from VERSION_FILE at start-up.

Environment: PORT (default 8080), BIND (default 0.0.0.0), STARTUP_SECONDS (default 1.0),
VERSION_FILE (default: VERSION next to this file).
"""

import json
import os
import pathlib
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _notify_ready() -> None:
    notify_socket = os.environ.get("NOTIFY_SOCKET")
    if notify_socket:
        address = "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)
    ready_fd = os.environ.get("READY_FD")
    if ready_fd:
        fd = int(ready_fd)
        os.write(fd, b"READY\n")
        os.close(fd)


def _make_handler(version: str):
    body_health = json.dumps({"status": "ok", "version": version, "pid": os.getpid()}).encode()
    body_version = json.dumps({"version": version}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = {"/health": body_health, "/version": body_version}.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def main() -> int:
    """Warm up, bind, report ready, serve until SIGTERM."""
    port = int(os.environ.get("PORT", "8080"))
    bind = os.environ.get("BIND", "0.0.0.0")  # noqa: S104 (a service for the unit's network)
    startup = float(os.environ.get("STARTUP_SECONDS", "1.0"))
    version_file = pathlib.Path(
        os.environ.get("VERSION_FILE", pathlib.Path(__file__).with_name("VERSION"))
    )
    version = version_file.read_text().strip()

    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    time.sleep(startup)  # the simulated warm-up: the reason restarts take measurable time
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((bind, port), _make_handler(version))
    _notify_ready()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
