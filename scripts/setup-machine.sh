#!/usr/bin/env bash
# Install what the test suite needs on a fresh Debian/Ubuntu machine (run as root, or with sudo):
#   - etcd (server + etcdctl) for the charmlibs.rollingops functional tests (real etcd, mutual TLS);
#   - nfs-ganesha with its VFS backend and libnfs-utils (userspace nfs-ls / nfs-cp) for the NFS tests;
#   - tox, which builds every test environment from pyproject.toml.
# Idempotent: packages already present are left alone.
set -euo pipefail

packages=(etcd-server etcd-client nfs-ganesha nfs-ganesha-vfs libnfs-utils)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian packages start their services; the tests run their own instances on free ports.
for service in etcd nfs-ganesha; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
    fi
done

python3 -m pip install --quiet --upgrade 'tox>=4.22'
