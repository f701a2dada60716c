"""A real etcd on 127.0.0.1 set up as charmed-etcd sets it up, for functional tests and benchmarks.

What the etcd charm does, reproduced here:

- server TLS with its own CA and certificate (made here with ``cryptography``), and client
  certificates required (``--client-cert-auth``); the trusted file (``--trusted-ca-file``) holds
  the client *leaf* certificates themselves (ours from the library's own
  :func:`charmlibs.rollingops._certs.generate_client_credentials`, and another application's);
- authentication on: user ``root`` (with a password) and role ``root``; one user per client
  named after its certificate's common name, with no password (etcd authenticates it by the
  common name); a role with ``readwrite`` on the client's key prefix only, granted to that
  user; then ``auth enable``. Setup runs ``etcdctl`` (``/usr/bin/etcdctl``, API v3) as root.

Our user (:data:`OUR_CN`) gets its prefixes through :meth:`EtcdServer.allow` (one per test);
:data:`OTHER_CN` is another application with its own prefix :data:`OTHER_PREFIX`. Ports are free
ports of the moment, data lives in a temporary directory (kept across restarts, auth included),
and startup waits for etcd's own "serving client traffic" log line (no sleeps).

The binaries are ``$ETCD_BIN_DIR/etcd`` and ``etcdctl``, else on PATH, else in ``/usr/bin``;
tests skip (with the reason printed) when either is missing.

    with EtcdServer(tmp_path) as server:
        server.allow("/coordinated-ops/rollingops/v1/x/")
        client = server.client()          # an EtcdClient authenticated as OUR_CN
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from typing import IO

from charmlibs.rollingops._certs import generate_client_credentials
from charmlibs.rollingops._etcd_client import EtcdClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

READY_MARK = "serving client traffic"
OUR_CN = "rollingops-functional-test"
OUR_ROLE = "rollingops-functional-test-rw"
OTHER_CN = "other-application"
OTHER_PREFIX = "/other-application/"


def _find(name: str) -> str | None:
    bin_dir = os.environ.get("ETCD_BIN_DIR")
    if bin_dir and os.access(os.path.join(bin_dir, name), os.X_OK):
        return os.path.join(bin_dir, name)
    found = shutil.which(name)
    if found:
        return found
    return f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None


def find_etcd() -> str | None:
    """Return the etcd binary to use, or None (also None when etcdctl is missing)."""
    return _find("etcd") if _find("etcdctl") else None


def free_port() -> int:
    """Return a TCP port that is free right now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_credentials() -> tuple[str, str, str]:
    """Return (ca_pem, cert_pem, key_pem) for a server at 127.0.0.1/localhost."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test etcd server CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        # etcd's embedded JSON gateway dials the gRPC server with the server certificate,
        # so it must be valid for client authentication too.
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return ca_cert.public_bytes(pem).decode(), cert.public_bytes(pem).decode(), key_pem


class EtcdServer:
    """One single-member etcd with mutual TLS; see the module docstring."""

    def __init__(self, workdir: pathlib.Path, binary: str | None = None, *, name: str = "etcd"):
        found = binary or find_etcd()
        if found is None:
            raise FileNotFoundError("no etcd binary (set ETCD_BIN_DIR or install etcd-server)")
        self.binary = found
        self.dir = workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[str] | None = None
        self.log_lines: list[str] = []
        self.client_port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"127.0.0.1:{self.client_port}"

        server_ca, server_cert, server_key = _server_credentials()
        self.etcdctl_binary = _find("etcdctl") or "/usr/bin/etcdctl"
        self.root_password = secrets.token_hex(12)
        self.credentials = generate_client_credentials(OUR_CN)
        self.other_credentials = generate_client_credentials(OTHER_CN)
        self.server_ca = self._write("server-ca.pem", server_ca)
        self.server_cert = self._write("server.pem", server_cert)
        self.server_key = self._write("server.key", server_key, 0o600)
        # What the etcd charm trusts: the client leaves themselves, plus its own CA (etcd's
        # embedded gateway dials etcd with the server certificate).
        leaves = self.credentials["client-cert"] + self.other_credentials["client-cert"]
        self.trusted = self._write("trusted.pem", server_ca + leaves)
        self.client_cert = self._write("client.pem", self.credentials["client-cert"])
        self.client_key = self._write("client.key", self.credentials["client-key"], 0o600)
        self.other_cert = self._write("other.pem", self.other_credentials["client-cert"])
        self.other_key = self._write("other.key", self.other_credentials["client-key"], 0o600)
        self.auth_enabled = False

    def _write(self, name: str, text: str, mode: int = 0o644) -> str:
        path = self.dir / name
        path.write_text(text)
        path.chmod(mode)
        return str(path)

    def start(self, timeout: float = 30.0) -> None:
        """Start etcd and return once it serves clients (data dir is kept across restarts)."""
        url = f"https://{self.endpoint}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            self.binary,
            "--name=test",
            f"--data-dir={self.dir / 'data'}",
            f"--listen-client-urls={url}",
            f"--advertise-client-urls={url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            f"--cert-file={self.server_cert}",
            f"--key-file={self.server_key}",
            f"--trusted-ca-file={self.trusted}",
            "--client-cert-auth",
            "--logger=zap",
            "--log-outputs=stderr",
        ]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        ready = threading.Event()
        assert self.process.stderr is not None
        threading.Thread(
            target=self._read_log, args=(self.process.stderr, ready), daemon=True
        ).start()
        if not ready.wait(timeout) or self.process.poll() is not None:
            self.stop()
            raise RuntimeError("etcd did not start:\n" + "\n".join(self.log_lines[-20:]))
        if not self.auth_enabled:
            self._enable_auth()

    def etcdctl(self, *args: str, user: str | None = "root") -> str:
        """Run ``etcdctl`` (API v3) against this etcd, as root by default; return its stdout."""
        argv = [
            self.etcdctl_binary,
            f"--endpoints=https://{self.endpoint}",
            f"--cacert={self.server_ca}",
            f"--cert={self.client_cert}",
            f"--key={self.client_key}",
        ]
        if user == "root" and self.auth_enabled:
            argv.append(f"--user=root:{self.root_password}")
        env = {**os.environ, "ETCDCTL_API": "3"}
        proc = subprocess.run(
            [*argv, *args], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"etcdctl {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
        return proc.stdout

    def _enable_auth(self) -> None:
        """Users, roles and ``auth enable`` exactly as the etcd charm does (first start only)."""
        self.etcdctl("user", "add", f"root:{self.root_password}")
        self.etcdctl("role", "add", "root")
        self.etcdctl("user", "grant-role", "root", "root")
        for cn, role, prefix in ((OUR_CN, OUR_ROLE, None), (OTHER_CN, "other-rw", OTHER_PREFIX)):
            self.etcdctl("user", "add", cn, "--no-password")
            self.etcdctl("role", "add", role)
            if prefix is not None:
                self.etcdctl(
                    "role", "grant-permission", role, "--prefix=true", "readwrite", prefix
                )
            self.etcdctl("user", "grant-role", cn, role)
        self.etcdctl("auth", "enable")
        self.auth_enabled = True

    def allow(self, prefix: str) -> str:
        """Grant our common-name user ``readwrite`` on keys starting with ``prefix``; return it."""
        self.etcdctl("role", "grant-permission", OUR_ROLE, "--prefix=true", "readwrite", prefix)
        return prefix

    def _read_log(self, stream: IO[str], ready: threading.Event) -> None:
        for line in stream:
            self.log_lines.append(line.rstrip())
            if READY_MARK in line:
                ready.set()
        ready.set()  # etcd exited: wake the waiter, which then sees poll() is not None

    def stop(self) -> None:
        """Stop etcd (SIGTERM, then SIGKILL after 10 s)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def client(self, **kwargs: object) -> EtcdClient:
        """Return a client authenticated as :data:`OUR_CN` (by its certificate only)."""
        return EtcdClient(
            [self.endpoint],
            ca_file=self.server_ca,
            cert_file=self.client_cert,
            key_file=self.client_key,
            **kwargs,  # type: ignore[arg-type]
        )

    def other_client(self, **kwargs: object) -> EtcdClient:
        """Return a client of the other application (:data:`OTHER_CN`)."""
        return EtcdClient(
            [self.endpoint],
            ca_file=self.server_ca,
            cert_file=self.other_cert,
            key_file=self.other_key,
            **kwargs,  # type: ignore[arg-type]
        )

    def __enter__(self) -> EtcdServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
